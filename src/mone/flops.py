"""Compute accounting (spec section 7). "FLOPs" here are multiply-accumulates, the ViT and MoNE papers' convention.

Per example and layer, a dense ViT spends ``12 N D^2`` in its linear layers and ``2 N^2 D`` in attention
(``Q K^T`` and ``A V``). A token on expert ``j`` costs ``d_j / D`` of the dense linear cost, so MoNE replaces
``N D^2`` by ``D * sum_tokens d_j``; attention stays full width. Counts come from the *realised* per-expert token
counts (floored), never from ``capacity x dense``. A ViViT factorised encoder counts its spatial encoder once per
temporal index (with that index's realised counts) and its temporal encoder as a dense ViT over ``T'`` tokens;
pooling and layer norms are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from .capacity import expert_token_counts
from .models.vision_transformer import CapacityLike, MoneVisionTransformer
from .models.vivit import MoneViViT

__all__ = ["count_flops", "encoder_flops", "dense_flops"]


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


def encoder_flops(
    counts: Sequence[int], widths: Sequence[int], embed_dim: int, mlp_hidden: int, depth: int, num_experts: int
) -> int:
    """Router (``N D E``, once) plus ``depth`` nested blocks over one sequence of ``sum(counts)`` tokens."""
    num_tokens = sum(counts)
    router = num_tokens * embed_dim * num_experts if num_experts > 1 else 0
    per_layer = nested_linear_flops(counts, widths, embed_dim, mlp_hidden) + attention_flops(num_tokens, embed_dim)
    return router + depth * per_layer


def _vit_flops(model: MoneVisionTransformer, input_size: Sequence[int], capacity: CapacityLike | None) -> int:
    expected = (model.in_chans, model.img_size, model.img_size)
    if tuple(input_size) != expected:
        raise ValueError(f"input_size must be (C, H, W) = {expected} for this model, got {tuple(input_size)}")
    N, D = model.num_patches, model.embed_dim
    counts = expert_token_counts(model.resolve_distribution(capacity), N)
    mlp_hidden = model.blocks[0].mlp.fc1.out_features
    patch_volume = model.patch_embed.patch_size[0] * model.patch_embed.patch_size[1]
    head = D * model.num_classes
    return (
        patch_embed_flops(N, D, model.in_chans, patch_volume)
        + encoder_flops(counts, model.expert_widths, D, mlp_hidden, len(model.blocks), model.num_experts)
        + head
    )


def _vivit_flops(model: MoneViViT, input_size: Sequence[int], capacity: CapacityLike | None) -> int:
    """Tubelet embedding, the nested spatial encoder once per temporal index, the dense temporal encoder, head."""
    expected = model.default_input_size
    if tuple(input_size) != expected:
        raise ValueError(f"input_size must be (C, T, H, W) = {expected} for this model, got {tuple(input_size)}")
    T, N, D = model.num_temporal, model.num_patches, model.embed_dim
    counts = expert_token_counts(model.resolve_distribution(capacity), N)  # per temporal index
    tubelet_volume = model.tubelet_size * model.patch_embed.patch_size[0] * model.patch_embed.patch_size[1]
    spatial_hidden = model.blocks[0].mlp.fc1.out_features
    spatial = encoder_flops(counts, model.expert_widths, D, spatial_hidden, len(model.blocks), model.num_experts)
    temporal_hidden = model.temporal_blocks[0].mlp.fc1.out_features
    temporal = encoder_flops((T,), (D,), D, temporal_hidden, len(model.temporal_blocks), 1)  # dense, no router
    head = D * model.num_classes
    return patch_embed_flops(T * N, D, model.in_chans, tubelet_volume) + T * spatial + temporal + head


def count_flops(model: nn.Module, input_size: Sequence[int], capacity: CapacityLike | None = None) -> int:
    """Multiply-accumulates of one forward pass for one sample of shape ``input_size`` (no batch dimension).

    Args:
        model: a MoNE model.
        input_size: ``(C, H, W)`` for images, ``(C, T, H, W)`` for clips.
        capacity: effective capacity or distribution; ``None`` uses the model's default.
    """
    if isinstance(model, MoneVisionTransformer):
        return _vit_flops(model, input_size, capacity)
    if isinstance(model, MoneViViT):
        return _vivit_flops(model, input_size, capacity)
    raise ValueError(f"count_flops does not know models of type {type(model).__name__}")


def dense_flops(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-accumulates of the same model with every token on the largest expert (capacity 1.0)."""
    return count_flops(model, input_size, 1.0)
