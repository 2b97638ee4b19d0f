"""``mone.from_timm(vit)``: a MoNE model with the weights of a timm ``VisionTransformer``.

Nested experts add no parameters to a ViT (docs/method.md), so the conversion copies every weight and adds a fresh
router and ``alpha = 0``: at capacity 1.0 the MoNE model computes the timm model's function (up to float round-off),
and lower capacities run the same weights on nested experts. Class and register tokens are supported: they are never
routed, always run on the largest expert, and EPR's capacities count the patch tokens only.

Only the plain pre-LN ViT converts: a layout whose forward MoNE's blocks do not compute (qk-norm, layer scale, a
pre-norm, other norm or activation layers, attention pooling, dynamic image sizes, ...) is refused with a ValueError
that names the setting, rather than converted into a different function. Dropout, drop-path and patch dropout act in
training only; the MoNE model has none (a warning says so when the timm model has them).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch.nn as nn

from ._contract import default_cfg
from .convert import is_routing_parameter
from .vision_transformer import CapacityLike, MoneVisionTransformer

__all__ = ["from_timm"]

MONE_ARGS = ("beta", "delta", "fused_attn", "router", "router_block")  # what from_timm's **kwargs may set
DATA_CFG = ("interpolation", "crop_pct", "crop_mode", "mean", "std")  # preprocessing that belongs to the weights


def _check(condition: bool, reason: str) -> None:
    if not condition:
        raise ValueError(f"from_timm cannot convert this VisionTransformer: {reason}")


def _is_identity(module: nn.Module | None) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _check_layer_norm(norm: nn.Module, where: str, dim: int) -> None:
    from timm.layers import LayerNorm

    _check(type(norm) in (nn.LayerNorm, LayerNorm), f"{where} is {type(norm).__name__}, MoNE needs a LayerNorm")
    _check(
        norm.normalized_shape == (dim,) and norm.eps == 1e-6 and norm.weight is not None and norm.bias is not None,
        f"{where} must be LayerNorm({dim}, eps=1e-6) with weight and bias (got eps={norm.eps})",
    )


def _check_block(block: nn.Module, i: int, dim: int, num_heads: int, hidden: int, qkv_bias: bool) -> None:
    """One timm ``Block`` must be what :class:`~mone.layers.NestedBlock` computes at full width."""
    from timm.layers import GELU, Attention, Mlp
    from timm.models.vision_transformer import Block

    name = f"blocks.{i}"
    _check(type(block) is Block, f"{name} is a {type(block).__name__}, not timm's pre-LN Block")
    _check(_is_identity(block.ls1) and _is_identity(block.ls2), f"{name} has layer scale (init_values)")
    _check_layer_norm(block.norm1, f"{name}.norm1", dim)
    _check_layer_norm(block.norm2, f"{name}.norm2", dim)
    attn, mlp = block.attn, block.mlp
    _check(type(attn) is Attention, f"{name}.attn is a {type(attn).__name__}, not timm's Attention")
    _check(_is_identity(attn.q_norm) and _is_identity(attn.k_norm), f"{name}.attn has qk_norm")
    _check(_is_identity(getattr(attn, "norm", None)), f"{name}.attn has scale_attn_norm")
    _check(getattr(attn, "gate", None) is None, f"{name}.attn is gated")
    _check(attn.num_heads == num_heads and attn.head_dim * num_heads == dim, f"{name}.attn has another head layout")
    _check(attn.scale == attn.head_dim**-0.5, f"{name}.attn has a non-default scale")
    _check((attn.qkv.bias is not None) == qkv_bias, f"{name}.attn.qkv has another qkv_bias than blocks.0")
    _check(attn.proj.bias is not None and attn.proj.out_features == dim, f"{name}.attn.proj has no bias")
    _check(type(mlp) is Mlp, f"{name}.mlp is a {type(mlp).__name__}, not timm's Mlp")
    gelu = type(mlp.act) is GELU or (type(mlp.act) is nn.GELU and mlp.act.approximate == "none")
    _check(gelu, f"{name}.mlp.act is {mlp.act!r}, MoNE's MLP uses the exact GELU")
    _check(_is_identity(mlp.norm), f"{name}.mlp has a norm (scale_mlp_norm)")
    _check(isinstance(mlp.fc1, nn.Linear) and isinstance(mlp.fc2, nn.Linear), f"{name}.mlp is convolutional")
    _check(mlp.fc1.bias is not None and mlp.fc2.bias is not None, f"{name}.mlp has no biases")
    _check(mlp.fc1.out_features == hidden and mlp.fc2.out_features == dim, f"{name}.mlp has another hidden width")


def _architecture(vit: nn.Module) -> dict[str, Any]:
    """The :class:`MoneVisionTransformer` arguments that rebuild ``vit``; ValueError naming what does not fit."""
    from timm.layers import PatchEmbed
    from timm.models.vision_transformer import VisionTransformer

    _check(type(vit) is VisionTransformer, f"expected timm's VisionTransformer, got {type(vit).__name__}")
    embed = vit.patch_embed
    _check(type(embed) is PatchEmbed, f"patch_embed is a {type(embed).__name__}, not timm's PatchEmbed")
    (height, width), (patch_h, patch_w) = embed.img_size, embed.patch_size
    _check(height == width and patch_h == patch_w, f"img_size {embed.img_size} and patch_size must be square")
    _check(not vit.dynamic_img_size and embed.strict_img_size and not embed.dynamic_img_pad,
           "dynamic_img_size / dynamic_img_pad: MoNE fixes the number of tokens per image")
    _check(embed.flatten and _is_identity(embed.norm), "patch_embed has a norm layer or no flatten")
    _check(embed.proj.bias is not None, "patch_embed.proj has no bias (pre_norm)")
    _check(_is_identity(vit.norm_pre), "pre_norm=True (a norm before the blocks)")
    _check(vit.pos_embed is not None, "pos_embed='none': MoNE needs learned position embeddings")
    _check(vit.attn_pool is None, f"global_pool={vit.global_pool!r} (attention pooling)")
    _check(vit.global_pool in ("", "avg", "token"), f"global_pool={vit.global_pool!r}: MoNE pools by 'avg' or 'token'")
    _check(not vit.pool_include_prefix, "pool_include_prefix=True")
    dim = vit.embed_dim
    avg = vit.global_pool == "avg"
    if avg:  # fc_norm after the pool, no final norm on the tokens
        _check(_is_identity(vit.norm) and not _is_identity(vit.fc_norm),
               "fc_norm / final_norm mismatch: with global_pool='avg' MoNE has fc_norm and no final norm")
        _check_layer_norm(vit.fc_norm, "fc_norm", dim)
    else:  # a final norm on the tokens, no fc_norm
        _check(_is_identity(vit.fc_norm) and not _is_identity(vit.norm),
               f"fc_norm / final_norm mismatch: with global_pool={vit.global_pool!r} MoNE has a final norm, no fc_norm")
        _check_layer_norm(vit.norm, "norm", dim)
    head = vit.head
    _check(_is_identity(head) or (type(head) is nn.Linear and head.bias is not None), "head is not a Linear layer")
    first = vit.blocks[0]
    num_heads, hidden = first.attn.num_heads, first.mlp.fc1.out_features
    qkv_bias = first.attn.qkv.bias is not None
    for i, block in enumerate(vit.blocks):
        _check_block(block, i, dim, num_heads, hidden, qkv_bias)
    mlp_ratio = hidden / dim
    _check(int(dim * mlp_ratio) == hidden, f"MLP hidden width {hidden} is not int(embed_dim * mlp_ratio)")
    return dict(
        img_size=height, patch_size=patch_h, in_chans=embed.proj.in_channels, num_classes=vit.num_classes,
        embed_dim=dim, depth=len(vit.blocks), num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
        class_token=vit.has_class_token, reg_tokens=vit.num_reg_tokens, global_pool=vit.global_pool,
        no_embed_class=vit.no_embed_class,
    )


def _warn_about_dropout(vit: nn.Module) -> None:
    from timm.layers import DropPath, PatchDropout

    rates = [m.p for m in vit.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    if rates or any(isinstance(m, (DropPath, PatchDropout)) for m in vit.modules()):
        warnings.warn(
            "from_timm: the timm model uses dropout, drop-path or patch dropout; the MoNE model has none (outputs "
            "in eval mode are the same, training is not)",
            stacklevel=3,
        )


def from_timm(
    vit: nn.Module, num_experts: int = 4, capacity: CapacityLike = 1.0, **kwargs: Any
) -> MoneVisionTransformer:
    """A MoNE ViT with the weights of the timm ``VisionTransformer`` ``vit``, on its device and dtype.

    The router is freshly initialised and ``alpha`` is 0, so at capacity 1.0 the result computes ``vit``'s function
    (test: 1e-5 in float32, 1e-12 in float64). Class and register tokens run on the largest expert; EPR routes the
    patch tokens. The model's ``pretrained_cfg`` keeps ``vit``'s preprocessing (mean, std, crop, interpolation).

    Args:
        vit: a ``timm.models.VisionTransformer`` (e.g. from ``timm.create_model("vit_small_patch16_224")``).
        num_experts: nested experts ``E``; ``embed_dim`` must be divisible by ``2**(E-1)``.
        capacity: the default capacity of the MoNE model.
        kwargs: MoNE settings: ``beta``, ``delta``, ``fused_attn``, ``router``, ``router_block``.

    Raises:
        ValueError: for a model MoNE cannot compute (naming the setting), or an unknown keyword.
    """
    unknown = sorted(set(kwargs) - set(MONE_ARGS))
    if unknown:
        raise ValueError(f"from_timm takes the MoNE settings {', '.join(MONE_ARGS)}; got {', '.join(unknown)}")
    args = _architecture(vit)
    _warn_about_dropout(vit)
    param = next(vit.parameters())
    model = MoneVisionTransformer(**args, num_experts=num_experts, capacity=capacity, **kwargs)
    missing, unexpected = model.load_state_dict(vit.state_dict(), strict=False)
    assert all(is_routing_parameter(k) for k in missing) and not unexpected, (missing, unexpected)
    cfg = getattr(vit, "pretrained_cfg", None) or {}
    model.pretrained_cfg = model.default_cfg = {
        **default_cfg("MoneVisionTransformer", model.default_input_size, model.num_classes),
        **{key: cfg[key] for key in DATA_CFG if key in cfg},
    }
    return model.to(device=param.device, dtype=param.dtype).train(vit.training)
