"""Upcycling: start a MoNE (or Mixture-of-Depths) model from the weights of a dense ViT.

Nested experts add no parameters to the blocks (docs/method.md), so a dense ViT's state_dict (our
``num_experts=1`` model, the same architecture with another ``num_experts``, or timm's
``VisionTransformer(global_pool="avg", class_token=False)``) holds every weight of the MoNE model except its
routing parameters: ``router.*`` and ``alpha`` (MoD: ``routers.*``). Those stay at their fresh init.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

__all__ = ["is_routing_parameter", "load_dense_weights", "needs_upcycling"]


def is_routing_parameter(key: str) -> bool:
    """Whether a state_dict key is a routing parameter (``router.*``, ``routers.*``, ``alpha``)."""
    return key == "alpha" or key.startswith(("router.", "routers."))


def _shapes(state_dict: Mapping[str, torch.Tensor], routing: bool) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items() if is_routing_parameter(k) == routing}


def needs_upcycling(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state_dict``'s routing parameters differ from ``model``'s in names or shapes (e.g. a checkpoint of a
    dense model, or of another ``num_experts``): then load it with :func:`load_dense_weights`."""
    return _shapes(model.state_dict(), routing=True) != _shapes(state_dict, routing=True)


def load_dense_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state_dict") -> None:
    """Load every non-routing weight of ``model`` from a dense ViT's ``state_dict``, in place.

    The routing parameters of ``model`` keep their current (fresh) values and those of ``state_dict`` are ignored;
    every other key must match in name and shape.

    Args:
        model: a MoNE or Mixture-of-Depths model.
        state_dict: the dense model's weights (timm's parameter names).
        source: what ``state_dict`` is, for error messages (e.g. a checkpoint path).

    Raises:
        ValueError: naming the first key that is missing, has another shape, or is unknown to ``model``.
    """
    expected = _shapes(model.state_dict(), routing=False)
    found = _shapes(state_dict, routing=False)
    for key, shape in expected.items():
        if key not in found:
            raise ValueError(f"{source} is a checkpoint of another architecture: it has no {key} {shape}")
        if found[key] != shape:
            raise ValueError(
                f"{source} is a checkpoint of another architecture: {key} has shape {found[key]}, model needs {shape}"
            )
    unexpected = [key for key in found if key not in expected]
    if unexpected:
        raise ValueError(f"{source} is a checkpoint of another architecture: the model has no {unexpected[0]}")
    model.load_state_dict({k: v for k, v in state_dict.items() if k in expected}, strict=False)
