"""Capacity distributions: how many tokens each nested expert gets for a compute budget (docs/method.md).

Experts are indexed smallest first: expert ``i`` (0-based) of ``E`` has width ``D / 2**(E - 1 - i)``, so its
linear layers cost ``2**(i - E + 1)`` of the dense cost. A *distribution* ``c`` gives the fraction of tokens
for each expert (it sums to 1); its *effective capacity* ``sum_i c_i 2**(i - E + 1)`` is the fraction of the
dense linear-layer compute it spends. All functions here are pure functions on Python floats.

A *capacity* argument is either a number (a Python, NumPy or 0-d tensor scalar: an effective capacity) or a
distribution (a sequence, 1-d array or tensor of per-expert fractions); :func:`is_scalar_capacity` tells them apart
and everything else (a string, ``None``, ...) is refused with one message.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from fractions import Fraction

import torch

from ._checks import check_int

__all__ = [
    "capacity_distribution",
    "effective_capacity",
    "expert_relative_widths",
    "expert_token_counts",
    "feasible_capacity_range",
    "greedy_distribution",
    "is_scalar_capacity",
    "proportionate_distribution",
    "realised_capacity",
    "uniform_distribution",
    "validate_capacity",
    "validate_distribution",
]


def _check_num_experts(num_experts: int) -> None:
    check_int("num_experts", num_experts, 1)


def is_scalar_capacity(capacity: object) -> bool:
    """True for a single number (``0.5``, ``np.float32(0.5)``, ``torch.tensor(0.5)``); False for anything else.

    ``bool`` is not a number here: ``capacity=True`` is a mistake, not ``1.0``.
    """
    if isinstance(capacity, bool):
        return False
    if isinstance(capacity, (int, float)):  # first: the common case, and all that torch.compile ever sees
        return True
    if isinstance(capacity, torch.Tensor):
        return capacity.dim() == 0 and not capacity.dtype == torch.bool
    if isinstance(capacity, (str, bytes, tuple, list)):
        return False
    if isinstance(capacity, numbers.Real):  # NumPy scalars register themselves here (np.bool_ does not)
        return True
    ndim, kind = getattr(capacity, "ndim", None), getattr(getattr(capacity, "dtype", None), "kind", None)
    return ndim == 0 and kind in ("i", "u", "f")  # a 0-d NumPy array


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
    if not is_scalar_capacity(capacity):  # float("0.5") would succeed: a string is refused, not parsed
        raise ValueError(f"capacity must be a number in [{low:g}, {high:g}], got {capacity!r}")
    value = float(capacity)
    # A relative slack absorbs float round-off such as 0.1 + 0.2 without admitting real violations.
    if not math.isfinite(value) or not (low * (1 - 1e-9) <= value <= high * (1 + 1e-9)):
        raise ValueError(
            f"capacity must be a finite number in [{low:g}, {high:g}] for num_experts={num_experts}, got {capacity!r}"
        )
    return min(max(value, low), high)


def validate_distribution(distribution: Sequence[float]) -> tuple[float, ...]:
    """Return ``distribution`` as a tuple of floats, or raise ValueError if it is not a probability vector.

    Accepts a sequence of numbers, a 1-d NumPy array or tensor. A single number is refused with a pointer to
    :func:`capacity_distribution`, anything else (a string, ``None``, a 2-d array) as neither a number nor a
    distribution.
    """
    if is_scalar_capacity(distribution):
        raise ValueError(
            f"expected a per-expert distribution (token fractions, smallest expert first), got the number "
            f"{distribution!r}; capacity_distribution({float(distribution)!r}, num_experts) turns a budget into one"
        )
    try:
        if isinstance(distribution, (str, bytes)) or getattr(distribution, "ndim", 1) != 1:
            raise TypeError
        items = list(distribution)
        if not all(is_scalar_capacity(c) for c in items):
            raise TypeError
        values = tuple(float(c) for c in items)
    except TypeError:
        raise ValueError(
            f"capacity must be a number or a per-expert distribution (a sequence of token fractions, smallest "
            f"expert first), got {distribution!r} ({type(distribution).__name__})"
        ) from None
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
    # c_i ∝ exp((delta**i - lam w_i) / beta) (stationarity of the Lagrangian), with lam fixed by the capacity. The
    # numerators are differences of numbers that can be far larger than beta (delta = 1e6: 1e18 against 10), which
    # floats would turn into round-off. beta, delta and the widths are floats, hence exact rationals: lam is first
    # bracketed exactly until the logits at the two ends differ by at most 1, then found in floats relative to an
    # exact anchor inside the bracket, where the logits are small numbers. Accurate for any beta and delta.
    utility = [Fraction(delta) ** i for i in range(num_experts)]
    exact_widths = [Fraction(w) for w in widths]
    scale = Fraction(beta)

    def logits_at(lam: Fraction) -> list[float]:
        """``(delta**i - lam w_i) / beta`` less its maximum, computed exactly and rounded once (-inf: underflow)."""
        numerators = [u - lam * w for u, w in zip(utility, exact_widths)]
        top = max(numerators)
        return [float((n - top) / scale) if top - n < 800 * scale else -math.inf for n in numerators]

    def softmax(logits: list[float]) -> list[float]:
        top = max(logits)
        weights = [math.exp(z - top) for z in logits]
        total = sum(weights)
        return [v / total for v in weights]

    def gap(logits: list[float]) -> float:  # decreasing in lam: d/dlam = -Var_c(w) / beta
        return sum(c * w for c, w in zip(softmax(logits), widths)) - capacity

    lower, upper = Fraction(-1), Fraction(1)
    while gap(logits_at(lower)) < 0:
        lower *= 2
    while gap(logits_at(upper)) > 0:
        upper *= 2
    spread = exact_widths[-1] - exact_widths[0]  # logits move by at most spread / beta per unit of lam
    while (upper - lower) * spread > scale:
        middle = (lower + upper) / 2
        if gap(logits_at(middle)) > 0:
            lower = middle
        else:
            upper = middle
    anchor = (lower + upper) / 2
    offsets = logits_at(anchor)

    def shifted(step: float) -> list[float]:  # the logits at lam = anchor + step * beta
        return [z - step * w for z, w in zip(offsets, widths)]

    low_step, high_step = float((lower - anchor) / scale), float((upper - anchor) / scale)  # |step| <= 1
    for _ in range(80):  # 2**-80 of the bracket: far below round-off in the logits
        middle = (low_step + high_step) / 2
        if gap(shifted(middle)) > 0:
            low_step = middle
        else:
            high_step = middle
    return tuple(softmax(shifted((low_step + high_step) / 2)))


@torch.compiler.assume_constant_result
def capacity_distribution(
    capacity: float, num_experts: int = 4, *, beta: float = 10.0, delta: float = 2.0
) -> tuple[float, ...]:
    """Token fractions per expert (smallest first) that spend ``capacity`` of the dense compute (docs/method.md).

    Solves ``max_c sum_i c_i delta**i - beta * sum_i c_i ln c_i`` subject to ``sum_i c_i = 1`` and
    ``sum_i c_i 2**(i-E+1) = capacity`` exactly: the optimum is ``c_i ∝ exp((delta**i - lam 2**(i-E+1)) / beta)``
    with the scalar ``lam`` found by bisection in exact rational arithmetic, so the result spends ``capacity`` to
    round-off for any ``beta > 0`` and ``delta > 0`` with ``delta**(E-1)`` finite (as ``delta**(E-1) / beta`` grows,
    the answer tends to that of the linear programme without the entropy term). ``capacity = 1`` gives
    ``(0, ..., 0, 1)``.

    Args:
        capacity: target effective capacity ``e_c`` in ``[2**-(num_experts-1), 1]``.
        num_experts: number of nested experts ``E``.
        beta: weight of the entropy term (finite, > 0).
        delta: base of the per-expert utility (> 0, with ``delta**(num_experts-1)`` finite in float64).

    Returns:
        A tuple of ``num_experts`` non-negative floats that sum to 1.
    """
    _check_num_experts(num_experts)
    if not (is_scalar_capacity(beta) and is_scalar_capacity(delta)) or not (
        math.isfinite(beta) and beta > 0 and math.isfinite(delta) and delta > 0
    ):
        raise ValueError(f"beta and delta must be finite and > 0, got beta={beta!r}, delta={delta!r}")
    try:
        largest_utility = float(delta) ** (num_experts - 1)
    except OverflowError:
        largest_utility = math.inf
    if not math.isfinite(largest_utility):
        raise ValueError(
            f"delta**(num_experts-1) must be finite in float64 (the objective's largest utility), got delta={delta!r} "
            f"with num_experts={num_experts}"
        )
    value = validate_capacity(capacity, num_experts)
    return _solve_distribution(value, num_experts, float(beta), float(delta))


def expert_token_counts(distribution: Sequence[float], num_tokens: int) -> tuple[int, ...]:
    """Tokens per expert for ``num_tokens`` tokens (docs/method.md), smallest expert first.

    Every expert but the smallest gets ``floor(c_j * num_tokens)``; the smallest gets the rest. The counts
    depend only on ``(distribution, num_tokens)``, so every shape downstream is static.
    """
    return token_counts(validate_distribution(distribution), check_int("num_tokens", num_tokens, 1))


def token_counts(values: tuple[float, ...], num_tokens: int) -> tuple[int, ...]:
    """:func:`expert_token_counts` for a distribution already validated (a tuple of floats; no checks here)."""
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
