"""MoNE Vision Transformer (docs/method.md): timm's ViT run on nested experts.

Parameter names follow timm's ``VisionTransformer``. The default (the paper's model) is timm's
``VisionTransformer(global_pool='avg', class_token=False)``: such a timm state_dict loads with only ``router.*`` and
``alpha`` missing, and with ``alpha = 0`` (its initial value) and capacity 1.0 the model computes exactly that timm
model's function. ``class_token``, ``reg_tokens``, ``global_pool='token'`` and ``no_embed_class`` give timm's other
common layouts (``cls_token``, ``reg_token``, ``pos_embed`` covering the class token unless ``no_embed_class``, the
final ``norm`` on the tokens for token pooling, ``fc_norm`` after average pooling); see :func:`mone.from_timm`.
Prefix tokens (class, registers) are never routed: they always run on the largest expert, and EPR's capacities are
over the patch tokens only.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn

from .._checks import check_int
from ..capacity import expert_token_counts
from ..flops import check_input_size, mone_encoder_flops, patch_embed_flops
from ..layers import FUSED_ATTN, NestedBlock, PatchEmbed, SortedTokens, dense_block_forward
from ..routing import Router, RoutingPlan
from ._base import ALPHA_MAX, CapacityLike, MoneModelMixin, check_images, per_sample_capacity, validate_vit_args
from ._contract import build_registered_model, check_global_pool, feature_take_indices, records_init_args
from ._registry import register_model

torch.fx.wrap("check_images")  # torch.fx leaf: checks the input's shape in Python (docs/api.md, "torch.fx")

__all__ = ["ALPHA_MAX", "MoneVisionTransformer", "CapacityLike"]


@records_init_args
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
        num_experts, capacity, beta, delta: see :class:`~mone.models._base.MoneModelMixin`.
        fused_attn: the attention kernel (:class:`~mone.layers.NestedAttention`; default ``FUSED_ATTN``).
        router, router_block: see :class:`~mone.models._base.MoneModelMixin`.
        class_token: prepend a learned class token (``cls_token``), as timm.
        reg_tokens: number of learned register tokens (``reg_token``) after the class token.
        global_pool: ``"avg"`` (mean of the patch tokens, then ``fc_norm``), ``"token"`` (the class token, after the
            final ``norm``) or ``""`` (no pooling: the head sees every token).
        no_embed_class: position embeddings for the patch tokens only (timm's ``no_embed_class``); by default
            ``pos_embed`` [1, P + N, D] covers the prefix tokens too.
    """

    global_pools = ("", "avg", "token")

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
        router: str = "learned",
        router_block: int = 0,
        class_token: bool = False,
        reg_tokens: int = 0,
        global_pool: str = "avg",
        no_embed_class: bool = False,
    ) -> None:
        super().__init__()
        validate_vit_args(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, num_experts,
                          mlp_ratio)
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.embed_dim = self.num_features = self.head_hidden_size = embed_dim
        self.num_experts = num_experts
        self.beta, self.delta = float(beta), float(delta)
        self.has_class_token = bool(class_token)
        self.num_reg_tokens = check_int("reg_tokens", reg_tokens, 0)
        self.num_prefix_tokens = int(self.has_class_token) + reg_tokens
        self.no_embed_class = bool(no_embed_class)
        self.global_pool = check_global_pool(global_pool, self.global_pools, self.has_class_token)

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        embed_len = self.num_patches + (0 if no_embed_class else self.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_len, embed_dim))
        self.blocks = nn.ModuleList(
            [NestedBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, fused_attn) for _ in range(depth)]
        )
        # timm's placement: a final norm on the tokens, unless average pooling moves it after the pool (fc_norm)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6) if global_pool != "avg" else nn.Identity()
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6) if global_pool == "avg" else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.router = Router(embed_dim, num_experts)
        self.alpha = nn.Parameter(torch.zeros(()))
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size) for i in range(depth)]
        self.init_weights()
        self.init_routing(router, router_block)
        self.set_capacity(capacity)

    @property
    def default_input_size(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input sample."""
        return (self.in_chans, self.img_size, self.img_size)

    @property
    def tokens_per_group(self) -> int:
        """Tokens that EPR routes together: the patch tokens of one image."""
        return self.num_patches

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise decay: embeddings, then one group per block (the router with the
        block it reads), then the final norm and alpha (which scales every routed block)."""
        return dict(
            stem=r"^cls_token|^reg_token|^pos_embed|^patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^router\.", (self.router_block,)), (r"^norm|^alpha$", (99999,))],
        )

    # -- forward --------------------------------------------------------------------------------------------

    @per_sample_capacity
    def forward_features(
        self, x: torch.Tensor, capacity: CapacityLike | None = None, return_plan: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, RoutingPlan]:
        """Images [B, C, H, W] -> tokens [B, P + N, D] in input order, prefix tokens first (and the routing plan if
        ``return_plan``). ``capacity`` may hold one budget per image (see :meth:`forward`), without ``return_plan``.
        """
        x = self._embed(x)  # [B, P + N, D]: prefix tokens, patch tokens, position embeddings
        x = self.dense_blocks(x)  # blocks before router_block (none by default): every token at full width
        plan = self.route(x, capacity)  # router + EPR: each image's patch tokens go to one expert each
        x = self.nested_blocks(x, plan)  # each token at its expert's width; back in input order, [B, P + N, D]
        x = self.norm(x)
        return (x, plan) if return_plan else x

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        """Tokens [B, P + N, D] -> [B, D]: the class token (``"token"``) or the mean patch token (``"avg"``);
        ``""`` returns the tokens."""
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type == "token":
            return x[:, 0]
        if pool_type == "avg":
            return (x[:, self.num_prefix_tokens :] if self.num_prefix_tokens else x).mean(dim=1)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens [B, P + N, D] -> logits [B, num_classes] (pool, ``fc_norm``, linear)."""
        x = self.fc_norm(self.pool(x))
        return x if pre_logits else self.head(x)

    @per_sample_capacity
    def forward(self, x: torch.Tensor, capacity: CapacityLike | None = None) -> torch.Tensor:
        """Images [B, C, H, W] -> logits [B, num_classes] at ``capacity`` (default ``self.capacity``).

        ``capacity`` may give every image its own budget: a list, 1-d array or 1-d tensor of B numbers. Images are
        grouped by budget and each group runs at static shapes, so each image gets its output when run alone (to
        float round-off). A tuple is always one distribution for the whole batch (see :mod:`mone.models._per_sample`).
        """
        return self.forward_head(self.forward_features(x, capacity))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        capacity: CapacityLike | None = None,
        return_prefix_tokens: bool = False,
        stop_early: bool = False,
        output_dict: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]] | dict:
        """timm's ``forward_intermediates``: the tokens after the blocks named by ``indices``, in input order.

        Args:
            x: images [B, C, H, W].
            indices: ``None`` every block, an int ``n`` the last ``n``, or a list of block indices.
            norm: apply the final ``norm`` to each intermediate (an identity for average pooling, as in timm).
            output_fmt: ``"NCHW"`` (patch tokens as [B, D, H', W'] grids) or ``"NLC"`` ([B, N, D]).
            intermediates_only: return only the list of intermediates.
            capacity: the budget (one for the whole batch).
            return_prefix_tokens: pair each intermediate with its prefix tokens [B, P, D] (if the model has any).
            stop_early: skip the blocks after the last one requested (the final features are then those of that
                block).
            output_dict: return a dict with ``image_intermediates``, ``image_intermediates_prefix`` (with
                ``return_prefix_tokens``), ``image_features`` (unless ``intermediates_only``) and ``routing_plan``.

        Returns:
            The intermediates; or ``(final tokens [B, P + N, D] after the final norm, intermediates)``; or the dict.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.blocks), indices)
        B = x.shape[0]
        x = self._embed(x)
        blocks = self.blocks[: last + 1] if stop_early else self.blocks
        intermediates = []
        for i, block in enumerate(blocks[: self.router_block]):
            x = dense_block_forward(block, x, self.grad_checkpointing)
            if i in take:
                intermediates.append(x)
        plan = self.route(x, capacity)
        if len(blocks) > self.router_block:
            tokens = SortedTokens(x, plan, self.alpha_value, self.expert_widths, self.straight_through)
            for i, block in enumerate(blocks[self.router_block :], start=self.router_block):
                tokens.apply(block, self.grad_checkpointing)
                if i in take:
                    intermediates.append(tokens.unsorted())  # [B, P + N, D]
            x = tokens.unsorted() if not intermediates_only else x
        if norm:
            intermediates = [self.norm(y) for y in intermediates]
        P = self.num_prefix_tokens
        prefix = [y[:, :P] for y in intermediates]
        intermediates = [y[:, P:] for y in intermediates]
        if output_fmt == "NCHW":
            H, W = self.patch_embed.grid_size
            intermediates = [y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if output_dict:
            out = {"image_intermediates": intermediates, "routing_plan": plan}
            if return_prefix_tokens and P:
                out["image_intermediates_prefix"] = prefix
            if not intermediates_only:
                out["image_features"] = self.norm(x)
            return out
        if return_prefix_tokens and P:  # as timm: no pairs without prefix tokens
            intermediates = list(zip(intermediates, prefix))
        return intermediates if intermediates_only else (self.norm(x), intermediates)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last of ``indices`` (and the final norm, the head) for feature extraction;
        returns the absolute indices. The router block must stay."""
        take, last = feature_take_indices(len(self.blocks), indices)
        if last < self.router_block:
            raise ValueError(f"feature blocks end at {last}, before the router block {self.router_block}")
        self.blocks = self.blocks[: last + 1]
        self.feature_info = self.feature_info[: last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0, "")
        return take

    def count_flops(self, input_size: tuple[int, ...], capacity: CapacityLike | None = None) -> int:
        """Multiply-accumulates of one image's forward (see :func:`mone.count_flops`): patch embedding, the encoder
        at the realised token counts (:func:`mone.flops.mone_encoder_flops`), the head."""
        check_input_size(self, input_size, "(C, H, W)")
        N, D = self.num_patches, self.embed_dim
        counts = expert_token_counts(self.resolve_distribution(capacity), N)
        patch_area = self.patch_embed.patch_size[0] * self.patch_embed.patch_size[1]
        embed = patch_embed_flops(N, D, self.in_chans, patch_area)
        return embed + mone_encoder_flops(self, counts, self.num_prefix_tokens) + D * self.num_classes

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> tokens [B, P + N, D]: prefix tokens, patch tokens, position embeddings (timm's
        ``_pos_embed``)."""
        check_images(x, self.in_chans, self.img_size, self.pos_embed.dtype)
        x = self.patch_embed(x)  # [B, N, D]
        if not self.num_prefix_tokens:
            return x + self.pos_embed  # [B, N, D]
        B = x.shape[0]
        prefix = [t.expand(B, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]  # [B, 1 | R, D]
        if self.no_embed_class:
            return torch.cat([*prefix, x + self.pos_embed], dim=1)
        return torch.cat([*prefix, x], dim=1) + self.pos_embed  # [B, P + N, D]


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
