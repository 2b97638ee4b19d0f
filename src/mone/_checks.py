"""Argument checks shared by the library's public entry points: one helper per kind of check, one wording.

User input is checked once, where it enters (a constructor, a forward, a command), and fails with a ``ValueError``
that names the argument, the valid range and the value given; asserts are kept for internal invariants.
"""

from __future__ import annotations

import torch

__all__ = ["check_bool", "check_input_tensor", "check_int"]


def check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) ``>= minimum``, else raise ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a ``bool``, else raise ValueError naming ``name`` (``bool("false")`` would be True)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_input_tensor(x: torch.Tensor, model_dtype: torch.dtype, what: str) -> None:
    """Raise ValueError for an empty batch or an input dtype that the model's parameters (``model_dtype``) cannot take.

    A floating-point input of another dtype is accepted under ``torch.autocast``, which casts it for every matmul;
    integer inputs never are (autocast leaves them alone, and pixels need scaling first anyway).

    Args:
        x: the input batch, already checked to be ``[B, ...]``.
        model_dtype: dtype of the model's parameters.
        what: plural noun for the samples in messages (``"images"``, ``"clips"``).
    """
    if x.shape[0] == 0:
        raise ValueError(f"empty batch: got {what} of shape {tuple(x.shape)}; pass at least one sample")
    if not x.is_floating_point():
        raise ValueError(
            f"expected floating-point {what}, got dtype {x.dtype} (the model's parameters are {model_dtype}); "
            f"convert them first, e.g. x.to({model_dtype}), scaled as in training"
        )
    if x.dtype != model_dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(
            f"{what} have dtype {x.dtype} but the model's parameters are {model_dtype}: convert the input "
            f"(x.to({model_dtype})) or the model (model.to({x.dtype})), or run under torch.autocast"
        )
