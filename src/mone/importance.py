"""Token importance from the model's own signals, and the router losses trained against it (docs/method.md).

The paper's router learns only through the ``alpha * r + 1`` scaling of the MLP update, which rewards "amplify this
token's update", not "this token needs the wide expert". The pieces here give it a signal for the latter:

* :func:`attention_received`: how much attention each token receives at full width in one block (EViT's score,
  averaged over heads and over every query, since the models pool without a class token);
* :func:`distinctiveness`: how unlike the other tokens of its image a token is, one minus its mean cosine similarity
  to them (the redundancy ToMe merges away: a token like many others carries little of its own);
* :func:`importance_routing`: the experts EPR would give the tokens if they were ranked by that importance;
* :func:`router_distillation_loss`: cross-entropy of the router's probabilities against those experts, the
  supervised router of Mixture-of-Depths' auxiliary predictor and DynamicViT's distillation;
  :func:`target_loss` chains them for one forward (the trainer's ``router_target``: ``"attention"`` or
  ``"distinctiveness"``).

A model with ``router="attention"`` routes by :func:`attention_received` itself (no router parameters), through
:func:`importance_probs`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from .capacity import token_counts
from .routing import _expert_preferred_routing

__all__ = ["IMPORTANCE_TARGETS", "attention_received", "distinctiveness", "importance_probs", "importance_routing",
           "router_distillation_loss", "target_loss"]


def attention_received(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Full-width attention each token receives from the tokens of its group, averaged over heads and queries.

    Args:
        attn: a :class:`mone.layers.NestedAttention` (its ``qkv`` weights at full width are used).
        x: normalised tokens [G, N, D] (the block's ``norm1`` output: what the router reads).

    Returns:
        [G, N], non-negative, each row summing to 1: ``mean_{h, q} softmax_k(q_hq . k_hk / sqrt(d_h))``.
    """
    G, N, D = x.shape
    H, hd = attn.num_heads, attn.head_dim
    weight = attn.qkv.weight[: 2 * D]  # q and k only: [2D, D]
    bias = None if attn.qkv.bias is None else attn.qkv.bias[: 2 * D]
    qk = nn.functional.linear(x.to(weight.dtype), weight, bias)  # [G, N, 2D]
    qk = qk.view(G, N, 2, H, hd).permute(2, 0, 3, 1, 4)  # [2, G, H, N, hd]
    q, k = qk.unbind(0)
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # [G, H, N(query), N(key)]
    return weights.mean(dim=(1, 2))  # [G, N]


def distinctiveness(x: torch.Tensor) -> torch.Tensor:
    """One minus each token's mean cosine similarity to the tokens of its group (itself included).

    Args:
        x: tokens [G, N, D] (the router block's ``norm1`` output: what the router reads).

    Returns:
        [G, N], in [0, 2]: ``1 - mean_j cos(x_i, x_j)``; tokens unlike the rest of their image score high.
    """
    unit = nn.functional.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1)  # bf16: in float32
    return 1 - (unit * unit.mean(dim=1, keepdim=True)).sum(dim=-1)  # mean_j u_i . u_j = u_i . mean_j u_j: O(N D)


def importance_probs(importance: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Router probabilities [G, N, E] that make EPR rank tokens by ``importance`` [G, N] for every expert.

    Each token gets ``importance / max(importance of its group)`` (in [0, 1]) in every column, so each expert takes
    the most important tokens still free, and the MLP scale ``alpha * r + 1`` grows with importance.
    """
    scores = importance / importance.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(importance.dtype).tiny)
    return scores.unsqueeze(-1).expand(*importance.shape, num_experts)


def importance_routing(importance: torch.Tensor, distribution: Sequence[float]) -> torch.Tensor:
    """The expert of each token [G, N] (0 = smallest) when EPR ranks the tokens of each group by ``importance``
    [G, N] at ``distribution`` (a validated per-expert token fraction, smallest first)."""
    probs = importance_probs(importance, len(distribution))
    return _expert_preferred_routing(probs, token_counts(distribution, importance.shape[-1]))


def router_distillation_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of router probabilities [G, N, E] against target experts [G, N] (int64).

    Minimised when the router puts all its probability on each token's target expert; EPR then reproduces the
    target routing, and across budgets ``probs[..., j]`` orders tokens by how often they belong on expert ``j``.
    """
    log_probs = probs.float().clamp_min(torch.finfo(torch.float32).tiny).log()
    return -log_probs.gather(-1, target.unsqueeze(-1)).mean()


IMPORTANCE_TARGETS = ("attention", "distinctiveness")  # the trainer's router targets, as :func:`target_loss` names them


def target_loss(
    target: str, attn: nn.Module, x: torch.Tensor, probs: torch.Tensor, distribution: Sequence[float]
) -> torch.Tensor:
    """The trainer's ``router_target`` loss for one forward: the cross-entropy of the router's probabilities
    ``probs`` [G, N, E] against EPR's routing at ``distribution`` of the tokens ranked by ``target``:
    ``"attention"``, the attention they receive at full width in the router block (``attn``, from its normalised
    input ``x`` [G, N, D], the router's input), or ``"distinctiveness"`` of ``x``. The target is computed without
    gradient: the loss trains the router and what feeds it, not the importance.
    """
    if target not in IMPORTANCE_TARGETS:
        raise ValueError(f"target must be one of {', '.join(IMPORTANCE_TARGETS)}, got {target!r}")
    with torch.no_grad():
        x = x.detach()
        importance = attention_received(attn, x) if target == "attention" else distinctiveness(x)
        routing = importance_routing(importance.float(), distribution)  # [G, N]
    return router_distillation_loss(probs, routing)
