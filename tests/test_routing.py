"""Expert Preferred Routing and the routing plan (spec section 3)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mone.capacity import capacity_distribution, expert_token_counts
from mone.routing import Router, expert_preferred_routing, make_routing_plan

from reference import reference_epr


@st.composite
def routing_problems(draw):
    E = draw(st.integers(1, 5))
    B = draw(st.integers(1, 4))
    N = draw(st.integers(1, 40))
    low = 2.0 ** -(E - 1)
    capacity = low + draw(st.floats(0.0, 1.0)) * (1.0 - low)
    seed = draw(st.integers(0, 2**31 - 1))
    quantised = draw(st.booleans())  # coarse scores create many ties
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, N, E, generator=generator, dtype=torch.float64)
    if quantised:
        logits = (logits * 2).round()
    return logits.softmax(-1), capacity_distribution(capacity, E)


@settings(max_examples=150, deadline=None)
@given(routing_problems())
def test_epr_matches_reference_and_counts(problem):
    probs, distribution = problem
    B, N, E = probs.shape
    expert = expert_preferred_routing(probs, distribution)
    assert expert.shape == (B, N) and expert.dtype == torch.long
    assert expert.min() >= 0 and expert.max() < E  # exactly one expert per token
    counts = expert_token_counts(distribution, N)
    for j in range(E):
        assert (expert == j).sum(dim=1).tolist() == [counts[j]] * B
        if j > 0:
            assert counts[j] == math.floor(distribution[j] * N)
    assert torch.equal(expert, reference_epr(probs, distribution))


@settings(max_examples=60, deadline=None)
@given(routing_problems(), st.integers(0, 2**31 - 1))
def test_examples_do_not_influence_each_other(problem, seed):
    probs, distribution = problem
    expert = expert_preferred_routing(probs, distribution)
    for b in range(probs.shape[0]):
        assert torch.equal(expert[b : b + 1], expert_preferred_routing(probs[b : b + 1], distribution))
    if probs.shape[0] > 1:  # replacing every other example leaves example 0 alone
        other = torch.rand(probs.shape[0] - 1, *probs.shape[1:], generator=torch.Generator().manual_seed(seed))
        mixed = torch.cat([probs[:1], other.softmax(-1).to(probs.dtype)])
        assert torch.equal(expert_preferred_routing(mixed, distribution)[0], expert[0])


def test_ties_go_to_lower_token_index():
    probs = torch.full((1, 6, 2), 0.5)
    expert = expert_preferred_routing(probs, (0.5, 0.5))
    assert expert.tolist() == [[1, 1, 1, 0, 0, 0]]


def test_larger_experts_choose_first():
    # Token 0 is the favourite of both experts 1 and 2; expert 2 chooses first and takes it.
    probs = torch.tensor([[[0.0, 0.5, 0.5], [0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.9, 0.05, 0.05]]])
    expert = expert_preferred_routing(probs, (0.5, 0.25, 0.25))
    assert expert.tolist() == [[2, 0, 1, 0]]


def test_epr_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[B, N, E\]"):
        expert_preferred_routing(torch.rand(4, 3), (0.5, 0.5, 0.0))
    with pytest.raises(ValueError, match="3 experts"):
        expert_preferred_routing(torch.rand(1, 4, 2), (0.5, 0.25, 0.25))
    with pytest.raises(ValueError, match="sum to 1"):
        expert_preferred_routing(torch.rand(1, 4, 2), (0.5, 0.6))


@settings(max_examples=60, deadline=None)
@given(routing_problems())
def test_plan_sorts_into_groups_and_back(problem):
    probs, distribution = problem
    B, N, E = probs.shape
    plan = make_routing_plan(probs, distribution)
    assert plan.counts == expert_token_counts(distribution, N)
    x = torch.randn(B, N, 3, dtype=torch.float64)
    rows = plan.sort(x)
    groups = plan.split(rows)
    assert [g.shape[0] for g in groups] == [B * n for n in plan.counts]
    expert_rows = plan.split(plan.sort(plan.expert.unsqueeze(-1).to(x.dtype)).squeeze(-1))
    example_rows = plan.split(plan.sort(torch.arange(B).view(B, 1, 1).expand(B, N, 1).to(x.dtype)).squeeze(-1))
    token_rows = plan.split(plan.sort(torch.arange(N).view(1, N, 1).expand(B, N, 1).to(x.dtype)).squeeze(-1))
    for j in range(E):
        n = plan.counts[j]
        assert torch.all(expert_rows[j] == j)  # group j holds exactly expert j's tokens
        if plan.order is not None:  # slot-major: row s * B + b is example b's s-th token of expert j
            assert torch.equal(example_rows[j], torch.arange(B, dtype=x.dtype).repeat(n))
            assert torch.all(token_rows[j].view(n, B).diff(dim=0) > 0)  # slots in token order
        elif n > 0:  # a single group keeps the input order: example b's tokens b * N ... b * N + N - 1
            assert torch.equal(example_rows[j], torch.arange(B, dtype=x.dtype).repeat_interleave(n))
            assert torch.equal(token_rows[j], torch.arange(N, dtype=x.dtype).repeat(B))
    assert torch.equal(plan.unsort(rows), x)
    own = probs.gather(-1, plan.expert.unsqueeze(-1)).squeeze(-1)
    assert torch.equal(plan.unsort(plan.expert_probs.unsqueeze(-1)).squeeze(-1), own)


def test_single_group_plan_has_no_permutation():
    probs = torch.rand(2, 5, 4).softmax(-1)
    plan = make_routing_plan(probs, (0.0, 0.0, 0.0, 1.0))
    assert plan.order is None and plan.inverse_order is None
    assert plan.counts == (0, 0, 0, 5)
    assert torch.equal(plan.expert, torch.full((2, 5), 3))
    x = torch.randn(2, 5, 3)
    assert plan.sort(x).data_ptr() == x.data_ptr()  # a view, no copy
    rows = plan.sort(x)
    groups = plan.split(rows)
    assert groups[3] is rows  # the tensor itself: autograd copies nothing back for it
    assert [g.shape[0] for g in groups] == [0, 0, 0, 10]


def test_router_is_a_softmax_over_experts():
    router = Router(8, 4)
    probs = router(torch.randn(2, 5, 8))
    assert probs.shape == (2, 5, 4)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 5))
    assert sorted(name for name, _ in router.named_parameters()) == ["bias", "weight"]


@pytest.mark.parametrize("precision", ["bfloat16 weights", "bfloat16 autocast"])
def test_router_scores_in_float32(precision):
    """EPR ranks tokens by these scores: in bfloat16, near-ties would become ties."""
    torch.manual_seed(0)
    router, x = Router(64, 4), torch.randn(2, 50, 64).bfloat16()
    if precision == "bfloat16 weights":
        router = router.bfloat16()
        probs = router(x)
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            probs = router(x)
    expected = torch.nn.functional.linear(x.float(), router.weight.float(), router.bias.float()).softmax(-1)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, expected, rtol=1e-6, atol=1e-7)
    ties = lambda p: sum(50 - p[b, :, j].unique().numel() for b in range(2) for j in range(4))  # noqa: E731
    assert ties(probs) == 0 and ties(probs.bfloat16()) > 10  # what EPR would rank in bfloat16 ties


def test_router_keeps_float64():
    router = Router(8, 4).double()
    assert router(torch.randn(3, 8, dtype=torch.float64)).dtype == torch.float64


def test_a_forward_checks_its_budget_once(monkeypatch):
    """The distribution is validated where it enters the model, not again by every routing helper it passes."""
    import mone.capacity
    import mone.models._base
    import mone.routing
    from mone.models import create_model

    calls = []
    real = mone.capacity.validate_distribution

    def counting(distribution):
        calls.append(distribution)
        return real(distribution)

    for module in (mone.capacity, mone.routing, mone.models._base):
        monkeypatch.setattr(module, "validate_distribution", counting)
    model = create_model("mone_vit_test")
    images = torch.randn(2, 3, 32, 32)
    model(images, capacity=0.5)  # a budget: the solver's output needs no check
    assert calls == []
    model(images, capacity=(0.25, 0.25, 0.25, 0.25))
    assert len(calls) == 1
