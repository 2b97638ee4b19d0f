"""Per-request budgets in one batch: ``model(x, capacity=[c_0, ..., c_{B-1}])``.

Every shape in a MoNE forward follows from the capacity, so a batch cannot mix budgets inside one set of kernels.
Instead the samples are grouped by budget, each group runs the ordinary single-capacity path (static shapes, so
compiled graphs and kernels are reused per budget), and the outputs are put back in input order. Samples never
interact in a forward (EPR, attention and pooling are per sample), so every sample gets what it would get alone at
its budget: bit for bit what its group's own batch gives, and what a batch of one gives up to round-off (BLAS may
sum in another order for another number of rows).

Which capacities are per-sample, precisely: a ``list``, or a 1-d NumPy array or tensor, always is, and must hold
exactly B entries, B being the batch size (each a number, or a per-expert tuple); any other length is a ValueError
that names both, as is an array or tensor of more than one dimension. A ``tuple`` is always one per-expert
distribution for the whole batch (as :func:`mone.capacity_distribution` returns), and a number or a 0-d array one
budget. So ``[0.25] * 4`` is four budgets (for a batch of 4; an error for any other batch, even though its entries
would sum to 1) and ``(0.25,) * 4`` one distribution. An empty batch is refused by the model's input check, whatever
the capacity.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import torch

__all__ = ["group_by_capacity", "is_per_sample", "run_by_group"]


def is_per_sample(capacity: Any) -> bool:
    """Whether ``capacity`` is meant as one budget per sample: a list, or an array or tensor of at least one
    dimension (see the module docstring); :func:`group_by_capacity` checks that it fits the batch."""
    if isinstance(capacity, (torch.Tensor, np.ndarray)):  # isinstance only: torch.compile traces this for every call
        return capacity.ndim >= 1
    return isinstance(capacity, list)


def _check_fits(capacity: Any, batch_size: int) -> None:
    """ValueError unless the per-sample ``capacity`` holds exactly one entry per sample."""
    kind = "list" if isinstance(capacity, list) else type(capacity).__name__
    if kind != "list" and capacity.ndim != 1:
        raise ValueError(f"a capacity {kind} holds one budget per image, shape [B] = [{batch_size}]; got shape "
                         f"{tuple(capacity.shape)}")
    if len(capacity) != batch_size:
        raise ValueError(f"a capacity {kind} holds one budget per image, so it needs {batch_size} entries (the batch "
                         f"size), got {len(capacity)}; pass one number for the whole batch, or a per-expert "
                         f"distribution as a tuple")


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

    Raises:
        ValueError: for a list, array or tensor whose length is not ``batch_size``, or of more than one dimension;
            for a bad entry, naming the sample.
    """
    if not is_per_sample(capacity):
        return None
    _check_fits(capacity, batch_size)
    if batch_size == 0:  # no budgets for no images: the ordinary path refuses the empty batch in its own words
        return [(resolve(None), [])]
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
