"""What every MoNE model shares: argument checks, the capacity setting, the router and alpha (spec sections 2-4).

A MoNE model (image or video) has one router at its first routed block and one scalar alpha; EPR runs on one
group of tokens at a time (an image, or one temporal index of a clip). :class:`MoneModelMixin` holds the methods
that only depend on those pieces, so each model file keeps just its own layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from .._checks import check_int
from ..capacity import capacity_distribution, is_scalar_capacity, validate_capacity, validate_distribution
from ..routing import Router, RoutingPlan, make_routing_plan

__all__ = ["ALPHA_MAX", "CapacityLike", "MoneModelMixin", "build_registered_model", "validate_vit_args"]

ALPHA_MAX = 0.999  # alpha lives in [0, 1) (spec section 2)

CapacityLike = float | Sequence[float]


def _straight_through_clamp(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Clamp in the forward, identity in the backward: a value pushed out of range can always come back."""
    return x + (x.clamp(low, high) - x).detach()


def _specialised(capacity: float | torch.Tensor) -> float:
    """``capacity`` as a float that ``torch.compile`` treats as a constant (eager: an exact round trip).

    Dynamo traces float arguments symbolically, but the capacity fixes every tensor shape, so each value needs its
    own graph: formatting the number makes Dynamo guard on its exact value, and a new capacity recompiles.
    """
    return float(f"{float(capacity)!r}")


def validate_vit_args(
    img_size: int,
    patch_size: int,
    in_chans: int,
    num_classes: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    num_experts: int,
    mlp_ratio: float = 4.0,
) -> None:
    """Raise ValueError naming the first architecture argument that is out of range."""
    for name, value in (("img_size", img_size), ("patch_size", patch_size), ("in_chans", in_chans),
                        ("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads)):
        check_int(name, value, 1)
    check_int("num_classes", num_classes, 0)
    check_int("num_experts", num_experts, 1)
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not (
        math.isfinite(mlp_ratio) and int(embed_dim * mlp_ratio) >= 1
    ):
        raise ValueError(f"mlp_ratio must be a number > 0 with int(embed_dim * mlp_ratio) >= 1, got {mlp_ratio!r}")
    if img_size % patch_size != 0:
        raise ValueError(f"img_size ({img_size}) must be divisible by patch_size ({patch_size})")
    if embed_dim % num_heads != 0:
        raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
    if embed_dim % 2 ** (num_experts - 1) != 0:
        raise ValueError(
            f"embed_dim ({embed_dim}) must be divisible by 2**(num_experts-1) = {2 ** (num_experts - 1)} "
            f"so every nested expert has an integer width"
        )


class MoneModelMixin:
    """Capacity, routing and alpha for an ``nn.Module`` with nested experts.

    The host module sets ``embed_dim``, ``num_experts``, ``beta``, ``delta``, ``blocks`` (the routed blocks; the
    router reads ``blocks[0].norm1``), ``router`` and ``alpha`` before it calls :meth:`init_weights` and
    :meth:`set_capacity`.
    """

    embed_dim: int
    num_experts: int
    beta: float
    delta: float
    blocks: nn.ModuleList
    router: Router
    alpha: nn.Parameter

    def resolve_distribution(self, capacity: CapacityLike | None = None) -> tuple[float, ...]:
        """Per-expert token fractions for ``capacity`` (a float budget, or a distribution); ``None``: the default."""
        if capacity is None:
            return self.distribution
        if is_scalar_capacity(capacity):
            return capacity_distribution(_specialised(capacity), self.num_experts, beta=self.beta, delta=self.delta)
        distribution = validate_distribution(capacity)
        if len(distribution) != self.num_experts:
            raise ValueError(f"distribution has {len(distribution)} entries, the model has {self.num_experts} experts")
        return distribution

    def set_capacity(self, capacity: CapacityLike) -> None:
        """Set the default budget: an effective capacity in ``[2**-(E-1), 1]`` or a per-expert distribution."""
        if is_scalar_capacity(capacity):
            capacity = validate_capacity(capacity, self.num_experts)
        self.distribution = self.resolve_distribution(capacity)
        self.capacity = capacity

    @property
    def alpha_value(self) -> torch.Tensor:
        """The MLP-scaling coefficient actually used, in ``[0, ALPHA_MAX]``."""
        return _straight_through_clamp(self.alpha, 0.0, ALPHA_MAX)

    @property
    def expert_widths(self) -> tuple[int, ...]:
        """Feature width of each expert, smallest first: ``D / 2**(E-1-i)``."""
        return tuple(self.embed_dim // 2 ** (self.num_experts - 1 - i) for i in range(self.num_experts))

    def init_weights(self) -> None:
        """timm's default ViT init: truncated normal (std 0.02) for linears and position embeddings, zero biases,
        alpha = 0."""
        for name, param in self.named_parameters():
            if name.endswith("pos_embed"):
                nn.init.trunc_normal_(param, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.zeros_(self.alpha)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a fresh ``num_classes``-way linear layer (``0``: no head), on the model's device and
        dtype."""
        self.num_classes = check_int("num_classes", num_classes, 0)
        like = dict(device=self.alpha.device, dtype=self.alpha.dtype)
        self.head = nn.Linear(self.embed_dim, num_classes, **like) if num_classes > 0 else nn.Identity()

    @torch.no_grad()
    def project_alpha_(self) -> None:
        """Project the stored ``alpha`` back into ``[0, ALPHA_MAX]`` (call after each optimiser step)."""
        self.alpha.clamp_(0.0, ALPHA_MAX)

    def route(self, tokens: torch.Tensor, capacity: CapacityLike | None = None) -> RoutingPlan:
        """Router (on the first block's norm1 output) and EPR for tokens [G, N, D], each of the G groups on its own."""
        probs = self.router(self.blocks[0].norm1(tokens))  # [G, N, E]
        return make_routing_plan(probs, self.resolve_distribution(capacity))


def build_registered_model(
    model_cls: type[nn.Module], variant: str, defaults: dict, pretrained: bool, **kwargs
) -> nn.Module:
    """Body of every registered entrypoint: ``model_cls`` with the caller's ``kwargs`` over ``defaults``."""
    if pretrained:
        raise ValueError(
            f"no pretrained MoNE weights are published for {variant}; load a dense timm checkpoint with "
            f"model.load_state_dict(state_dict, strict=False) instead"
        )
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # passed by timm.create_model
        kwargs.pop(key, None)
    return model_cls(**{**defaults, **kwargs})
