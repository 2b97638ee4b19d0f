"""Nested layers: the fast grouped path against the plain masked reference, in float64."""

import pytest
import torch

from mone.capacity import capacity_distribution
from mone.layers import NestedBlock, add_to_prefix, nested_input_linear, nested_output_linear
from mone.layers.linear import split_rows
from mone.routing import make_routing_plan

from reference import reference_block, width_masks

# Float64 against the masked reference or a plain sliced F.linear: the largest difference measured here is 9e-15
# (block input gradients) on values of order 1-10; 1e-12 leaves a factor of ~100 for round-off.
F64 = dict(rtol=1e-12, atol=1e-12)


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_add_to_prefix_pads_with_zeros():
    x = torch.randn(5, 8)
    update = torch.randn(5, 2)
    out = add_to_prefix(x, update)
    assert torch.equal(out[:, :2], x[:, :2] + update)
    assert torch.equal(out[:, 2:], x[:, 2:])
    assert torch.equal(add_to_prefix(x, torch.ones(5, 8)), x + 1)


@pytest.mark.parametrize("num_experts", [2, 3, 4])
@pytest.mark.parametrize("capacity", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("num_tokens", [7, 13])
def test_block_matches_masked_reference(num_experts, capacity, num_tokens):
    torch.manual_seed(num_experts * 100 + num_tokens)
    B, D = 3, 32
    capacity = max(capacity, 2.0 ** -(num_experts - 1))
    block = NestedBlock(D, num_heads=4)
    for p in block.parameters():  # non-trivial biases and norms
        torch.nn.init.normal_(p, std=0.2)
    widths = tuple(D // 2 ** (num_experts - 1 - i) for i in range(num_experts))
    x = torch.randn(B, num_tokens, D, requires_grad=True)
    probs = torch.rand(B, num_tokens, num_experts).softmax(-1)
    plan = make_routing_plan(probs, capacity_distribution(capacity, num_experts))
    scale = 1 + 0.4 * probs.gather(-1, plan.expert.unsqueeze(-1)).squeeze(-1)  # [B, N]

    present = [j for j, n in enumerate(plan.counts) if n > 0]
    scales = plan.split(plan.sort(scale.unsqueeze(-1)))
    groups = block(
        [plan.split(plan.sort(x))[j] for j in present],
        [widths[j] for j in present],
        [plan.counts[j] for j in present],
        [scales[j] for j in present],
    )
    fast = plan.unsort(torch.cat(groups))
    expected = reference_block(block, x, width_masks(plan.expert, widths, D), scale)
    torch.testing.assert_close(fast, expected, **F64)

    weight = torch.randn_like(fast)
    fast_grads = torch.autograd.grad((fast * weight).sum(), [x, *block.parameters()])
    ref_grads = torch.autograd.grad((expected * weight).sum(), [x, *block.parameters()])
    for got, want in zip(fast_grads, ref_grads):
        torch.testing.assert_close(got, want, **F64)


def test_fused_and_manual_attention_agree():
    torch.manual_seed(0)
    block = NestedBlock(32, num_heads=4)
    x = [torch.randn(6, 32), torch.randn(4, 32)]
    args = ([8, 32], [3, 2], [torch.ones(6, 1), torch.ones(4, 1)])
    fused = block(x, *args)
    block.attn.fused_attn = False
    manual = block(x, *args)
    for a, b in zip(fused, manual):
        torch.testing.assert_close(a, b, **F64)


def test_block_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        NestedBlock(30, num_heads=4)


@pytest.mark.parametrize("widths", [(2, 4, 8), (2, 4), (8,), (4, 2, 4)])
@pytest.mark.parametrize("slicing", ["input", "output"])
def test_nested_linear_gradients(widths, slicing):
    """The in-place weight-gradient accumulation against finite differences, and against plain sliced F.linear."""
    rows = [3, 5, 2][: len(widths)]
    weight = torch.randn(8, 8, requires_grad=True)
    bias = torch.randn(8, requires_grad=True)
    if slicing == "input":  # full-width inputs: group j reads its first d_j features
        xs = [torch.randn(n, 8, requires_grad=True) for n in rows]
        nested, plain = nested_input_linear, lambda x, d: torch.nn.functional.linear(x[:, :d], weight[:, :d], bias)
    else:
        xs = [torch.randn(n, 8, requires_grad=True) for n in rows]
        nested, plain = nested_output_linear, lambda x, d: torch.nn.functional.linear(x, weight[:d], bias[:d])

    def run(*tensors):
        outs = nested(list(tensors[2:]), tensors[0], tensors[1], widths)
        if slicing == "input":  # one tensor, the groups' rows one after the other
            assert outs.shape == (sum(rows), 8)
            return outs.split(rows)
        return tuple(outs)

    assert torch.autograd.gradcheck(run, (weight, bias, *xs))
    outs = run(weight, bias, *xs)
    with torch.no_grad():  # the inference path skips the autograd function: same values
        for out, plain_out in zip(outs, run(weight, bias, *xs)):
            assert torch.equal(out, plain_out) and plain_out.grad_fn is None
    refs = [plain(x, d) for x, d in zip(xs, widths)]
    for out, ref in zip(outs, refs):
        torch.testing.assert_close(out, ref, **F64)
    probes = [torch.randn_like(o) for o in outs]
    got = torch.autograd.grad(outs, (weight, bias, *xs), probes)
    want = torch.autograd.grad(refs, (weight, bias, *xs), probes)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **F64)


def test_nested_linear_respects_frozen_weights():
    weight = torch.randn(6, 4)
    x = torch.randn(3, 4, requires_grad=True)
    out = nested_input_linear([x], weight, None, [2])
    out.sum().backward()
    torch.testing.assert_close(x.grad[:, :2], weight[:, :2].sum(0).expand(3, 2), **F64)
    assert torch.equal(x.grad[:, 2:], torch.zeros(3, 2))  # features the group does not read


@pytest.mark.parametrize("slicing", ["input", "output"])
def test_nested_linear_under_bfloat16_autocast(slicing):
    """Under autocast the forward runs in bfloat16 and float32 weights still get float32 gradients like F.linear's."""
    torch.set_default_dtype(torch.float32)
    widths = (2, 4, 8)
    weight = torch.randn(8, 8, requires_grad=True)
    bias = torch.randn(8, requires_grad=True)
    if slicing == "input":
        xs = [torch.randn(4, 8) for _ in widths]
        nested, plain = nested_input_linear, lambda x, d: torch.nn.functional.linear(x[:, :d], weight[:, :d], bias)
    else:
        xs = [torch.randn(4, 8) for _ in widths]
        nested, plain = nested_output_linear, lambda x, d: torch.nn.functional.linear(x, weight[:d], bias[:d])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = nested(xs, weight, bias, widths)
        outs = outs.split(4) if slicing == "input" else outs
        refs = [plain(x, d) for x, d in zip(xs, widths)]
    assert all(o.dtype == torch.bfloat16 for o in outs)
    got = torch.autograd.grad(sum(o.float().square().sum() for o in outs), (weight, bias))
    want = torch.autograd.grad(sum(r.float().square().sum() for r in refs), (weight, bias))
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-2)


def test_split_rows_keeps_a_single_group_whole():
    rows = torch.randn(7, 3, requires_grad=True)
    assert split_rows(rows, [7])[0] is rows
    parts = split_rows(rows, [2, 5])
    assert [p.shape[0] for p in parts] == [2, 5] and torch.equal(torch.cat(parts), rows)
