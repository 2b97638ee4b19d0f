"""MoNE ViViT (docs/method.md): a factorised-encoder video transformer whose spatial encoder runs on nested experts.

A clip [B, C, T, H, W] is cut into ``t x p x p`` tubelets, giving ``T' = T / t`` temporal indices of
``N = (H / p) * (W / p)`` tokens each. The temporal indices are folded into the batch ([B * T', N, D]), so the
spatial encoder, the router and EPR treat every temporal index as its own "image": expert counts are exact per
temporal index and indices never compete for capacity. Each index is average-pooled to one vector, a dense
temporal transformer mixes the T' vectors, and an average over time feeds the head.

Parameter names: ``patch_embed.proj`` (the Conv3d), ``pos_embed``, ``blocks.*`` (spatial, named like timm's
``Block``), ``spatial_norm``, ``temporal_pos_embed``, ``temporal_blocks.*``, ``fc_norm``, ``head``, ``router``,
``alpha``.

timm's contract: a pretrained config (``input_size`` is one frame's ``(C, H, W)``), ``get_classifier``,
``reset_classifier``, ``no_weight_decay``, ``group_matcher`` and ``set_grad_checkpointing``. Not
``forward_intermediates`` or ``features_only``: timm's feature wrappers expect image feature maps, and a clip's
spatial tokens are per temporal index ([B, T', N, D]), which none of timm's output formats describes.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn

from .._checks import check_input_tensor, check_int
from ..capacity import expert_token_counts
from ..flops import check_input_size, dense_block_flops, mone_encoder_flops, patch_embed_flops
from ..layers import FUSED_ATTN, NestedBlock, dense_blocks_forward
from ..routing import Router, RoutingPlan
from ._base import CapacityLike, MoneModelMixin, per_sample_capacity, validate_vit_args
from ._contract import build_registered_model, records_init_args
from ._registry import register_model

__all__ = ["MoneViViT", "TubeletEmbed"]


class TubeletEmbed(nn.Module):
    """Non-overlapping ``t x p x p`` tubelets (a Conv3d named ``proj``): [B, C, T, H, W] -> [B, T', N, D]."""

    def __init__(
        self, img_size: int, patch_size: int, tubelet_size: int, num_frames: int, in_chans: int, embed_dim: int
    ) -> None:
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.tubelet_size = tubelet_size
        self.grid_size = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[1] * self.grid_size[2]  # tokens per temporal index
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # [B, D, T', H', W']
        return x.flatten(3).permute(0, 2, 3, 1)  # [B, T', N, D]


@records_init_args
class MoneViViT(MoneModelMixin, nn.Module):
    """ViViT factorised encoder with MoNE (one router, EPR per temporal index) in the spatial encoder.

    Args:
        img_size: frame height and width (square frames).
        patch_size: tubelet height and width; must divide ``img_size``.
        in_chans: input channels.
        num_classes: classifier outputs (0 for no head).
        embed_dim: token width ``D`` of both encoders; divisible by ``num_heads`` and by ``2**(num_experts-1)``.
        depth: spatial blocks (nested experts).
        num_heads: attention heads (both encoders).
        mlp_ratio: MLP hidden width over ``D`` (both encoders).
        qkv_bias: bias on the qkv projections.
        num_experts, capacity, beta, delta: see :class:`~mone.models._base.MoneModelMixin`.
        fused_attn: the attention kernel (:class:`~mone.layers.NestedAttention`; default ``FUSED_ATTN``).
        num_frames: input frames ``T``; must be divisible by ``tubelet_size``.
        tubelet_size: frames per tubelet ``t``.
        temporal_depth: dense temporal blocks.
        router, router_block: see :class:`~mone.models._base.MoneModelMixin` (``router_block`` counts spatial
            blocks).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        num_experts: int = 4,
        capacity: CapacityLike = 1.0,
        beta: float = 10.0,
        delta: float = 2.0,
        fused_attn: bool | None = FUSED_ATTN,
        num_frames: int = 32,
        tubelet_size: int = 2,
        temporal_depth: int = 4,
        router: str = "learned",
        router_block: int = 0,
    ) -> None:
        super().__init__()
        validate_vit_args(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, num_experts,
                          mlp_ratio)
        for name, value in (("num_frames", num_frames), ("tubelet_size", tubelet_size),
                            ("temporal_depth", temporal_depth)):
            check_int(name, value, 1)
        if num_frames % tubelet_size != 0:
            raise ValueError(f"num_frames ({num_frames}) must be divisible by tubelet_size ({tubelet_size})")
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_frames = num_frames
        self.tubelet_size = tubelet_size
        self.num_classes = num_classes
        self.embed_dim = self.num_features = self.head_hidden_size = embed_dim
        self.num_experts = num_experts
        self.beta, self.delta = float(beta), float(delta)

        self.patch_embed = TubeletEmbed(img_size, patch_size, tubelet_size, num_frames, in_chans, embed_dim)
        self.num_patches = self.patch_embed.num_patches  # spatial tokens per temporal index
        self.num_temporal = self.patch_embed.grid_size[0]  # temporal indices T'
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
        self.blocks = nn.ModuleList(
            [NestedBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, fused_attn) for _ in range(depth)]
        )
        self.spatial_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.temporal_pos_embed = nn.Parameter(torch.zeros(1, self.num_temporal, embed_dim))
        self.temporal_blocks = nn.ModuleList(
            [NestedBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, fused_attn) for _ in range(temporal_depth)]
        )
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.router = Router(embed_dim, num_experts)
        self.alpha = nn.Parameter(torch.zeros(()))
        self.init_weights()
        self.init_routing(router, router_block)
        self.set_capacity(capacity)

    @property
    def default_input_size(self) -> tuple[int, int, int, int]:
        """``(C, T, H, W)`` of one input clip."""
        return (self.in_chans, self.num_frames, self.img_size, self.img_size)

    @property
    def tokens_per_group(self) -> int:
        """Tokens that EPR routes together: the spatial tokens of one temporal index."""
        return self.num_patches

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise decay: embeddings, spatial blocks (the router with the block it
        reads), then the temporal encoder, whose last group also holds alpha (it scales every routed block)."""
        return dict(
            stem=r"^pos_embed|^patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^router\.", (self.router_block,))],
            temporal=[(r"^spatial_norm|^temporal_pos_embed", (-1,)), (r"^temporal_blocks\.(\d+)", None),
                      (r"^alpha$", (99999,))],
        )

    # -- forward --------------------------------------------------------------------------------------------

    @per_sample_capacity
    def forward_features(
        self, x: torch.Tensor, capacity: CapacityLike | None = None, return_plan: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, RoutingPlan]:
        """Clips [B, C, T, H, W] -> spatial tokens [B, T', N, D] in input order.

        With ``return_plan`` also returns the routing plan, whose groups are the ``B * T'`` temporal indices in
        batch-major order: ``plan.expert`` is [B * T', N] (reshape to [B, T', N] for per-clip maps).
        ``capacity`` may hold one budget per clip (see :meth:`forward`), without ``return_plan``.
        """
        B = x.shape[0]
        x = self._embed(x)  # [B * T', N, D]: every temporal index is routed on its own
        x = self.dense_blocks(x)  # spatial blocks before router_block (none by default), full width
        plan = self.route(x, capacity)  # router + EPR per temporal index
        x = self.nested_blocks(x, plan)  # [B * T', N, D] in input order
        x = x.unflatten(0, (B, -1))  # [B, T', N, D]
        return (x, plan) if return_plan else x

    def forward_temporal(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial tokens [B, T', N, D] -> temporal tokens [B, T', D] (spatial GAP, LayerNorm, dense encoder)."""
        x = self.spatial_norm(x.mean(dim=2)) + self.temporal_pos_embed  # [B, T', D]
        return dense_blocks_forward(self.temporal_blocks, x, self.grad_checkpointing)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Spatial tokens [B, T', N, D] -> logits [B, num_classes] (temporal encoder, GAP over time, LN, linear)."""
        x = self.fc_norm(self.forward_temporal(x).mean(dim=1))  # [B, D]
        return x if pre_logits else self.head(x)

    @per_sample_capacity
    def forward(self, x: torch.Tensor, capacity: CapacityLike | None = None) -> torch.Tensor:
        """Clips [B, C, T, H, W] -> logits [B, num_classes] at ``capacity`` (default ``self.capacity``).

        ``capacity`` may give every clip its own budget (a list, array or tensor of B entries; every temporal index
        of a clip runs at the clip's budget), as :meth:`MoneVisionTransformer.forward` does for images.
        """
        return self.forward_head(self.forward_features(x, capacity))

    def count_flops(self, input_size: tuple[int, ...], capacity: CapacityLike | None = None) -> int:
        """Multiply-accumulates of one clip's forward (see :func:`mone.count_flops`): tubelet embedding, the nested
        spatial encoder once per temporal index, the dense temporal encoder, the head."""
        check_input_size(self, input_size, "(C, T, H, W)")
        T, N, D = self.num_temporal, self.num_patches, self.embed_dim
        counts = expert_token_counts(self.resolve_distribution(capacity), N)  # per temporal index
        tubelet_volume = self.tubelet_size * self.patch_embed.patch_size[0] * self.patch_embed.patch_size[1]
        temporal_hidden = self.temporal_blocks[0].mlp.fc1.out_features
        temporal = len(self.temporal_blocks) * dense_block_flops(T, D, temporal_hidden)  # dense, no router
        spatial = T * mone_encoder_flops(self, counts)
        return patch_embed_flops(T * N, D, self.in_chans, tubelet_volume) + spatial + temporal + D * self.num_classes

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Clips [B, C, T, H, W] -> tubelet tokens [B * T', N, D], time folded into the batch (EPR per index)."""
        check_clips(x, self.in_chans, self.num_frames, self.tubelet_size, self.img_size, self.pos_embed.dtype)
        x = self.patch_embed(x) + self.pos_embed.unsqueeze(1)  # [B, T', N, D]
        return x.flatten(0, 1)


def check_clips(
    x: torch.Tensor, in_chans: int, num_frames: int, tubelet_size: int, img_size: int, model_dtype: torch.dtype
) -> None:
    """Raise ValueError unless ``x`` is a non-empty batch of clips [B, in_chans, num_frames, img_size, img_size]
    that a model with parameters of ``model_dtype`` can take."""
    if x.dim() != 5:
        raise ValueError(f"expected clips [B, C, T, H, W] (rank 5), got a tensor of shape {tuple(x.shape)}")
    B, C, T, H, W = x.shape
    if C != in_chans:
        raise ValueError(f"expected {in_chans} input channels, got {C} (shape {tuple(x.shape)})")
    if T % tubelet_size != 0:
        raise ValueError(f"number of frames ({T}) must be divisible by tubelet_size ({tubelet_size})")
    if T != num_frames:
        raise ValueError(f"expected num_frames={num_frames} frames, got {T} (shape {tuple(x.shape)})")
    if (H, W) != (img_size, img_size):
        raise ValueError(f"expected {img_size}x{img_size} frames, got {H}x{W}")
    check_input_tensor(x, model_dtype, "clips")


torch.fx.wrap("check_clips")  # torch.fx leaf: checks the input's shape in Python (docs/api.md, "torch.fx")


def _create(variant: str, defaults: dict, pretrained: bool = False, **kwargs) -> MoneViViT:
    return build_registered_model(MoneViViT, variant, defaults, pretrained, features=False, **kwargs)


@register_model
def mone_vivit_small_patch16_224(pretrained: bool = False, **kwargs) -> MoneViViT:
    """MoNE ViViT-S/16 factorised encoder (D=384, 12 spatial + 4 temporal layers, 6 heads, 32 frames, tubelet 2)."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create("mone_vivit_small_patch16_224", model_args, pretrained, **kwargs)


@register_model
def mone_vivit_base_patch16_224(pretrained: bool = False, **kwargs) -> MoneViViT:
    """MoNE ViViT-B/16 factorised encoder (D=768, 12 spatial + 4 temporal layers, 12 heads, 32 frames, tubelet 2)."""
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create("mone_vivit_base_patch16_224", model_args, pretrained, **kwargs)


@register_model
def mone_vivit_test(pretrained: bool = False, **kwargs) -> MoneViViT:
    """Tiny model for tests: 8 frames of 32 px, tubelet 2x8x8, D=64, 2 spatial + 1 temporal layers, 10 classes."""
    model_args = dict(
        img_size=32, patch_size=8, num_classes=10, embed_dim=64, depth=2, num_heads=2, num_frames=8,
        tubelet_size=2, temporal_depth=1,
    )
    return _create("mone_vivit_test", model_args, pretrained, **kwargs)
