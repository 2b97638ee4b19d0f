"""Mixture-of-Depths ViT (Raposo et al. 2024), the baseline the MoNE paper compares against (docs/method.md).

The same ViT as :class:`~mone.models.vision_transformer.MoneVisionTransformer` (GAP, no class token, timm's parameter
names, blocks run at full width), where some blocks process only the top-k tokens of each image and every other
token skips them (identity). ``k = floor(capacity * N)``; ties go to the lower token index, as in EPR.

* MoD (default): blocks 1, 3, 5, ... are routed (every other block, the first one dense, as in the MoD paper and
  the MoNE paper's "12.5% of tokens in every other layer"); block 0, 2, 4, ... are dense. Each routed block ``i`` has
  its own router ``routers[str(i)]``, a D -> 1 linear on the block's input (the residual stream, as in MoD). Its
  selected tokens run the whole block, attention only among themselves, and the block's update is weighted by
  ``sigmoid(score)``: ``x_i <- x_i + sigmoid(r_i) * (SA + MLP update)``. The weight is the router's gradient path;
  a sigmoid keeps it in (0, 1) (0.5 at init) where MoD's raw score would start every routed block switched off.
* MoD-greedy (``greedy=True``, the MoNE paper's Table 2 allocation "budget on the largest expert, the other tokens
  skip the block"): MoNE with two experts, "skip" (width 0) and the full width. One ``router`` (D -> 1 on block 0's
  norm1 output, as MoNE's router) is run once; its probability ``r = sigmoid(score)`` is a two-way softmax (skip,
  full). The top-k tokens run every block, attention among themselves, with MoNE's update
  ``x_out = z + (alpha * r + 1) * MLP`` and its learnable ``alpha`` in [0, 1); the others keep their embedding.
  A skipped token has no width, so it has no keys or values to attend to.

FLOPs: a routed block costs its router (``N D``) plus a dense block over ``k`` tokens (``12 k D^2 + 2 k^2 D``);
see :func:`mone.count_flops`. :meth:`MoDVisionTransformer.realised_capacity` gives the fraction of the dense
model's linear-layer compute, the MoNE paper's effective capacity, for accuracy-vs-compute plots.

Tokens stay in input order through every block, so ``forward_intermediates`` and timm's ``features_only`` work as
for a ViT; ``capacity`` may also hold one token fraction per image (grouped as for MoNE, see
:mod:`mone.models._per_sample`).
"""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn as nn

from .._checks import check_bool
from ..flops import check_input_size, dense_block_flops, patch_embed_flops
from ..layers import FUSED_ATTN, GroupLayout, NestedBlock, PatchEmbed, dense_block_forward, run_block
from ._base import AlphaMixin, check_images, init_vit_weights, per_sample_capacity, validate_vit_args
from ._contract import TimmContractMixin, build_registered_model, feature_take_indices, records_init_args
from ._per_sample import group_by_capacity
from ._registry import register_model

# torch.fx leaves (docs/api.md, "torch.fx"): shape checks, and blocks whose token selection sets Python shapes
torch.fx.wrap("check_images")
torch.fx.wrap("dense_block_forward")
torch.fx.wrap("selected_tokens")
torch.fx.wrap("mod_block_forward")
torch.fx.wrap("greedy_blocks_forward")

__all__ = ["MoDVisionTransformer", "top_k_tokens"]


def top_k_tokens(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [B, k] of the ``k`` highest scores of each row of ``scores`` [B, N]; ties go to the lower index."""
    return torch.sort(scores.detach(), dim=1, descending=True, stable=True).indices[:, :k]


@records_init_args
class MoDVisionTransformer(AlphaMixin, TimmContractMixin, nn.Module):
    """Vision Transformer with Mixture-of-Depths routing; ``greedy`` gives the MoNE paper's MoD-greedy allocation.

    Args:
        img_size: input height and width (square images).
        patch_size: patch height and width; must divide ``img_size``.
        in_chans: input channels.
        num_classes: classifier outputs (0 for no head).
        embed_dim: token width ``D``; divisible by ``num_heads``.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``D``.
        qkv_bias: bias on the qkv projection.
        capacity: default fraction of the tokens a routed block processes, in ``(0, 1]`` (at least one token).
        greedy: MoD-greedy: one router at block 0 and every block routed (see the module docstring).
        fused_attn: the attention kernel (:class:`~mone.layers.NestedAttention`; default ``FUSED_ATTN``).
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
        capacity: float = 0.125,
        greedy: bool = False,
        fused_attn: bool | None = FUSED_ATTN,
    ) -> None:
        super().__init__()
        validate_vit_args(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, 1)
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.embed_dim = self.num_features = self.head_hidden_size = embed_dim
        self.greedy = check_bool("greedy", greedy)
        self.routed_blocks = tuple(range(depth)) if self.greedy else tuple(range(1, depth, 2))
        self.global_pool = "avg"

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.num_patches = self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
        self.blocks = nn.ModuleList(
            [NestedBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, fused_attn) for _ in range(depth)]
        )
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if self.greedy:
            self.router = nn.Linear(embed_dim, 1)
            self.alpha = nn.Parameter(torch.zeros(()))
        else:
            self.routers = nn.ModuleDict({str(i): nn.Linear(embed_dim, 1) for i in self.routed_blocks})
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size) for i in range(depth)]
        init_vit_weights(self)
        self.set_capacity(capacity)

    @property
    def default_input_size(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input sample."""
        return (self.in_chans, self.img_size, self.img_size)

    global_pools = ("", "avg")

    def resolve_capacity(self, capacity: float | None = None) -> float:
        """``capacity`` checked (a fraction in ``(0, 1]`` that keeps at least one token); ``None``: the default."""
        return resolve_capacity(capacity, self.num_patches, getattr(self, "capacity", None))

    def capacity_groups(self, capacity: object, batch_size: int) -> list[tuple[float, list[int]]] | None:
        """Per-sample token fractions grouped by value, or ``None`` for one capacity (see :mod:`._per_sample`)."""
        return group_by_capacity(capacity, batch_size, self.resolve_capacity)

    def set_capacity(self, capacity: float) -> None:
        """Set the default fraction of tokens that a routed block processes."""
        self.capacity = self.resolve_capacity(capacity)

    def num_selected(self, capacity: float | None = None) -> int:
        """Tokens per image that a routed block processes: ``floor(capacity * N)``."""
        return selected_tokens(capacity, self.num_patches, self.capacity)

    def realised_capacity(self, capacity: float | None = None) -> float:
        """Fraction of the dense model's block linear-layer compute spent at ``capacity`` (floored token counts)."""
        depth, routed = len(self.blocks), len(self.routed_blocks)
        return ((depth - routed) + routed * self.num_selected(capacity) / self.num_patches) / depth

    def count_flops(self, input_size: tuple[int, ...], capacity: float | None = None) -> int:
        """Multiply-accumulates of one image's forward (see :func:`mone.count_flops`): dense blocks over all ``N``
        tokens; a routed block spends its router (``N D``, a D -> 1 linear on every token) and a dense block over its
        ``k`` selected tokens. Greedy: one router, every block on ``k`` tokens."""
        check_input_size(self, input_size, "(C, H, W)")
        N, D = self.num_patches, self.embed_dim
        k = self.num_selected(capacity)
        mlp_hidden = self.blocks[0].mlp.fc1.out_features
        routed, dense = len(self.routed_blocks), len(self.blocks) - len(self.routed_blocks)
        routers = 1 if self.greedy else routed
        blocks = routed * dense_block_flops(k, D, mlp_hidden) + dense * dense_block_flops(N, D, mlp_hidden)
        patch_area = self.patch_embed.patch_size[0] * self.patch_embed.patch_size[1]
        return patch_embed_flops(N, D, self.in_chans, patch_area) + routers * N * D + blocks + D * self.num_classes

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise decay: embeddings, one group per block with its router (MoD-greedy's
        one router with block 0), then alpha."""
        return dict(
            stem=r"^pos_embed|^patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^routers\.(\d+)", None), (r"^router\.", (0,)),
                    (r"^alpha$", (99999,))],
        )

    # -- forward --------------------------------------------------------------------------------------------

    @per_sample_capacity
    def forward_features(self, x: torch.Tensor, capacity: float | None = None) -> torch.Tensor:
        """Images [B, C, H, W] -> tokens [B, N, D] in input order; ``capacity`` may hold one fraction per image."""
        x = self._embed(x)  # [B, N, D]
        k = selected_tokens(capacity, self.num_patches, self.capacity)  # tokens a routed block processes per image
        return self._forward_blocks(x, k)[0]  # [B, N, D]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens [B, N, D] -> logits [B, num_classes] (global average pool, LayerNorm, linear)."""
        x = self.fc_norm(x.mean(dim=1) if self.global_pool == "avg" else x)
        return x if pre_logits else self.head(x)

    @per_sample_capacity
    def forward(self, x: torch.Tensor, capacity: float | None = None) -> torch.Tensor:
        """Images [B, C, H, W] -> logits [B, num_classes] at ``capacity`` (default ``self.capacity``; one per image
        with a list, array or tensor of B fractions)."""
        return self.forward_head(self.forward_features(x, capacity))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        capacity: float | None = None,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's ``forward_intermediates``: the tokens after the blocks named by ``indices`` (``None`` all, ``n``
        the last n), as [B, D, H', W'] grids (``"NCHW"``) or [B, N, D] (``"NLC"``). This model has no final norm
        on the tokens (``fc_norm`` follows the pool), so ``norm`` changes nothing, as for timm's GAP ViTs."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, _ = feature_take_indices(len(self.blocks), indices)
        B = x.shape[0]
        x, intermediates = self._forward_blocks(self._embed(x), self.num_selected(capacity), take)
        if output_fmt == "NCHW":
            H, W = self.patch_embed.grid_size
            intermediates = [y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last of ``indices`` (and the head) for feature extraction; returns the absolute
        indices."""
        take, last = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: last + 1]
        self.feature_info = self.feature_info[: last + 1]
        self.routed_blocks = tuple(i for i in self.routed_blocks if i <= last)
        if not self.greedy:
            self.routers = nn.ModuleDict({str(i): self.routers[str(i)] for i in self.routed_blocks})
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0, "")
        return take

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> tokens [B, N, D] (patch and position embeddings)."""
        check_images(x, self.in_chans, self.img_size, self.pos_embed.dtype)
        return self.patch_embed(x) + self.pos_embed  # [B, N, D]

    def _forward_blocks(
        self, x: torch.Tensor, k: int, take: list[int] | tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Every block on tokens [B, N, D] with ``k`` selected tokens per routed block; returns the tokens and those
        after the blocks in ``take`` [B, N, D], all in input order."""
        checkpointing = self.grad_checkpointing
        if self.greedy:
            return greedy_blocks_forward(self.blocks, self.router, self.alpha_value, x, k, checkpointing, take)
        intermediates = []
        for i, block in enumerate(self.blocks):
            if str(i) in self.routers:  # the top-k tokens run the block, the others skip it
                x = mod_block_forward(block, self.routers[str(i)], x, k, checkpointing)
            else:
                x = dense_block_forward(block, x, checkpointing)
            if i in take:
                intermediates.append(x)
        return x, intermediates


def resolve_capacity(capacity: float | None, num_patches: int, default: float | None) -> float:
    """``capacity`` checked: a fraction in ``(0, 1]`` that keeps at least one of ``num_patches`` tokens; ``None``:
    ``default``."""
    if capacity is None:
        return default
    try:
        value = float(capacity)
    except (TypeError, ValueError):
        raise ValueError(f"capacity must be a number in (0, 1], got {capacity!r}") from None
    if not (math.isfinite(value) and 0 < value <= 1) or math.floor(value * num_patches) < 1:
        raise ValueError(
            f"capacity must be a finite number in [1/N, 1] = [{1 / num_patches:g}, 1] (N = {num_patches} tokens), "
            f"got {capacity!r}"
        )
    return value


def selected_tokens(capacity: float | None, num_patches: int, default: float) -> int:
    """Tokens per image that a routed block processes at ``capacity`` (``None``: ``default``): ``floor(c * N)``."""
    return math.floor(resolve_capacity(capacity, num_patches, default) * num_patches)


def mod_block_forward(
    block: NestedBlock, router: nn.Linear, x: torch.Tensor, k: int, grad_checkpointing: bool = False
) -> torch.Tensor:
    """A MoD block on tokens [B, N, D]: the top-k tokens by ``router`` add sigmoid(score) x the block's update, the
    others skip it."""
    return run_block(_routed_block, block, router, x, k, grad_checkpointing=grad_checkpointing)


def _routed_block(block: NestedBlock, router: nn.Linear, x: torch.Tensor, k: int) -> torch.Tensor:
    B, N, D = x.shape
    scores = router(x).squeeze(-1)  # [B, N]
    index = top_k_tokens(scores, k)  # [B, k]
    rows_index = index.unsqueeze(-1).expand(B, k, D)
    rows = x.gather(1, rows_index).reshape(B * k, D)  # selected tokens, rows b * k + s
    layout = GroupLayout.dense(B, k, D)
    attn_update = block.attn(block.norm1(rows), layout)  # attention among the selected tokens
    z = rows + attn_update
    mlp_update = block.mlp(block.norm2(z), layout)
    weight = scores.gather(1, index).sigmoid().reshape(B * k, 1)
    update = weight * (attn_update + mlp_update)  # [B * k, D]
    return x.scatter_add(1, rows_index, update.view(B, k, D))  # skipped tokens unchanged


def greedy_blocks_forward(
    blocks: nn.ModuleList,
    router: nn.Linear,
    alpha: torch.Tensor,
    x: torch.Tensor,
    k: int,
    grad_checkpointing: bool = False,
    take: list[int] | tuple[int, ...] = (),
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """MoD-greedy on tokens [B, N, D]: the router's top-k tokens run every block with MLP scale ``alpha * r + 1``,
    the others skip them all. Returns the tokens [B, N, D] and those after the blocks in ``take``."""
    B, N, D = x.shape
    probs = router(blocks[0].norm1(x)).squeeze(-1).sigmoid()  # [B, N]: P(full width) vs skip
    index = top_k_tokens(probs, k)  # [B, k]
    rows_index = index.unsqueeze(-1).expand(B, k, D)
    rows = x.gather(1, rows_index).reshape(B * k, D)  # one full-width group, rows b * k + s
    layout = GroupLayout.dense(B, k, D)
    scale = (alpha * probs.gather(1, index) + 1).reshape(B * k, 1)  # alpha * r + 1
    intermediates = []
    for i, block in enumerate(blocks):
        rows = run_block(block, rows, layout, scale, grad_checkpointing=grad_checkpointing)
        if i in take:
            intermediates.append(x.scatter(1, rows_index, rows.view(B, k, D)))
    return x.scatter(1, rows_index, rows.view(B, k, D)), intermediates  # [B, N, D]


def _create(variant: str, defaults: dict, pretrained: bool = False, **kwargs) -> MoDVisionTransformer:
    return build_registered_model(MoDVisionTransformer, variant, defaults, pretrained, **kwargs)


@register_model
def mod_vit_small_patch16_224(pretrained: bool = False, **kwargs) -> MoDVisionTransformer:
    """Mixture-of-Depths ViT-S/16 (D=384, 12 layers, 6 heads; blocks 1, 3, ..., 11 routed at capacity 0.125)."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create("mod_vit_small_patch16_224", model_args, pretrained, **kwargs)


@register_model
def mod_vit_base_patch16_224(pretrained: bool = False, **kwargs) -> MoDVisionTransformer:
    """Mixture-of-Depths ViT-B/16 (D=768, 12 layers, 12 heads; blocks 1, 3, ..., 11 routed at capacity 0.125)."""
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create("mod_vit_base_patch16_224", model_args, pretrained, **kwargs)


@register_model
def mod_vit_test(pretrained: bool = False, **kwargs) -> MoDVisionTransformer:
    """Tiny model for tests: 32 px, patch 8, D=64, 2 layers (block 1 routed), 2 heads, 10 classes, capacity 0.25."""
    model_args = dict(img_size=32, patch_size=8, num_classes=10, embed_dim=64, depth=2, num_heads=2, capacity=0.25)
    return _create("mod_vit_test", model_args, pretrained, **kwargs)
