"""The nested transformer block and the loop that runs a stack of them on routed tokens (docs/method.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..routing import RoutingPlan
from .attention import NestedAttention
from .mlp import NestedMlp


def add_to_prefix(x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """``x + Pad(update)``: add ``update`` [rows, d] to the first ``d`` features of ``x`` [rows, D]."""
    d = update.shape[-1]
    if d == x.shape[-1]:
        return x + update
    return torch.cat([x[:, :d] + update, x[:, d:]], dim=-1)


class NestedBlock(nn.Module):
    """Pre-LN transformer block over per-expert token groups, named like timm's ``Block``.

    For a token on expert ``j`` with router probability ``r_j``:
        ``z     = x + Pad(SA_j(Extract_j(LN1(x))))``
        ``x_out = z + (alpha * r_j + 1) * Pad(MLP_j(Extract_j(LN2(z))))``
    Layer norms use the full-width statistics.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, fused_attn: bool = True
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = NestedAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, fused_attn=fused_attn)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = NestedMlp(dim, int(dim * mlp_ratio))

    def forward(
        self,
        xs: Sequence[torch.Tensor],
        widths: Sequence[int],
        counts: Sequence[int],
        mlp_scales: Sequence[torch.Tensor | float],
    ) -> list[torch.Tensor]:
        """Groups [B * counts[j], D] -> groups of the same shapes.

        ``mlp_scales[j]`` is ``alpha * r_j + 1`` for each row of group ``j`` [rows_j, 1], or 1.0 where no router scales.
        """
        attn_updates = self.attn([self.norm1(x) for x in xs], widths, counts)
        zs = [add_to_prefix(x, u) for x, u in zip(xs, attn_updates)]
        mlp_updates = self.mlp([self.norm2(z) for z in zs], widths)
        return [add_to_prefix(z, s * u) for z, s, u in zip(zs, mlp_scales, mlp_updates)]


def run_block(block: nn.Module, *args: Any, grad_checkpointing: bool = False) -> Any:
    """``block(*args)``, through ``torch.utils.checkpoint`` when ``grad_checkpointing`` and autograd is on: the
    block's activations are recomputed in the backward instead of stored (same outputs and gradients)."""
    if grad_checkpointing and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


class SortedTokens:
    """Tokens [B, L, D] sorted by a routing plan into contiguous per-expert groups, as the nested blocks take them.

    Tokens are sorted once and stay sorted through every block (attention is permutation-equivariant); they are put
    back in input order only where they are returned (:meth:`unsorted`), and a mean needs no order at all
    (:meth:`mean`), so a classifier never pays for the unsort.
    """

    def __init__(self, x: torch.Tensor, plan: RoutingPlan, alpha: torch.Tensor, expert_widths: Sequence[int]) -> None:
        self.plan = plan
        present = [j for j, n in enumerate(plan.counts) if n > 0]
        self.widths = [expert_widths[j] for j in present]
        self.counts = [plan.counts[j] for j in present]
        all_groups = plan.split(plan.sort(x))  # E views [B * counts[j], D]
        self.groups = [all_groups[j] for j in present]
        all_scales = plan.split((alpha * plan.expert_probs + 1).unsqueeze(-1))  # E views [B * counts[j], 1]
        self.scales = [all_scales[j] for j in present]

    def apply(self, block: NestedBlock, grad_checkpointing: bool = False) -> None:
        """Run one nested block on the groups."""
        args = (self.groups, self.widths, self.counts, self.scales)
        self.groups = run_block(block, *args, grad_checkpointing=grad_checkpointing)

    def mean(self) -> torch.Tensor:
        """Mean over the L tokens of each example [B, D], taken straight from the sorted groups."""
        B, groups = self.plan.batch_size, self.groups
        if len(groups) == 1:  # input order
            return groups[0].view(B, -1, groups[0].shape[-1]).mean(dim=1)  # [B, D]
        return sum(g.view(n, B, -1).sum(dim=0) for g, n in zip(groups, self.counts)) / sum(self.counts)  # slot-major

    def unsorted(self) -> torch.Tensor:
        """The tokens [B, L, D] in input order."""
        rows = self.groups[0] if len(self.groups) == 1 else torch.cat(self.groups, dim=0)  # [B * L, D], group-major
        return self.plan.unsort(rows)


def nested_blocks_forward(
    blocks: Sequence[NestedBlock],
    x: torch.Tensor,
    plan: RoutingPlan,
    alpha: torch.Tensor,
    expert_widths: Sequence[int],
    pool: bool = False,
    grad_checkpointing: bool = False,
) -> torch.Tensor:
    """Run ``blocks`` on tokens [B, L, D] routed by ``plan`` (see :class:`SortedTokens`).

    Returns tokens [B, L, D] in input order, or with ``pool`` their mean over the L tokens [B, D].
    """
    tokens = SortedTokens(x, plan, alpha, expert_widths)
    for block in blocks:
        tokens.apply(block, grad_checkpointing)
    return tokens.mean() if pool else tokens.unsorted()


def dense_blocks_forward(
    blocks: Sequence[NestedBlock], x: torch.Tensor, grad_checkpointing: bool = False
) -> torch.Tensor:
    """Run ``blocks`` with every token at full width and MLP scale 1 (a plain pre-LN transformer): [B, L, D]."""
    if len(blocks) == 0:
        return x
    B, L, D = x.shape
    rows = [x.reshape(B * L, D)]  # one group: the largest expert, all L tokens of each example in input order
    for block in blocks:
        rows = run_block(block, rows, (D,), (L,), (1.0,), grad_checkpointing=grad_checkpointing)
    return rows[0].reshape(B, L, D)
