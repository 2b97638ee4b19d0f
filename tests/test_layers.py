"""Nested layers: the fast grouped path against the plain masked reference, in float64."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mone.capacity import capacity_distribution
from mone.layers import GroupLayout, NestedAttention, NestedBlock, linear, nested_input_linear, nested_output_linear
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
    layout = GroupLayout(tuple(widths[j] for j in present), tuple(plan.counts[j] for j in present), B)
    fast = plan.unsort(block(plan.sort(x), layout, plan.sort(scale.unsqueeze(-1))))
    expected = reference_block(block, x, width_masks(plan.expert, widths, D), scale)
    torch.testing.assert_close(fast, expected, **F64)

    weight = torch.randn_like(fast)
    fast_grads = torch.autograd.grad((fast * weight).sum(), [x, *block.parameters()])
    ref_grads = torch.autograd.grad((expected * weight).sum(), [x, *block.parameters()])
    for got, want in zip(fast_grads, ref_grads):
        torch.testing.assert_close(got, want, **F64)


BY_GROUP = dataclasses.replace(linear.GEMM_POLICY, block_min_width=2 ** 62)  # one GEMM per expert group
BY_BLOCK = dataclasses.replace(linear.GEMM_POLICY, block_min_width=0, block_max_rows=2 ** 62)  # per width block


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "frozen"])
@pytest.mark.parametrize("policy", [BY_GROUP, BY_BLOCK], ids=["per-group", "per-width-block"])
def test_block_without_autograd_matches_masked_reference(mode, policy, monkeypatch):
    # The inference path (no autograd nodes, GELU in place on the hidden layer) computes what the reference does,
    # with either GEMM partition, and leaves its input and the residual stream untouched.
    monkeypatch.setattr(linear, "GEMM_POLICY", policy)
    torch.manual_seed(5)
    B, N, D, E = 3, 11, 32, 4
    block = NestedBlock(D, num_heads=4)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.2)
    widths = tuple(D // 2 ** (E - 1 - i) for i in range(E))
    x = torch.randn(B, N, D)
    probs = torch.rand(B, N, E).softmax(-1)
    plan = make_routing_plan(probs, capacity_distribution(0.5, E))
    scale = 1 + 0.4 * probs.gather(-1, plan.expert.unsqueeze(-1)).squeeze(-1)
    present = [j for j, n in enumerate(plan.counts) if n > 0]
    layout = GroupLayout(tuple(widths[j] for j in present), tuple(plan.counts[j] for j in present), B)
    expected = reference_block(block, x, width_masks(plan.expert, widths, D), scale)
    rows, row_scale = plan.sort(x), plan.sort(scale.unsqueeze(-1))
    before = rows.clone()
    if mode == "frozen":
        block.requires_grad_(False)
        fast = block(rows, layout, row_scale)
    else:
        with getattr(torch, mode)():
            fast = block(rows, layout, row_scale)
    assert not fast.requires_grad
    torch.testing.assert_close(plan.unsort(fast), expected, **F64)
    assert torch.equal(rows, before)


def test_mlp_with_another_activation_keeps_it():
    # Only nn.GELU is applied in place; any other activation module is called as it is.
    torch.manual_seed(6)
    block = NestedBlock(16, num_heads=2)
    block.mlp.act = torch.nn.Tanh()
    x, layout = torch.randn(6, 16), GroupLayout((8, 16), (2, 1), 2)
    with torch.no_grad():
        out = block.mlp(x, layout)
    hidden = torch.tanh(x[:4, :8] @ block.mlp.fc1.weight[:, :8].T + block.mlp.fc1.bias)
    torch.testing.assert_close(out[:4, :8], hidden @ block.mlp.fc2.weight[:8].T + block.mlp.fc2.bias[:8], **F64)


def test_fused_and_manual_attention_agree():
    torch.manual_seed(0)
    block = NestedBlock(32, num_heads=4)
    x = torch.randn(10, 32)  # two examples: 3 tokens of width 8, then 2 of width 32, slot-major
    args = (GroupLayout((8, 32), (3, 2), 2), torch.rand(10, 1) + 1)
    fused = block(x, *args)
    block.attn.fused_attn = False
    torch.testing.assert_close(fused, block(x, *args), **F64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_default_attention_kernel_is_explicit_only_for_bfloat16_on_cpu(dtype, monkeypatch):
    torch.manual_seed(0)
    block = NestedBlock(32, num_heads=4).to(dtype)
    x = torch.randn(10, 32, dtype=dtype)
    args = (GroupLayout((8, 32), (3, 2), 2), torch.rand(10, 1, dtype=dtype) + 1)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda *a: calls.append(1) or sdpa(*a))
    auto = block(x, *args)
    assert len(calls) == (1 if dtype == torch.float32 else 0)
    block.attn.fused_attn = dtype == torch.float32  # the path the default picked, forced: the same computation
    torch.testing.assert_close(auto, block(x, *args), rtol=0, atol=0)
    block.attn.fused_attn = dtype != torch.float32  # the other path: equal up to the precision's rounding
    tolerance = 3e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(auto, block(x, *args), rtol=tolerance, atol=tolerance)
    calls.clear()  # NestedAttention on its own picks the same path by default
    NestedAttention(32, num_heads=4).to(dtype)(x, args[0])
    assert len(calls) == (1 if dtype == torch.float32 else 0)


def test_block_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        NestedBlock(30, num_heads=4)


@pytest.fixture(params=[0, 8], ids=["direct", "narrow-transposed"])
def narrow_output_width(request, monkeypatch):
    """Both GEMM routes of the nested linear layers: outputs up to this wide are computed transposed (0: none)."""
    policy = dataclasses.replace(linear.GEMM_POLICY, narrow_output_width=request.param)
    monkeypatch.setattr(linear, "GEMM_POLICY", policy)
    return request.param


def _rows_and_layout(widths, rows=(3, 5, 2)):
    """A layout of one example per group (``B = 1``): group ``j`` is ``rows[j]`` tokens of width ``widths[j]``."""
    rows = rows[: len(widths)]
    return list(rows), GroupLayout(tuple(widths), tuple(rows), 1)


def _plain_input(x, weight, bias, rows, widths):
    """Per group ``F.linear(x_j[:, :d_j], W[:, :d_j], b)``, the plain sliced reference."""
    return torch.cat([F.linear(x_j[:, :d], weight[:, :d], bias) for x_j, d in zip(x.split(rows), widths)])


def _plain_output(h, weight, bias, rows, widths, residual, scale):
    """Per group ``residual_j + Pad(s_j * F.linear(h_j, W[:d_j], b[:d_j]))``, the plain reference."""
    updates = [F.linear(h_j, weight[:d], bias[:d]) for h_j, d in zip(h.split(rows), widths)]
    padded = torch.cat([F.pad(u, (0, weight.shape[0] - u.shape[1])) for u in updates])
    return residual + scale * padded


@pytest.mark.parametrize("widths", [(2, 4, 8), (2, 4), (8,), (4, 2, 4)])
def test_nested_input_linear_against_plain_slices(widths, narrow_output_width):
    """Values and every gradient (in-place weight accumulation, zero input gradient past d_j) against plain sliced
    F.linear, and against finite differences."""
    rows, layout = _rows_and_layout(widths)
    weight = torch.randn(8, 8, requires_grad=True)
    bias = torch.randn(8, requires_grad=True)
    x = torch.randn(sum(rows), 8, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: nested_input_linear(t[0], t[1], t[2], layout), (x, weight, bias))
    out = nested_input_linear(x, weight, bias, layout)
    ref = _plain_input(x, weight, bias, rows, widths)
    torch.testing.assert_close(out, ref, **F64)
    with torch.no_grad():  # the inference path skips the autograd function: same values
        plain_out = nested_input_linear(x, weight, bias, layout)
        assert torch.equal(out, plain_out) and plain_out.grad_fn is None
    probe = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, weight, bias), probe)
    want = torch.autograd.grad(ref, (x, weight, bias), probe)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **F64)


@pytest.mark.parametrize("widths", [(2, 4, 8), (2, 4), (8,), (4, 2, 4)])
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("with_scale", [True, False])
def test_nested_output_linear_against_plain_slices(widths, with_residual, with_scale, narrow_output_width):
    """Fused residual add and per-row scale: values and every gradient against plain padded F.linear updates."""
    rows, layout = _rows_and_layout(widths)
    weight = torch.randn(8, 6, requires_grad=True)
    bias = torch.randn(8, requires_grad=True)
    h = torch.randn(sum(rows), 6, requires_grad=True)
    residual = torch.randn(sum(rows), 8, requires_grad=True) if with_residual else None
    scale = (torch.rand(sum(rows), 1) + 0.5).requires_grad_() if with_scale else None
    inputs = [t for t in (h, weight, bias, residual, scale) if t is not None]

    def run(h, weight, bias, *rest):
        rest = list(rest)
        r = rest.pop(0) if with_residual else None
        s = rest.pop(0) if with_scale else None
        return nested_output_linear(h, weight, bias, layout, r, s)

    assert torch.autograd.gradcheck(run, inputs)
    out = run(*inputs)
    ref = _plain_output(h, weight, bias, rows, widths, 0 if residual is None else residual,
                        1 if scale is None else scale)
    torch.testing.assert_close(out, ref, **F64)
    with torch.no_grad():
        plain_out = run(*inputs)
        assert torch.equal(out, plain_out) and plain_out.grad_fn is None
    probe = torch.randn_like(out)
    got = torch.autograd.grad(out, inputs, probe)
    want = torch.autograd.grad(ref, inputs, probe)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **F64)


def test_nested_linear_respects_frozen_weights():
    weight = torch.randn(6, 4)
    x = torch.randn(3, 4, requires_grad=True)
    out = nested_input_linear(x, weight, None, GroupLayout((2,), (3,), 1))
    out.sum().backward()
    torch.testing.assert_close(x.grad[:, :2], weight[:, :2].sum(0).expand(3, 2), **F64)
    assert torch.equal(x.grad[:, 2:], torch.zeros(3, 2))  # features the group does not read


@pytest.mark.parametrize("slicing", ["input", "output"])
def test_nested_linear_under_bfloat16_autocast(slicing):
    """Under autocast the GEMMs run in bfloat16 like F.linear's (the output layer adds its bfloat16 update to the
    float32 residual, as ``x + F.linear(...)`` does) and float32 weights still get float32 gradients."""
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    widths = (2, 4, 8)
    rows, layout = _rows_and_layout(widths, rows=(4, 4, 4))
    weight = torch.randn(8, 8, requires_grad=True)
    bias = torch.randn(8, requires_grad=True)
    x = torch.randn(12, 8)
    residual = torch.randn(12, 8)
    scale = torch.rand(12, 1) + 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if slicing == "input":
            out = nested_input_linear(x, weight, bias, layout)
            ref = _plain_input(x, weight, bias, rows, widths)
            assert out.dtype == torch.bfloat16
        else:
            out = nested_output_linear(x, weight, bias, layout, residual, scale)
            ref = _plain_output(x, weight, bias, rows, widths, residual, scale)
            assert out.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    got = torch.autograd.grad(out.float().square().sum(), (weight, bias))
    want = torch.autograd.grad(ref.float().square().sum(), (weight, bias))
    for g, w in zip(got, want):
        assert g.dtype == torch.float32  # bfloat16 rounding of sums that cancel: relative to the largest entry
        torch.testing.assert_close(g, w, rtol=0, atol=2e-2 * w.abs().max().item())


def test_dense_layout_is_timms_linear_and_residual():
    """One full-width group: the output layer is exactly ``residual + F.linear(h, W, b)``'s value."""
    weight, bias = torch.randn(8, 6), torch.randn(8)
    h, residual = torch.randn(5, 6), torch.randn(5, 8)
    layout = GroupLayout.dense(1, 5, 8)
    torch.testing.assert_close(nested_output_linear(h, weight, bias, layout, residual),
                               residual + F.linear(h, weight, bias), **F64)
    assert torch.equal(nested_input_linear(h, weight, bias, GroupLayout.dense(1, 5, 6)), F.linear(h, weight, bias))


def test_gemm_policy_routes():
    """The route of each call: timm's F.linear for one full-width unscaled group, the grouped forward alone where no
    autograd node is needed, the autograd functions otherwise (or always, when a benchmark asks)."""
    policy = linear.GroupedGemmPolicy()
    weight = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(5, 8)
    grouped, dense = GroupLayout((4, 8), (2, 3), 1), GroupLayout.dense(1, 5, 8)
    assert policy.route(dense, 8, x, weight) == "dense"
    assert policy.route(dense, 8, x, weight, scaled=True) == "autograd"
    assert policy.route(grouped, 8, x, weight) == "autograd"
    assert policy.route(grouped, 8, x, weight.detach(), None) == "no_grad"
    with torch.no_grad():
        assert policy.route(grouped, 8, x, weight) == "no_grad"
    assert dataclasses.replace(policy, always_autograd=True).route(dense, 8, x.detach(), None) == "autograd"


@pytest.mark.parametrize("widths", [(8,), (2, 4, 8)])
def test_every_route_gives_the_same_values_and_gradients(widths, monkeypatch):
    """The autograd functions on every layout (``always_autograd``) against the routes the policy picks."""
    rows, layout = _rows_and_layout(widths)
    weight = torch.randn(8, 8, requires_grad=True)
    bias = torch.randn(8, requires_grad=True)
    x = torch.randn(sum(rows), 8, requires_grad=True)
    residual = torch.randn(sum(rows), 8, requires_grad=True)

    def run():
        hidden = linear.grouped_linear(x, weight, bias, layout, "input")
        out = linear.grouped_linear(hidden, weight, bias, layout, "output", residual)
        return out, torch.autograd.grad(out.square().sum(), (x, weight, bias, residual))

    picked = run()
    monkeypatch.setattr(linear, "GEMM_POLICY", linear.GroupedGemmPolicy(always_autograd=True))
    forced = run()
    torch.testing.assert_close(forced[0], picked[0], **F64)
    for got, want in zip(forced[1], picked[1]):
        torch.testing.assert_close(got, want, **F64)


@pytest.mark.parametrize("widths", [(2, 4, 8), (4, 8), (2, 4)])
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("with_scale", [True, False])
@pytest.mark.parametrize("with_residual", [True, False])
def test_width_blocks_match_plain_slices(widths, batch_size, with_scale, with_residual, monkeypatch):
    """Inference by width block (forced on for these small shapes): both layer kinds against plain sliced F.linear,
    and against the per-group path to round-off."""
    torch.manual_seed(len(widths) * 10 + batch_size)
    counts = (3, 5, 2)[: len(widths)]
    layout = GroupLayout(widths, counts, batch_size)
    rows = [batch_size * n for n in counts]
    weight_in, bias_in = torch.randn(12, 8), torch.randn(12)
    weight_out, bias_out = torch.randn(8, 12), torch.randn(8)
    x, h = torch.randn(sum(rows), 8), torch.randn(sum(rows), 12)
    residual = torch.randn(sum(rows), 8) if with_residual else None
    scale = torch.rand(sum(rows), 1) + 0.5 if with_scale else None
    outputs = {}
    for name, policy in (("group", BY_GROUP), ("block", BY_BLOCK)):
        monkeypatch.setattr(linear, "GEMM_POLICY", policy)
        assert policy.by_width_block(layout, 8) == (name == "block")
        with torch.no_grad():
            outputs[name] = (nested_input_linear(x, weight_in, bias_in, layout),
                             nested_output_linear(h, weight_out, bias_out, layout, residual, scale))
    torch.testing.assert_close(outputs["block"][0], _plain_input(x, weight_in, bias_in, rows, widths), **F64)
    torch.testing.assert_close(outputs["block"][1], _plain_output(
        h, weight_out, bias_out, rows, widths, 0 if residual is None else residual, 1 if scale is None else scale),
        **F64)
    for got, want in zip(outputs["block"], outputs["group"]):
        torch.testing.assert_close(got, want, **F64)


def test_width_blocks_only_where_they_measured_faster():
    """Small batches of wide tokens run by width block; training, narrow models, large batches, one group and
    layouts not in increasing width keep one GEMM per group."""
    policy = linear.GroupedGemmPolicy()
    vit_b_batch1 = GroupLayout((96, 192, 384, 768), (46, 45, 49, 56), 1)
    assert policy.by_width_block(vit_b_batch1, 768)
    assert policy.by_width_block(GroupLayout((96, 192, 384, 768), (46, 45, 49, 56), 4), 768)
    assert not policy.by_width_block(GroupLayout((96, 192, 384, 768), (46, 45, 49, 56), 8), 768)  # 1,568 rows
    assert not policy.by_width_block(GroupLayout((16, 32, 64, 128), (16, 16, 16, 16), 1), 128)  # D=128
    assert not policy.by_width_block(GroupLayout((768,), (196,), 1), 768)
    assert not policy.by_width_block(GroupLayout((384, 96, 768), (50, 50, 96), 1), 768)
    weight = torch.randn(3 * 768, 768, requires_grad=True)
    x = torch.randn(196, 768)
    assert policy.route(vit_b_batch1, 768, x, weight) == "autograd"  # training keeps the per-group functions


def test_group_layout_of_experts_leaves_empty_experts_out():
    layout = GroupLayout.of_experts((8, 16, 32, 64), (3, 0, 2, 0), 2)
    assert layout == GroupLayout((8, 32), (3, 2), 2)
    assert layout.row_ranges == [(0, 6, 8), (6, 10, 32)]
