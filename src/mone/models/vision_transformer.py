"""MoNE Vision Transformer (spec section 5): timm's ViT with GAP and no class token, run on nested experts.

Parameter names follow timm's ``VisionTransformer(global_pool='avg', class_token=False)``, so such a timm
state_dict loads with only ``router.*`` and ``alpha`` missing; with ``alpha = 0`` (its initial value) and
capacity 1.0 the model computes exactly that timm model's function.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import NestedBlock, PatchEmbed
from ..routing import Router, RoutingPlan
from ._base import ALPHA_MAX, CapacityLike, MoneModelMixin, build_registered_model, check_images, validate_vit_args
from ._registry import register_model

__all__ = ["ALPHA_MAX", "MoneVisionTransformer", "CapacityLike"]


class MoneVisionTransformer(MoneModelMixin, nn.Module):
    """Vision Transformer whose tokens are routed once to nested experts of widths ``D / 2**(E-1-i)``.

    Args:
        img_size: input height and width (square images).
        patch_size: patch height and width; must divide ``img_size``.
        in_chans: input channels.
        num_classes: classifier outputs (0 for no head).
        embed_dim: token width ``D``; divisible by ``num_heads`` and by ``2**(num_experts-1)``.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``D``.
        qkv_bias: bias on the qkv projection.
        num_experts: nested experts ``E`` (1 gives a dense ViT).
        capacity: default effective capacity in ``[2**-(E-1), 1]``, or an explicit per-expert distribution.
        beta, delta: parameters of the capacity-distribution objective (spec section 4).
        fused_attn: use ``F.scaled_dot_product_attention``; ``False`` runs the explicit softmax path.
        router: ``"learned"`` (MoNE) or ``"random"`` (the random-router baseline; see :meth:`router_probs`).
        router_block: the block whose input is routed; blocks before it run every token at full width.
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
        fused_attn: bool = True,
        router: str = "learned",
        router_block: int = 0,
    ) -> None:
        super().__init__()
        validate_vit_args(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, num_experts,
                          mlp_ratio)
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.num_experts = num_experts
        self.beta, self.delta = float(beta), float(delta)

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.num_patches = self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
        self.blocks = nn.ModuleList(
            [NestedBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, fused_attn) for _ in range(depth)]
        )
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.router = Router(embed_dim, num_experts)
        self.alpha = nn.Parameter(torch.zeros(()))
        self.init_weights()
        self.init_routing(router, router_block)
        self.set_capacity(capacity)

    @property
    def default_input_size(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input sample."""
        return (self.in_chans, self.img_size, self.img_size)

    @property
    def tokens_per_group(self) -> int:
        """Tokens that EPR routes together (one image)."""
        return self.num_patches

    # -- forward --------------------------------------------------------------------------------------------

    def forward_features(
        self, x: torch.Tensor, capacity: CapacityLike | None = None, return_plan: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, RoutingPlan]:
        """Images [B, C, H, W] -> tokens [B, N, D] in input order (and the routing plan if ``return_plan``)."""
        x, plan = self.encode(self._embed(x), capacity)
        return (x, plan) if return_plan else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens [B, N, D] -> logits [B, num_classes] (global average pool, LayerNorm, linear)."""
        return self._pooled_head(x.mean(dim=1), pre_logits)

    def forward(self, x: torch.Tensor, capacity: CapacityLike | None = None) -> torch.Tensor:
        """Images [B, C, H, W] -> logits [B, num_classes] at ``capacity`` (default ``self.capacity``).

        Same result as ``forward_head(forward_features(x))``, but pools the expert-sorted tokens directly.
        """
        x, _ = self.encode(self._embed(x), capacity, pool=True)  # [B, D]
        return self._pooled_head(x)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> patch tokens [B, N, D] (patch and position embeddings)."""
        check_images(x, self.in_chans, self.img_size, self.pos_embed.dtype)
        return self.patch_embed(x) + self.pos_embed  # [B, N, D]

    def _pooled_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Mean token [B, D] -> logits [B, num_classes] (LayerNorm, linear)."""
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)


def _create(variant: str, defaults: dict, pretrained: bool = False, **kwargs) -> MoneVisionTransformer:
    return build_registered_model(MoneVisionTransformer, variant, defaults, pretrained, **kwargs)


@register_model
def mone_vit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> MoneVisionTransformer:
    """MoNE ViT-Ti/16 (D=192, 12 layers, 3 heads)."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create("mone_vit_tiny_patch16_224", model_args, pretrained, **kwargs)


@register_model
def mone_vit_small_patch16_224(pretrained: bool = False, **kwargs) -> MoneVisionTransformer:
    """MoNE ViT-S/16 (D=384, 12 layers, 6 heads)."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create("mone_vit_small_patch16_224", model_args, pretrained, **kwargs)


@register_model
def mone_vit_base_patch16_224(pretrained: bool = False, **kwargs) -> MoneVisionTransformer:
    """MoNE ViT-B/16 (D=768, 12 layers, 12 heads)."""
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create("mone_vit_base_patch16_224", model_args, pretrained, **kwargs)


@register_model
def mone_vit_large_patch16_224(pretrained: bool = False, **kwargs) -> MoneVisionTransformer:
    """MoNE ViT-L/16 (D=1024, 24 layers, 16 heads)."""
    model_args = dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16)
    return _create("mone_vit_large_patch16_224", model_args, pretrained, **kwargs)


@register_model
def mone_vit_test(pretrained: bool = False, **kwargs) -> MoneVisionTransformer:
    """Tiny model for tests: 32 px, patch 8, D=64, 2 layers, 2 heads, 10 classes."""
    model_args = dict(img_size=32, patch_size=8, num_classes=10, embed_dim=64, depth=2, num_heads=2)
    return _create("mone_vit_test", model_args, pretrained, **kwargs)
