"""Capacity solver and allocations (spec section 4)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from mone.capacity import (
    capacity_distribution,
    effective_capacity,
    expert_token_counts,
    feasible_capacity_range,
    greedy_distribution,
    proportionate_distribution,
    realised_capacity,
    uniform_distribution,
)

SPEC_REFERENCE = {
    0.25: (0.4885, 0.3298, 0.1504, 0.0313),
    0.50: (0.2268, 0.2346, 0.2511, 0.2875),
    0.75: (0.0816, 0.1089, 0.1940, 0.6156),
}


def objective(c, beta=10.0, delta=2.0):
    c = np.asarray(c, dtype=float)
    utility = delta ** np.arange(len(c))
    entropy = -np.sum(np.where(c > 0, c * np.log(np.where(c > 0, c, 1.0)), 0.0))
    return float(np.sum(c * utility) + beta * entropy)


@pytest.mark.parametrize("capacity, expected", sorted(SPEC_REFERENCE.items()))
def test_spec_reference_values(capacity, expected):
    assert capacity_distribution(capacity) == pytest.approx(expected, abs=6e-5)


@pytest.mark.parametrize("num_experts", [2, 3, 4, 5])
def test_constraints_hold_over_grid(num_experts):
    low, high = feasible_capacity_range(num_experts)
    widths = [2.0 ** (i - num_experts + 1) for i in range(num_experts)]
    for capacity in np.linspace(low, high, 41):
        c = capacity_distribution(float(capacity), num_experts)
        assert len(c) == num_experts
        assert min(c) >= 0.0 and max(c) <= 1.0
        assert abs(sum(c) - 1.0) < 1e-6
        assert abs(sum(ci * wi for ci, wi in zip(c, widths)) - capacity) < 1e-6
        assert abs(effective_capacity(c) - capacity) < 1e-6


@pytest.mark.parametrize("num_experts", [2, 3, 4, 5])
@pytest.mark.parametrize("beta, delta", [(10.0, 2.0), (1.0, 3.0), (0.5, 1.5)])
def test_agrees_with_scipy_slsqp(num_experts, beta, delta):
    low, high = feasible_capacity_range(num_experts)
    widths = np.array([2.0 ** (i - num_experts + 1) for i in range(num_experts)])
    for capacity in np.linspace(low, high, 7)[1:-1]:
        ours = capacity_distribution(float(capacity), num_experts, beta=beta, delta=delta)
        result = minimize(
            lambda c: -objective(np.clip(c, 1e-12, 1.0), beta, delta),
            x0=np.full(num_experts, 1.0 / num_experts),
            method="SLSQP",
            bounds=[(0.0, 1.0)] * num_experts,
            constraints=[
                {"type": "eq", "fun": lambda c: np.sum(c) - 1.0},
                {"type": "eq", "fun": lambda c, e=capacity: np.dot(c, widths) - e},
            ],
            options={"ftol": 1e-12, "maxiter": 500},
        )
        assert result.success, result.message
        # The exact solution is at least as good as SLSQP's and lies where SLSQP converged.
        assert objective(ours, beta, delta) >= objective(np.clip(result.x, 0, 1), beta, delta) - 1e-7
        assert np.allclose(ours, result.x, atol=2e-4)


@settings(max_examples=200, deadline=None)
@given(num_experts=st.integers(1, 6), fraction=st.floats(0.0, 1.0))
def test_constraints_property(num_experts, fraction):
    low, high = feasible_capacity_range(num_experts)
    capacity = low + fraction * (high - low)
    c = capacity_distribution(capacity, num_experts)
    assert all(0.0 <= ci <= 1.0 for ci in c)
    assert abs(sum(c) - 1.0) < 1e-6
    assert abs(effective_capacity(c) - capacity) < 1e-6


def test_endpoints():
    assert capacity_distribution(1.0) == (0.0, 0.0, 0.0, 1.0)
    assert capacity_distribution(0.125) == (1.0, 0.0, 0.0, 0.0)
    assert capacity_distribution(1.0, num_experts=1) == (1.0,)
    assert capacity_distribution(0.5, num_experts=2) == (1.0, 0.0)


@pytest.mark.parametrize("bad", [0.1, 1.01, -0.5, float("nan"), float("inf"), "half", None])
def test_infeasible_capacity_raises(bad):
    with pytest.raises(ValueError, match=r"capacity must be .*\[0\.125, 1\]"):
        capacity_distribution(bad)


@pytest.mark.parametrize("num_experts", [0, -1, 2.5, True])
def test_bad_num_experts_raises(num_experts):
    with pytest.raises(ValueError, match="num_experts"):
        capacity_distribution(0.5, num_experts)


@pytest.mark.parametrize("beta, delta", [(0.0, 2.0), (-1.0, 2.0), (10.0, 0.0), (float("nan"), 2.0)])
def test_bad_objective_parameters_raise(beta, delta):
    with pytest.raises(ValueError, match="beta and delta"):
        capacity_distribution(0.5, beta=beta, delta=delta)


@settings(max_examples=200, deadline=None)
@given(fraction=st.floats(0.0, 1.0), num_tokens=st.integers(1, 500))
def test_token_counts_floor_and_leftovers(fraction, num_tokens):
    c = capacity_distribution(0.125 + fraction * 0.875)
    counts = expert_token_counts(c, num_tokens)
    assert sum(counts) == num_tokens
    assert counts[1:] == tuple(math.floor(cj * num_tokens) for cj in c[1:])
    assert counts[0] >= math.floor(c[0] * num_tokens)
    widths = [2.0 ** (i - 3) for i in range(4)]
    assert realised_capacity(c, num_tokens) == pytest.approx(sum(n * w for n, w in zip(counts, widths)) / num_tokens)


def test_token_counts_reject_bad_input():
    with pytest.raises(ValueError, match="sum to 1"):
        expert_token_counts((0.5, 0.6), 10)
    with pytest.raises(ValueError, match="num_tokens"):
        expert_token_counts((0.5, 0.5), 0)


def test_paper_baseline_allocations():
    assert effective_capacity(proportionate_distribution()) == pytest.approx(4 / 15)
    assert proportionate_distribution() == pytest.approx((8 / 15, 4 / 15, 2 / 15, 1 / 15))
    assert effective_capacity(uniform_distribution()) == pytest.approx(0.46875)
    for capacity in (0.2, 0.5, 0.9):
        c = greedy_distribution(capacity)
        assert effective_capacity(c) == pytest.approx(capacity)
        assert c[1] == c[2] == 0.0
