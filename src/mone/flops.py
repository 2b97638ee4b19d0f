"""Compute accounting (docs/method.md). "FLOPs" here are multiply-accumulates, the ViT and MoNE papers' convention.

Per example and layer, a dense ViT spends ``12 N D^2`` in its linear layers and ``2 N^2 D`` in attention
(``Q K^T`` and ``A V``). A token on expert ``j`` costs ``d_j / D`` of the dense linear cost, so MoNE replaces
``N D^2`` by ``D * sum_tokens d_j``; attention stays full width. Counts come from the *realised* per-expert token
counts (floored), never from ``capacity x dense``. A ViViT factorised encoder counts its spatial encoder once per
temporal index (with that index's realised counts) and its temporal encoder as a dense ViT over ``T'`` tokens;
pooling and layer norms are not counted. Blocks before a later ``router_block`` are dense; the router (``N D E``)
is counted only when it runs (a learned router with E > 1; a random router draws, it does not multiply). A
Mixture-of-Depths model counts its routers (``N D`` each) and each routed block over its selected tokens only.
Prefix tokens (class, registers) are not routed: the router scores the patch tokens only, and every block runs the
prefix tokens at full width (they join the largest expert's count, and attention is over all ``P + N`` tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch.nn as nn

if TYPE_CHECKING:
    from .models.vision_transformer import MoneVisionTransformer
    from .models.vivit import MoneViViT

CapacityLike = Any  # a float budget or a per-expert distribution (mone.models.CapacityLike)

__all__ = [
    "attention_flops",
    "block_flops",
    "check_input_size",
    "count_flops",
    "dense_block_flops",
    "dense_flops",
    "mone_encoder_flops",
    "patch_embed_flops",
]


def patch_embed_flops(num_tokens: int, embed_dim: int, in_chans: int, patch_volume: int) -> int:
    """One ``in_chans * patch_volume -> embed_dim`` projection per token."""
    return num_tokens * embed_dim * in_chans * patch_volume


def nested_linear_flops(counts: Sequence[int], widths: Sequence[int], embed_dim: int, mlp_hidden: int) -> int:
    """qkv (d -> 3D), proj (D -> d), fc1 (d -> hidden), fc2 (hidden -> d) for ``counts[j]`` tokens of width ``d_j``."""
    per_width_unit = 3 * embed_dim + embed_dim + mlp_hidden + mlp_hidden  # 12 D for mlp_ratio 4
    return sum(n * d * per_width_unit for n, d in zip(counts, widths))


def attention_flops(num_tokens: int, embed_dim: int) -> int:
    """``Q K^T`` and ``A V`` at full width: ``2 N^2 D``."""
    return 2 * num_tokens * num_tokens * embed_dim


def block_flops(counts: Sequence[int], widths: Sequence[int], embed_dim: int, mlp_hidden: int) -> int:
    """One nested block over one sequence of ``sum(counts)`` tokens: its linear layers and full-width attention."""
    return nested_linear_flops(counts, widths, embed_dim, mlp_hidden) + attention_flops(sum(counts), embed_dim)


def dense_block_flops(num_tokens: int, embed_dim: int, mlp_hidden: int) -> int:
    """One dense block over ``num_tokens`` tokens: ``12 N D^2 + 2 N^2 D`` for ``mlp_hidden = 4 D``."""
    return block_flops((num_tokens,), (embed_dim,), embed_dim, mlp_hidden)


def mone_encoder_flops(
    model: MoneVisionTransformer | MoneViViT, counts: Sequence[int], num_prefix_tokens: int = 0
) -> int:
    """A MoNE encoder on one group of ``sum(counts)`` routed tokens and ``num_prefix_tokens`` unrouted ones: dense
    blocks before ``router_block``, the router over the routed tokens (``model.router_flops``), nested blocks from
    ``router_block`` on (prefix tokens on the largest expert)."""
    N, D, P = sum(counts), model.embed_dim, num_prefix_tokens
    mlp_hidden = model.blocks[0].mlp.fc1.out_features
    router = model.router_flops(N)
    if P:
        counts = (*counts[:-1], counts[-1] + P)
    dense_depth, routed_depth = model.router_block, len(model.blocks) - model.router_block
    return (
        dense_depth * dense_block_flops(N + P, D, mlp_hidden)
        + router
        + routed_depth * block_flops(counts, model.expert_widths, D, mlp_hidden)
    )


def check_input_size(model: nn.Module, input_size: Sequence[int], layout: str) -> None:
    """ValueError unless ``input_size`` is the model's ``default_input_size`` (``layout`` names its axes)."""
    expected = tuple(model.default_input_size)
    if tuple(input_size) != expected:
        raise ValueError(f"input_size must be {layout} = {expected} for this model, got {tuple(input_size)}")


def count_flops(model: nn.Module, input_size: Sequence[int], capacity: CapacityLike | None = None) -> int:
    """Multiply-accumulates of one forward pass for one sample of shape ``input_size`` (no batch dimension).

    Args:
        model: a MoNE model or a :class:`~mone.models.MoDVisionTransformer` (any model with a
            ``count_flops(input_size, capacity)`` method).
        input_size: ``(C, H, W)`` for images, ``(C, T, H, W)`` for clips.
        capacity: effective capacity or distribution (MoD: the fraction of tokens a routed block processes);
            ``None`` uses the model's default.
    """
    if not callable(getattr(model, "count_flops", None)):
        raise ValueError(f"count_flops does not know models of type {type(model).__name__}")
    return model.count_flops(input_size, capacity)  # each model counts its own terms with the helpers above


def dense_flops(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-accumulates of the same model with every token on the largest expert (capacity 1.0)."""
    return count_flops(model, input_size, 1.0)
