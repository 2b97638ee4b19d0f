"""The nested transformer block and the loop that runs a stack of them on routed tokens (docs/method.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..routing import RoutingPlan
from .attention import FUSED_ATTN, NestedAttention
from .linear import GroupLayout
from .mlp import NestedMlp

torch.fx.wrap("dense_block_forward")  # torch.fx leaf: its layout depends on the batch size (docs/api.md, "torch.fx")


class NestedBlock(nn.Module):
    """Pre-LN transformer block over per-expert token groups, named like timm's ``Block``.

    For a token on expert ``j`` with router probability ``r_j``:
        ``z     = x + Pad(SA_j(Extract_j(LN1(x))))``
        ``x_out = z + (alpha * r_j + 1) * Pad(MLP_j(Extract_j(LN2(z))))``
    Layer norms use the full-width statistics.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        fused_attn: bool | None = FUSED_ATTN,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = NestedAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, fused_attn=fused_attn)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = NestedMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, layout: GroupLayout, mlp_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Rows [R, D] grouped by ``layout`` -> rows [R, D] in the same order.

        ``mlp_scale`` [R, 1] is ``alpha * r_j + 1`` of each row, or ``None`` where no router scales.
        """
        # The two residual lines, x = x + Pad(SA_j(...)) and x = x + s * Pad(MLP_j(...)), with "x +" passed as
        # ``residual=x``: proj and fc2 add each group's d_j outputs straight into its rows of the residual inside
        # the GEMM (beta = 1), instead of building the zero-padded [R, D] update and adding it in a second full pass
        # over the rows (docs/lab-notebook.md, round 5, "What changed" 1; GroupedGemmPolicy.adds_residual in
        # mone/layers/linear.py).
        x = self.attn(self.norm1(x), layout, residual=x)
        x = self.mlp(self.norm2(x), layout, residual=x, scale=mlp_scale)
        return x


def run_block(block: nn.Module, *args: Any, grad_checkpointing: bool = False) -> Any:
    """``block(*args)``, through ``torch.utils.checkpoint`` when ``grad_checkpointing`` and autograd is on: the
    block's activations are recomputed in the backward instead of stored (same outputs and gradients)."""
    if grad_checkpointing and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


def mlp_scale(alpha: torch.Tensor, expert_probs: torch.Tensor, straight_through: bool = False) -> torch.Tensor:
    """``alpha * r + 1`` per token (docs/method.md); with ``straight_through`` the same value plus ``r - r.detach()``.

    The paper's scale gives the router no gradient while alpha is 0. The straight-through term adds 0 to the value
    and a gradient of ``(alpha + 1) * update`` to ``r``, so the router learns from the first step on.
    """
    scale = alpha * expert_probs + 1
    return scale + (expert_probs - expert_probs.detach()) if straight_through else scale


class SortedTokens:
    """Tokens [B, L, D] sorted by a routing plan into contiguous per-expert row groups, as the nested blocks take them.

    Tokens are sorted once and stay sorted through every block (attention is permutation-equivariant); they are put
    back in input order only where they are returned (:meth:`unsorted`), and a mean needs no order at all
    (:meth:`mean`), so a classifier never pays for the unsort.
    """

    def __init__(
        self, x: torch.Tensor, plan: RoutingPlan, alpha: torch.Tensor, expert_widths: Sequence[int],
        straight_through: bool = False,
    ) -> None:
        self.plan = plan
        self.layout = GroupLayout.of_experts(expert_widths, plan.counts, plan.batch_size)
        self.rows = plan.sort(x)  # [B * L, D], group-major
        self.scale = mlp_scale(alpha, plan.expert_probs, straight_through).unsqueeze(-1)  # [B * L, 1]

    def apply(self, block: NestedBlock, grad_checkpointing: bool = False) -> None:
        """Run one nested block on the rows."""
        self.rows = run_block(block, self.rows, self.layout, self.scale, grad_checkpointing=grad_checkpointing)

    def mean(self) -> torch.Tensor:
        """Mean over the L tokens of each example [B, D], taken straight from the sorted rows."""
        B, L = self.layout.batch_size, self.layout.num_tokens
        if self.layout.input_order:
            return self.rows.view(B, L, -1).mean(dim=1)
        return self.rows.view(L, B, -1).mean(dim=0)  # slot-major

    def unsorted(self) -> torch.Tensor:
        """The tokens [B, L, D] in input order."""
        return self.plan.unsort(self.rows)


def nested_blocks_forward(
    blocks: Sequence[NestedBlock],
    x: torch.Tensor,
    plan: RoutingPlan,
    alpha: torch.Tensor,
    expert_widths: Sequence[int],
    pool: bool = False,
    grad_checkpointing: bool = False,
    straight_through: bool = False,
) -> torch.Tensor:
    """Run ``blocks`` on tokens [B, L, D] routed by ``plan`` (see :class:`SortedTokens`; ``straight_through``: see
    :func:`mlp_scale`).

    Returns tokens [B, L, D] in input order, or with ``pool`` their mean over the L tokens [B, D].
    """
    tokens = SortedTokens(x, plan, alpha, expert_widths, straight_through)
    for block in blocks:
        tokens.apply(block, grad_checkpointing)
    return tokens.mean() if pool else tokens.unsorted()


def dense_block_forward(block: NestedBlock, x: torch.Tensor, grad_checkpointing: bool = False) -> torch.Tensor:
    """Run ``block`` with every token at full width and MLP scale 1 (a plain pre-LN block): [B, L, D] -> [B, L, D]."""
    B, L, D = x.shape
    layout = GroupLayout.dense(B, L, D)  # one group: the largest expert, all L tokens of each example in input order
    rows = run_block(block, x.reshape(B * L, D), layout, None, grad_checkpointing=grad_checkpointing)
    return rows.reshape(B, L, D)


def dense_blocks_forward(
    blocks: Sequence[NestedBlock], x: torch.Tensor, grad_checkpointing: bool = False
) -> torch.Tensor:
    """Run ``blocks`` with every token at full width and MLP scale 1 (a plain pre-LN transformer): [B, L, D]."""
    for block in blocks:
        x = dense_block_forward(block, x, grad_checkpointing)
    return x
