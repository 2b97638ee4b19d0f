"""The router, Expert Preferred Routing and the sort/unsort plan (docs/method.md).

Routing happens once per forward: the router scores every token, EPR assigns each token to one expert, and a
:class:`RoutingPlan` records the permutation that sorts the tokens of the whole batch into contiguous
per-expert groups (group-major: all tokens of the smallest expert from every example first, then the next
expert, ...). Inside a group the rows are *slot-major*: row ``s * B + b`` is example ``b``'s ``s``-th token of that
expert (tokens in index order). So the rows of the whole batch, read as ``[N, B, D]``, hold every example's tokens
sorted by expert along the first axis: per-group outputs written one after the other already form the ``[N, B, 3D]``
qkv tensor that attention needs, with no concatenation. Every layer runs on contiguous row ranges with static
shapes; tokens are put back in their input order only where they are returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .capacity import token_counts, validate_distribution

__all__ = ["Router", "RoutingPlan", "expert_preferred_routing", "make_routing_plan"]


class Router(nn.Linear):
    """``r = softmax(W_r x + b_r)`` over the experts, per token (docs/method.md).

    A plain ``nn.Linear(embed_dim, num_experts)`` whose forward adds the softmax, so its parameters are
    ``router.weight`` [E, D] and ``router.bias`` [E].
    """

    def __init__(self, embed_dim: int, num_experts: int) -> None:
        super().__init__(embed_dim, num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] -> router probabilities [..., E], in float32 at least (float64 stays float64).

        The scores are computed in float32 whatever the model's precision (bfloat16 weights or autocast): EPR ranks
        tokens by them, and bfloat16's 8-bit mantissa turns near-ties into ties that move tokens between experts
        (a MoNE ViT trained on Fashion-MNIST, bfloat16 autocast, capacity 0.25: top-1 agreement with float32 99.36%
        with bfloat16 scores, 99.68% with float32 ones; docs/performance.md, round 8).
        """
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            bias = None if self.bias is None else self.bias.to(dtype)
            logits = F.linear(x.to(dtype), self.weight.to(dtype), bias)  # [..., E]
        # The same softmax over the experts, taken along the leading axis of a view: on CPU a softmax over a short
        # last axis (E = 4) is ~15x slower (0.33 vs 0.02 ms for [64, 64, 4], measured).
        return logits.movedim(-1, 0).softmax(dim=0).movedim(0, -1)


def expert_preferred_routing(probs: torch.Tensor, distribution: Sequence[float]) -> torch.Tensor:
    """Expert Preferred Routing (docs/method.md), batched over examples.

    Every token starts on the smallest expert; then, from the largest expert down, expert ``j`` takes the
    ``floor(c_j * N)`` not-yet-taken tokens with the highest ``probs[..., j]`` (ties go to the lower token
    index). Each example is routed on its own: examples in a batch never influence each other.

    Args:
        probs: router probabilities [B, N, E].
        distribution: token fraction per expert, smallest first (length E, sums to 1).

    Returns:
        Expert index per token [B, N] (int64, 0 = smallest expert).
    """
    if probs.dim() != 3:
        raise ValueError(f"probs must have shape [B, N, E], got {tuple(probs.shape)}")
    values = validate_distribution(distribution)
    if len(values) != probs.shape[-1]:
        raise ValueError(f"distribution has {len(values)} experts but probs has E={probs.shape[-1]}")
    return _expert_preferred_routing(probs, token_counts(values, probs.shape[1]))


def _expert_preferred_routing(probs: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """EPR of probabilities [B, N, E] with ``counts[j]`` tokens per example for expert ``j`` (checked by the caller)."""
    B, N, E = probs.shape
    expert = torch.zeros(B, N, dtype=torch.long, device=probs.device)
    taken = torch.zeros(B, N, dtype=torch.bool, device=probs.device)
    for j in range(E - 1, 0, -1):
        k = counts[j]
        if k == 0:
            continue
        scores = probs[..., j].detach().masked_fill(taken, float("-inf"))  # taken tokens sort last
        # A stable descending sort keeps lower token indices first among equal scores.
        chosen = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]  # [B, k]
        expert.scatter_(1, chosen, j)
        taken.scatter_(1, chosen, True)
    return expert


@dataclass(frozen=True)
class RoutingPlan:
    """Where every token goes, built once per forward and passed to every layer.

    Attributes:
        expert: expert index per token in input order [B, N].
        probs: router probabilities in input order [B, N, E].
        counts: tokens per expert and example (static Python ints, smallest expert first).
        order: flat source row (``b * N + n``) of each group-major, slot-major row [B * N]; ``None`` when one
            expert takes every token (then the rows stay in input order, ``b * N + n``).
        inverse_order: group-major row of each flat input row [B * N]; ``None`` when ``order`` is the identity.
        expert_probs: router probability of each token's own expert, group-major [B * N].
        num_prefix_tokens: P tokens (class, registers) at the start of every example that are not routed: always on
            the largest expert, with no router probability (0 in ``probs`` and ``expert_probs``, so their MLP scale
            ``alpha * r + 1`` is 1). ``N`` above counts them; ``counts[-1]`` includes them.
    """

    expert: torch.Tensor
    probs: torch.Tensor
    counts: tuple[int, ...]
    order: torch.Tensor | None
    inverse_order: torch.Tensor | None
    expert_probs: torch.Tensor
    num_prefix_tokens: int = 0

    @property
    def batch_size(self) -> int:
        return self.expert.shape[0]

    @property
    def group_sizes(self) -> tuple[int, ...]:
        """Rows of each expert's group in the group-major layout (``B * counts[j]``)."""
        return tuple(self.batch_size * n for n in self.counts)

    def sort(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens [B, N, D] in input order -> group-major rows [B * N, D]."""
        rows = x.reshape(-1, x.shape[-1])
        return rows if self.order is None else rows.index_select(0, self.order)

    def unsort(self, rows: torch.Tensor) -> torch.Tensor:
        """Group-major rows [B * N, D] -> tokens [B, N, D] in input order."""
        if self.inverse_order is not None:
            rows = rows.index_select(0, self.inverse_order)
        return rows.reshape(self.batch_size, -1, rows.shape[-1])

    def split(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """Group-major rows [B * N, ...] -> one contiguous view per expert [B * counts[j], ...] (empty groups too).

        When one expert takes every token its group is ``rows`` itself, not a view of it: autograd would copy the
        gradient of a whole-tensor view back into a fresh tensor.
        """
        sizes = self.group_sizes
        if self.order is None:
            return [rows if size else rows[:0] for size in sizes]
        return list(rows.split(sizes, dim=0))


def make_routing_plan(
    probs: torch.Tensor, distribution: Sequence[float], num_prefix_tokens: int = 0
) -> RoutingPlan:
    """Route tokens with EPR and build the permutation into contiguous per-expert groups.

    Args:
        probs: router probabilities [B, N, E] of the routed tokens.
        distribution: token fraction per expert, smallest first.
        num_prefix_tokens: P unrouted tokens in front of them (class, registers): EPR's counts are over the N routed
            tokens only and the P prefix tokens join the largest expert (see :class:`RoutingPlan`).

    Returns:
        The :class:`RoutingPlan` of the ``P + N`` tokens. When one expert takes every token no permutation is built.
    """
    values = validate_distribution(distribution)
    if probs.dim() != 3 or len(values) != probs.shape[-1]:
        raise ValueError(f"probs must have shape [B, N, E] with E = {len(values)} (the distribution's experts), "
                         f"got {tuple(probs.shape)}")
    return routing_plan(probs, values, num_prefix_tokens)


def routing_plan(probs: torch.Tensor, values: tuple[float, ...], num_prefix_tokens: int = 0) -> RoutingPlan:
    """:func:`make_routing_plan` for a distribution already validated (what a model's forward passes: its budget is
    checked once, where it enters the model)."""
    B, N, E = probs.shape
    routed_counts = token_counts(values, N)  # EPR's quotas over the N routed tokens
    P = num_prefix_tokens
    counts = (*routed_counts[:-1], routed_counts[-1] + P)  # the P prefix tokens join the largest expert
    if P:
        probs = torch.cat([probs.new_zeros(B, P, E), probs], dim=1)  # [B, P + N, E]: prefix tokens are not routed
    L = N + P
    if max(counts) == L:  # a single group: no EPR and no sort needed
        j = counts.index(L)
        expert = torch.full((B, L), j, dtype=torch.long, device=probs.device)
        return RoutingPlan(expert, probs, counts, None, None, probs[..., j].reshape(-1), P)
    expert = _expert_preferred_routing(probs[:, P:], routed_counts)  # [B, N]
    if P:
        expert = torch.cat([expert.new_full((B, P), E - 1), expert], dim=1)  # [B, L]
    # Each example's tokens sorted by (expert, token index): position p = start_j + s holds its s-th token of
    # expert j. Row p * B + b of the batch is example b's position p: group-major, slot-major inside each group.
    token = torch.arange(L, device=probs.device)
    position_to_token = torch.argsort(expert * L + token, dim=1)  # [B, L]; unique keys: deterministic
    example = torch.arange(B, device=probs.device).unsqueeze(1)  # [B, 1]
    order = (example * L + position_to_token).t().reshape(-1)  # [L * B]
    inverse_order = torch.empty_like(order).scatter_(0, order, torch.arange(B * L, device=probs.device))
    expert_probs = probs.gather(-1, expert.unsqueeze(-1)).reshape(-1).index_select(0, order)  # [B * L]
    return RoutingPlan(expert, probs, counts, order, inverse_order, expert_probs, P)
