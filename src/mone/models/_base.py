"""What every MoNE model shares: argument checks, the capacity setting, the router and alpha (docs/method.md).

A MoNE model (image or video) has one router, at its router block (block 0 unless ``router_block`` says
otherwise), and one scalar alpha; EPR runs on one group of tokens at a time (an image, or one temporal index of a
clip). Blocks before the router block are dense; the routing is reused by every later block. :class:`MoneModelMixin`
holds the methods that only depend on those pieces, so each model file keeps just its own layout.

Routers (docs/method.md, :meth:`MoneModelMixin.router_probs`): ``"learned"`` (the paper's linear router, each expert
ranking tokens by its own probability), ``"ordinal"`` (the same router and parameters, every expert ranking tokens by
one score, the expected expert index), ``"random"`` (the paper's random-router baseline: random probabilities with the
same EPR capacities), ``"attention"`` (no parameters: tokens ranked by the full-width attention they receive in the
router block, as EViT) and ``"distinctiveness"`` (no parameters: tokens ranked by how unlike the other tokens of their
image they are, ToMe's redundancy read as importance).
How a learned router is trained is the trainer's choice (``router_gradient``, ``router_target`` in
:class:`mone.train.TrainConfig`); ``router_gradient`` is also a model attribute because the straight-through
gradient lives in the forward (the forward's values are the same either way).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.fx
import torch.nn as nn

from .._checks import check_input_tensor, check_int
from ..capacity import (
    capacity_distribution,
    is_scalar_capacity,
    realised_capacity,
    validate_capacity,
    validate_distribution,
)
from ..importance import attention_received, distinctiveness, importance_probs
from ..layers import NestedBlock, SortedTokens, dense_block_forward, run_block
from ..routing import Router, RoutingPlan, routing_plan
from ._contract import TimmContractMixin
from ._per_sample import group_by_capacity, run_by_group

__all__ = [
    "ALPHA_MAX",
    "AlphaMixin",
    "CapacityLike",
    "MoneModelMixin",
    "RoutingSettings",
    "LEARNED_ROUTERS",
    "ROUTER_GRADIENTS",
    "ROUTER_MODES",
    "check_images",
    "init_vit_weights",
    "per_sample_capacity",
    "route_tokens",
    "score_tokens",
    "straight_through_clamp",
    "validate_vit_args",
]

ALPHA_MAX = 0.999  # alpha lives in [0, 1) (docs/method.md)
ROUTER_MODES = ("learned", "ordinal", "random", "attention", "distinctiveness")
LEARNED_ROUTERS = ("learned", "ordinal")  # the modes that run (and train) the router's parameters
PARAMETER_FREE_ROUTERS = ("attention", "distinctiveness")  # the modes that rank tokens by mone.importance
ROUTER_GRADIENTS = ("paper", "straight_through")  # see mone.layers.block.mlp_scale

CapacityLike = float | Sequence[float]
ForwardT = TypeVar("ForwardT", bound=Callable[..., Any])

# torch.fx leaves (docs/api.md, "torch.fx"): routing depends on Python values (EPR's token counts, the expert groups),
# so symbolic tracing records these calls as graph nodes instead of tracing into them. The nodes take the model's
# submodules as arguments and run the same code when the traced graph runs.
torch.fx.wrap("route_tokens")
torch.fx.wrap("dense_block_forward")
torch.fx.wrap("run_block")
torch.fx.wrap("SortedTokens")


def straight_through_clamp(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
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


def init_vit_weights(model: nn.Module) -> None:
    """timm's default ViT init: truncated normal (std 0.02) for linears and position embeddings, zero biases, and
    normal (std 1e-6) for class and register tokens."""
    for name, param in model.named_parameters():
        if name.endswith("pos_embed"):
            nn.init.trunc_normal_(param, std=0.02)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for name in ("cls_token", "reg_token"):  # after the rest: models without them draw the same numbers as before
        if getattr(model, name, None) is not None:
            nn.init.normal_(getattr(model, name), std=1e-6)


def check_images(x: torch.Tensor, in_chans: int, img_size: int, model_dtype: torch.dtype) -> None:
    """Raise ValueError unless ``x`` is a non-empty batch of images [B, in_chans, img_size, img_size] that a model
    with parameters of ``model_dtype`` can take."""
    if x.dim() != 4:
        raise ValueError(f"expected images [B, C, H, W], got a tensor of shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"expected {in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if tuple(x.shape[2:]) != (img_size, img_size):
        raise ValueError(f"expected {img_size}x{img_size} images, got {x.shape[2]}x{x.shape[3]}")
    check_input_tensor(x, model_dtype, "images")


def resolve_distribution(
    capacity: CapacityLike | None, num_experts: int, beta: float, delta: float, default: tuple[float, ...] | None
) -> tuple[float, ...]:
    """Per-expert token fractions for ``capacity`` (a float budget, or a distribution); ``None``: ``default``."""
    if capacity is None:
        return default
    if is_scalar_capacity(capacity):
        return capacity_distribution(_specialised(capacity), num_experts, beta=beta, delta=delta)
    distribution = validate_distribution(capacity)
    if len(distribution) != num_experts:
        raise ValueError(f"distribution has {len(distribution)} entries, the model has {num_experts} experts")
    return distribution


@dataclass(frozen=True)
class RoutingSettings:
    """What routing reads of a MoNE model besides its modules (:meth:`MoneModelMixin.routing_settings`)."""

    router_mode: str
    num_experts: int
    num_prefix_tokens: int
    beta: float
    delta: float
    distribution: tuple[float, ...]  # the default budget's


def score_tokens(
    tokens: torch.Tensor, block: NestedBlock, router: Router, router_mode: str, num_experts: int
) -> torch.Tensor:
    """Router probabilities [G, N, E] of the tokens [G, N, D] entering ``block``, the router block (see
    :meth:`MoneModelMixin.router_probs`)."""
    if router_mode == "random":
        noise = torch.randn(*tokens.shape[:-1], num_experts, dtype=tokens.dtype, device=tokens.device)
        return noise.softmax(dim=-1)  # [G, N, E]
    if router_mode in PARAMETER_FREE_ROUTERS:
        with torch.no_grad():
            x = block.norm1(tokens)  # [G, N, D]
            importance = attention_received(block.attn, x) if router_mode == "attention" else distinctiveness(x)
        return importance_probs(importance.float(), num_experts)  # [G, N, E]
    probs = router(block.norm1(tokens))  # [G, N, E]
    if router_mode == "ordinal":
        return ordinal_scores(probs)
    return probs


def ordinal_scores(probs: torch.Tensor) -> torch.Tensor:
    """Router probabilities [G, N, E] -> the expected expert index over ``E - 1`` (in [0, 1]) in every column [G, N, E].

    EPR with these scores ranks the tokens of a group the same way for every expert, so at any budget the larger
    experts take the tokens the router rates most important. With the paper's per-expert columns a token that is
    likely to belong on a middle expert can outrank a more important one there, and the ranking changes with the
    budget. The MLP scale ``alpha * r + 1`` then uses the score.
    """
    E = probs.shape[-1]
    experts = torch.arange(E, dtype=probs.dtype, device=probs.device)
    score = (probs * experts).sum(dim=-1, keepdim=True) / max(E - 1, 1)  # [G, N, 1]
    return score.expand(*probs.shape)


def route_tokens(
    tokens: torch.Tensor, capacity: CapacityLike | None, block: NestedBlock, router: Router, settings: RoutingSettings
) -> RoutingPlan:
    """Router and EPR for the tokens [G, P + N, D] entering ``block`` (see :meth:`MoneModelMixin.route`)."""
    P = settings.num_prefix_tokens
    probs = score_tokens(tokens[:, P:] if P else tokens, block, router, settings.router_mode, settings.num_experts)
    distribution = resolve_distribution(capacity, settings.num_experts, settings.beta, settings.delta,
                                        settings.distribution)
    return routing_plan(probs, distribution, P)  # probs [G, N, E]


def per_sample_capacity(forward: ForwardT) -> ForwardT:
    """Decorator for a model's ``forward`` and ``forward_features``: a ``capacity`` holding one budget per sample
    (:mod:`mone.models._per_sample`) runs ``forward`` once per budget on that budget's samples and puts the outputs
    back in input order; one budget for the whole batch calls ``forward`` directly.

    The model provides ``capacity_groups(capacity, batch_size)``. ``return_plan=True`` needs one budget.
    """

    @functools.wraps(forward)
    def wrapper(self: nn.Module, x: torch.Tensor, capacity: Any = None, **kwargs: Any) -> Any:
        groups = self.capacity_groups(capacity, x.shape[0])
        if groups is None:
            return forward(self, x, capacity, **kwargs)
        if kwargs.get("return_plan"):
            raise ValueError("return_plan needs one capacity for the whole batch: one routing plan per budget")
        return run_by_group(lambda samples, budget: forward(self, samples, budget, **kwargs), x, groups)

    return wrapper  # type: ignore[return-value]


class AlphaMixin:
    """The MLP-scaling coefficient ``alpha`` of a model that has one (MoNE, MoD-greedy): a scalar parameter whose
    value used in the forward is clamped to ``[0, ALPHA_MAX]`` (docs/method.md)."""

    alpha: nn.Parameter

    @property
    def alpha_value(self) -> torch.Tensor:
        """The MLP-scaling coefficient actually used, in ``[0, ALPHA_MAX]``."""
        return straight_through_clamp(self.alpha, 0.0, ALPHA_MAX)

    @torch.no_grad()
    def project_alpha_(self) -> None:
        """Project the stored ``alpha`` back into ``[0, ALPHA_MAX]`` (call after each optimiser step; a no-op for a
        model without alpha)."""
        if getattr(self, "alpha", None) is not None:
            self.alpha.clamp_(0.0, ALPHA_MAX)


class MoneModelMixin(AlphaMixin, TimmContractMixin):
    """Capacity, routing and alpha for an ``nn.Module`` with nested experts.

    Constructor arguments every MoNE model takes (written here once; the models' docstrings point here):

    * ``num_experts``: nested experts ``E`` (1 gives a dense model).
    * ``capacity``: the default budget: an effective capacity in ``[2**-(E-1), 1]`` or a per-expert distribution.
    * ``beta``, ``delta``: parameters of the capacity-distribution objective (docs/method.md).
    * ``router``: ``"learned"`` (MoNE), ``"ordinal"`` (the learned router ranking tokens by one score),
      ``"random"`` (the random-router baseline), ``"attention"`` or ``"distinctiveness"`` (see :meth:`router_probs`).
    * ``router_block``: the block whose input is routed; blocks before it run every token at full width.

    The host module sets ``embed_dim``, ``num_experts``, ``beta``, ``delta``, ``blocks`` (the encoder whose blocks
    from ``router_block`` on are routed; the router reads ``blocks[router_block].norm1``), ``router`` and ``alpha``
    before it calls :meth:`init_weights`, :meth:`init_routing` and :meth:`set_capacity`. Tokens entering the encoder
    may start with ``num_prefix_tokens`` unrouted tokens (class, registers): they always run on the largest expert.
    """

    embed_dim: int
    num_experts: int
    beta: float
    delta: float
    blocks: nn.ModuleList
    router: Router
    alpha: nn.Parameter
    router_block: int
    router_mode: str
    router_gradient: str = "paper"
    num_prefix_tokens: int = 0

    def resolve_distribution(self, capacity: CapacityLike | None = None) -> tuple[float, ...]:
        """Per-expert token fractions for ``capacity`` (a float budget, or a distribution); ``None``: the default."""
        default = getattr(self, "distribution", None)
        return resolve_distribution(capacity, self.num_experts, self.beta, self.delta, default)

    def capacity_groups(self, capacity: object, batch_size: int) -> list[tuple[tuple[float, ...], list[int]]] | None:
        """Per-sample capacities grouped by distribution, or ``None`` for one capacity (see :mod:`._per_sample`)."""
        return group_by_capacity(capacity, batch_size, self.resolve_distribution)

    def set_capacity(self, capacity: CapacityLike) -> None:
        """Set the default budget: an effective capacity in ``[2**-(E-1), 1]`` or a per-expert distribution."""
        if is_scalar_capacity(capacity):
            capacity = validate_capacity(capacity, self.num_experts)
        self.distribution = self.resolve_distribution(capacity)
        self.capacity = capacity

    @property
    def expert_widths(self) -> tuple[int, ...]:
        """Feature width of each expert, smallest first: ``D / 2**(E-1-i)``."""
        return tuple(self.embed_dim // 2 ** (self.num_experts - 1 - i) for i in range(self.num_experts))

    def init_weights(self) -> None:
        """timm's default ViT init (:func:`init_vit_weights`) and alpha = 0."""
        init_vit_weights(self)
        nn.init.zeros_(self.alpha)

    def init_routing(self, router: str, router_block: int) -> None:
        """Check and set the router mode and the block whose input is routed (blocks before it are dense)."""
        depth = len(self.blocks)
        if isinstance(router_block, bool) or not isinstance(router_block, int) or not 0 <= router_block < depth:
            raise ValueError(
                f"router_block must be an integer in [0, {depth - 1}] for depth {depth}, got {router_block!r}"
            )
        self.router_block = router_block
        self.set_router(router)

    def set_router(self, router: str) -> None:
        """Route with the ``"learned"`` router, the same router ranked by one score (``"ordinal"``), a ``"random"``
        one (the paper's random-router baseline), by ``"attention"`` received or by ``"distinctiveness"`` (see
        :meth:`router_probs`).

        Switch a trained model to ``"random"`` to evaluate it with random routing. The router's parameters are kept
        but take no part in a random or parameter-free forward, so this also sets their ``requires_grad`` to whether the
        mode is one of :data:`LEARNED_ROUTERS` (an unused parameter would otherwise stall DistributedDataParallel).
        """
        if router not in ROUTER_MODES:
            raise ValueError(f"router must be one of {', '.join(ROUTER_MODES)}, got {router!r}")
        self.router_mode = router
        self.router.requires_grad_(router in LEARNED_ROUTERS)

    def set_router_gradient(self, gradient: str) -> None:
        """How a learned router gets its gradient in training: ``"paper"`` (only through ``alpha * r + 1``, zero while
        alpha is 0) or ``"straight_through"`` (the same forward, plus ``r - r.detach()`` in the MLP scale, so the
        router learns at alpha = 0). Outputs are the same either way; only gradients differ."""
        if gradient not in ROUTER_GRADIENTS:
            raise ValueError(f"router_gradient must be one of {', '.join(ROUTER_GRADIENTS)}, got {gradient!r}")
        self.router_gradient = gradient

    def router_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Router probabilities [G, N, E] for the tokens [G, N, D] that enter block ``router_block``.

        ``"learned"``: ``softmax(W_r LN1(x) + b_r)``, with the router block's norm1 (docs/method.md). ``"ordinal"``:
        the same probabilities turned into one score per token, the same in every column (:func:`ordinal_scores`).
        ``"random"``:
        the softmax of standard normals drawn from torch's global RNG on the tokens' device (so seeding, checkpointed
        RNG states and DDP work as for any random op). EPR then gives every expert its exact capacity from a random
        ranking, and the MLP scaling ``alpha * r_j + 1`` uses these random probabilities; no gradient reaches the
        router. ``"attention"``: every expert ranks tokens by the full-width attention they receive in the router
        block (:func:`mone.importance.attention_received` of its norm1 output, the router's input;
        :func:`mone.importance.importance_probs`), computed without autograd: one q/k projection and one attention
        map over the router block's tokens, on top of the nested blocks. ``"distinctiveness"``: the same with
        :func:`mone.importance.distinctiveness` of the router's input (one minus each token's mean cosine similarity
        to its group's tokens: ``2 N D`` multiply-adds per group, half a learned router's ``N D E`` at four experts).
        Shapes are the same either way.
        """
        return score_tokens(tokens, self.blocks[self.router_block], self.router, self.router_mode, self.num_experts)

    def router_flops(self, num_tokens: int) -> int:
        """Multiply-accumulates of routing ``num_tokens`` tokens of one group: ``N D E`` for a learned router, a q/k
        projection and the attention map (``2 N D^2 + N^2 D``) for the attention router, each token's squared norm
        and its dot product with the group's mean unit token (``2 N D``) for the distinctiveness router, none for a
        random router or a single expert (whose router output is always 1 and is not counted)."""
        N, D = num_tokens, self.embed_dim
        if self.num_experts == 1 or self.router_mode == "random":
            return 0
        if self.router_mode == "attention":
            return 2 * N * D * D + N * N * D
        if self.router_mode == "distinctiveness":
            return 2 * N * D
        return N * D * self.num_experts

    @property
    def routing_settings(self) -> RoutingSettings:
        """The model's current router mode, prefix tokens, experts and default budget, as routing reads them."""
        return RoutingSettings(self.router_mode, self.num_experts, self.num_prefix_tokens, self.beta, self.delta,
                               self.distribution)

    @property
    def straight_through(self) -> bool:
        """Whether the MLP scale carries the straight-through router gradient (see :meth:`set_router_gradient`)."""
        return self.router_gradient == "straight_through" and self.router_mode in LEARNED_ROUTERS

    def route(self, tokens: torch.Tensor, capacity: CapacityLike | None = None) -> RoutingPlan:
        """Router and EPR for the tokens [G, P + N, D] entering the router block, each of the G groups on its own.

        Only the N tokens after the ``P = num_prefix_tokens`` prefix tokens are scored and routed (docs/method.md);
        the prefix tokens join the largest expert (see :func:`mone.make_routing_plan`).
        """
        return route_tokens(tokens, capacity, self.blocks[self.router_block], self.router, self.routing_settings)

    def dense_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The blocks before ``router_block`` (none by default), every token at full width: [G, L, D] -> [G, L, D]."""
        for block in self.blocks[: self.router_block]:
            x = dense_block_forward(block, x, self.grad_checkpointing)
        return x

    def nested_blocks(self, x: torch.Tensor, plan: RoutingPlan) -> torch.Tensor:
        """The blocks from ``router_block`` on, each token on its expert: tokens [G, L, D] -> [G, L, D], in input order.

        The tokens are sorted once into one row group per expert (:class:`mone.layers.SortedTokens`), every block
        runs on those rows, and the rows are put back in input order once at the end.
        """
        tokens = SortedTokens(x, plan, self.alpha_value, self.expert_widths, self.straight_through)
        rows = tokens.rows  # [G * L, D], grouped by expert
        for block in self.blocks[self.router_block :]:
            rows = run_block(block, rows, tokens.layout, tokens.scale, grad_checkpointing=self.grad_checkpointing)
        return plan.unsort(rows)  # [G, L, D]

    def encode(
        self, x: torch.Tensor, capacity: CapacityLike | None = None, pool: bool = False
    ) -> tuple[torch.Tensor, RoutingPlan]:
        """Run the encoder blocks on tokens [G, L, D]: dense blocks up to ``router_block``, routing, nested blocks.

        Returns the tokens [G, L, D] in input order (with ``pool`` their mean [G, D]) and the routing plan.
        """
        x = self.dense_blocks(x)  # [G, L, D]
        plan = self.route(x, capacity)
        x = self.nested_blocks(x, plan)  # [G, L, D]
        return (x.mean(dim=1) if pool else x), plan

    def realised_capacity(self, capacity: CapacityLike | None = None) -> float:
        """Fraction of the dense encoder's linear-layer compute spent at ``capacity``, from the floored token counts
        (dense blocks before ``router_block`` and prefix tokens count 1)."""
        routed = realised_capacity(self.resolve_distribution(capacity), self.tokens_per_group)
        P, N = self.num_prefix_tokens, self.tokens_per_group
        if P:
            routed = (P + N * routed) / (P + N)
        depth = len(self.blocks)
        return (self.router_block + (depth - self.router_block) * routed) / depth
