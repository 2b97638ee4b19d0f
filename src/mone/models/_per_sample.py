"""Per-request budgets in one batch: ``model(x, capacity=[c_0, ..., c_{B-1}])``.

Every shape in a MoNE forward follows from the capacity, so a batch cannot mix budgets inside one set of kernels.
Instead the samples are grouped by budget, each group runs the ordinary single-capacity path (static shapes, so
compiled graphs and kernels are reused per budget), and the outputs are put back in input order. Samples never
interact in a forward (EPR, attention and pooling are per sample), so every sample gets what it would get alone at
its budget: bit for bit what its group's own batch gives, and what a batch of one gives up to round-off (BLAS may
sum in another order for another number of rows).

Which capacities are per-sample: a ``list`` of B numbers, or a 1-d NumPy array or tensor of B numbers, B being the
batch size. A ``tuple`` is always one per-expert distribution (as :func:`mone.capacity_distribution` returns), and a
list, array or tensor of another length keeps its old meaning (one distribution). So with as many samples as
experts, ``[0.25] * 4`` is four budgets and ``(0.25,) * 4`` one distribution.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import torch

from ..capacity import is_scalar_capacity

__all__ = ["group_by_capacity", "is_per_sample", "run_by_group"]


def is_per_sample(capacity: Any, batch_size: int) -> bool:
    """Whether ``capacity`` holds one budget per sample of a batch of ``batch_size`` (see the module docstring)."""
    if isinstance(capacity, (torch.Tensor, np.ndarray)):  # isinstance only: torch.compile traces this for every call
        if capacity.ndim != 1:
            return False
    elif not isinstance(capacity, list):
        return False
    return len(capacity) == batch_size and all(is_scalar_capacity(c) for c in capacity)


def group_by_capacity(
    capacity: Any, batch_size: int, resolve: Callable[[Any], Hashable]
) -> list[tuple[Hashable, list[int]]] | None:
    """Group the samples of a batch by budget.

    Args:
        capacity: a forward's ``capacity`` argument.
        batch_size: B.
        resolve: turns one sample's entry into the model's resolved capacity (a hashable: a distribution tuple, a
            float), raising ValueError for a bad one.

    Returns:
        ``None`` when ``capacity`` is one budget for the whole batch; else ``(resolved capacity, sample indices)``
        pairs in order of first appearance.
    """
    if not is_per_sample(capacity, batch_size):
        return None
    groups: dict[Hashable, list[int]] = {}
    for i, entry in enumerate(capacity):
        try:
            key = resolve(entry)
        except ValueError as error:
            raise ValueError(f"capacity of sample {i} of {batch_size}: {error}") from None
        groups.setdefault(key, []).append(i)
    return list(groups.items())


def run_by_group(
    fn: Callable[[torch.Tensor, Any], torch.Tensor], x: torch.Tensor, groups: list[tuple[Hashable, list[int]]]
) -> torch.Tensor:
    """``fn(x[group], capacity)`` for every group, the outputs [B, ...] back in input order.

    One group is ``fn(x, capacity)`` itself, with no copy of the batch.
    """
    if len(groups) == 1:
        return fn(x, groups[0][0])
    outputs, order = [], []
    for capacity, samples in groups:
        index = torch.tensor(samples, device=x.device)
        outputs.append(fn(x.index_select(0, index), capacity))  # [B_g, ...]
        order.append(index)
    order = torch.cat(order)  # input sample of each output row
    inverse = torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=x.device))
    return torch.cat(outputs).index_select(0, inverse)  # [B, ...] in input order
