"""Capacity distributions: how many tokens each nested expert gets for a compute budget (spec section 4).

Experts are indexed smallest first: expert ``i`` (0-based) of ``E`` has width ``D / 2**(E - 1 - i)``, so its
linear layers cost ``2**(i - E + 1)`` of the dense cost. A *distribution* ``c`` gives the fraction of tokens
for each expert (it sums to 1); its *effective capacity* ``sum_i c_i 2**(i - E + 1)`` is the fraction of the
dense linear-layer compute it spends. All functions here are pure functions on Python floats.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from scipy.optimize import brentq

__all__ = [
    "capacity_distribution",
    "effective_capacity",
    "expert_relative_widths",
    "expert_token_counts",
    "feasible_capacity_range",
    "greedy_distribution",
    "proportionate_distribution",
    "realised_capacity",
    "uniform_distribution",
    "validate_capacity",
    "validate_distribution",
]


def _check_num_experts(num_experts: int) -> None:
    if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"num_experts must be an integer >= 1, got {num_experts!r}")


def expert_relative_widths(num_experts: int) -> tuple[float, ...]:
    """Width of each expert as a fraction of the full width, smallest first: ``(1/8, 1/4, 1/2, 1)`` for E = 4."""
    _check_num_experts(num_experts)
    return tuple(2.0 ** (i - num_experts + 1) for i in range(num_experts))


def feasible_capacity_range(num_experts: int) -> tuple[float, float]:
    """The effective capacities reachable with ``num_experts`` experts: ``[2**-(E-1), 1]``."""
    _check_num_experts(num_experts)
    return 2.0 ** -(num_experts - 1), 1.0


def validate_capacity(capacity: float, num_experts: int) -> float:
    """Return ``capacity`` as a float, or raise ValueError naming the feasible range."""
    low, high = feasible_capacity_range(num_experts)
    try:
        value = float(capacity)
    except (TypeError, ValueError):
        raise ValueError(f"capacity must be a number in [{low:g}, {high:g}], got {capacity!r}") from None
    # A relative slack absorbs float round-off such as 0.1 + 0.2 without admitting real violations.
    if not math.isfinite(value) or not (low * (1 - 1e-9) <= value <= high * (1 + 1e-9)):
        raise ValueError(
            f"capacity must be a finite number in [{low:g}, {high:g}] for num_experts={num_experts}, got {capacity!r}"
        )
    return min(max(value, low), high)


def validate_distribution(distribution: Sequence[float]) -> tuple[float, ...]:
    """Return ``distribution`` as a tuple of floats, or raise ValueError if it is not a probability vector."""
    values = tuple(float(c) for c in distribution)
    if not values:
        raise ValueError("distribution must name at least one expert")
    if any(not math.isfinite(c) or c < 0 for c in values) or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"distribution must be non-negative and sum to 1 (within 1e-6), got {values}")
    return values


def effective_capacity(distribution: Sequence[float]) -> float:
    """``e_c = sum_i c_i d_i / D``: the fraction of dense linear-layer compute a distribution spends."""
    values = validate_distribution(distribution)
    return sum(c * w for c, w in zip(values, expert_relative_widths(len(values))))


@functools.lru_cache(maxsize=4096)
def _solve_distribution(capacity: float, num_experts: int, beta: float, delta: float) -> tuple[float, ...]:
    widths = expert_relative_widths(num_experts)
    low, high = feasible_capacity_range(num_experts)
    if capacity >= high:
        return tuple(0.0 for _ in range(num_experts - 1)) + (1.0,)
    if capacity <= low:
        return (1.0,) + tuple(0.0 for _ in range(num_experts - 1))
    utility = [delta**i for i in range(num_experts)]

    def distribution_at(lam: float) -> list[float]:
        # Stationarity of the Lagrangian: c_i ∝ exp((delta**i - lam * w_i) / beta), computed stably.
        logits = [(u - lam * w) / beta for u, w in zip(utility, widths)]
        top = max(logits)
        weights = [math.exp(z - top) for z in logits]
        total = sum(weights)
        return [v / total for v in weights]

    def gap(lam: float) -> float:  # strictly decreasing in lam: d/dlam = -Var_c(w) / beta
        return sum(c * w for c, w in zip(distribution_at(lam), widths)) - capacity

    lower, upper = -1.0, 1.0
    while gap(lower) < 0:
        lower *= 2
    while gap(upper) > 0:
        upper *= 2
    lam = brentq(gap, lower, upper, xtol=1e-14, maxiter=500)
    return tuple(distribution_at(lam))


@torch.compiler.assume_constant_result
def capacity_distribution(
    capacity: float, num_experts: int = 4, *, beta: float = 10.0, delta: float = 2.0
) -> tuple[float, ...]:
    """Token fractions per expert (smallest first) that spend ``capacity`` of the dense compute (spec section 4).

    Solves ``max_c sum_i c_i delta**i - beta * sum_i c_i ln c_i`` subject to ``sum_i c_i = 1`` and
    ``sum_i c_i 2**(i-E+1) = capacity`` exactly: the optimum is ``c_i ∝ exp((delta**i - lam 2**(i-E+1)) / beta)``
    with the scalar ``lam`` found by 1-D root finding. ``capacity = 1`` gives ``(0, ..., 0, 1)``.

    Args:
        capacity: target effective capacity ``e_c`` in ``[2**-(num_experts-1), 1]``.
        num_experts: number of nested experts ``E``.
        beta: weight of the entropy term (> 0).
        delta: base of the per-expert utility (> 0).

    Returns:
        A tuple of ``num_experts`` non-negative floats that sum to 1.
    """
    _check_num_experts(num_experts)
    if not (math.isfinite(beta) and beta > 0) or not (math.isfinite(delta) and delta > 0):
        raise ValueError(f"beta and delta must be finite and > 0, got beta={beta!r}, delta={delta!r}")
    value = validate_capacity(capacity, num_experts)
    return _solve_distribution(value, num_experts, float(beta), float(delta))


def expert_token_counts(distribution: Sequence[float], num_tokens: int) -> tuple[int, ...]:
    """Tokens per expert for ``num_tokens`` tokens (spec section 3), smallest expert first.

    Every expert but the smallest gets ``floor(c_j * num_tokens)``; the smallest gets the rest. The counts
    depend only on ``(distribution, num_tokens)``, so every shape downstream is static.
    """
    values = validate_distribution(distribution)
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
        raise ValueError(f"num_tokens must be an integer >= 1, got {num_tokens!r}")
    larger = [math.floor(c * num_tokens) for c in values[1:]]
    taken = sum(larger)
    if taken > num_tokens:  # only reachable through round-off in a distribution summing to just over 1
        raise ValueError(f"distribution {values} assigns more than {num_tokens} tokens")
    return (num_tokens - taken, *larger)


def realised_capacity(distribution: Sequence[float], num_tokens: int) -> float:
    """The effective capacity actually spent on ``num_tokens`` tokens once counts are floored."""
    counts = expert_token_counts(distribution, num_tokens)
    widths = expert_relative_widths(len(counts))
    return sum(n * w for n, w in zip(counts, widths)) / num_tokens


def proportionate_distribution(num_experts: int = 4) -> tuple[float, ...]:
    """Paper's Table 2 baseline: ``c_i ∝ 2**(E-1-i)`` (more tokens on smaller experts); ``e_c = E / (2**E - 1)``."""
    _check_num_experts(num_experts)
    weights = [2.0 ** (num_experts - 1 - i) for i in range(num_experts)]
    return tuple(w / sum(weights) for w in weights)


def uniform_distribution(num_experts: int = 4) -> tuple[float, ...]:
    """Paper's Table 2 baseline: every expert gets ``1/E`` of the tokens."""
    _check_num_experts(num_experts)
    return tuple(1.0 / num_experts for _ in range(num_experts))


def greedy_distribution(capacity: float, num_experts: int = 4) -> tuple[float, ...]:
    """Paper's Table 2 baseline: as many tokens as the budget allows on the largest expert, the rest on the smallest."""
    value = validate_capacity(capacity, num_experts)
    if num_experts == 1:
        return (1.0,)
    smallest = 2.0 ** -(num_experts - 1)
    largest = (value - smallest) / (1.0 - smallest)
    return (1.0 - largest,) + tuple(0.0 for _ in range(num_experts - 2)) + (largest,)
