"""Weights files checked before a model is allocated: names and shapes from the safetensors header (a few bytes),
values for NaN and infinity one tensor at a time.

A config asks for a model; only its weights file says how big that model really is. Building the model the config
describes first would allocate it whatever the file holds (``embed_dim=10**9`` asks for 768 GB), so loaders build
it on the meta device, compare with :func:`header_shapes`, and allocate only what the file matches. Nothing here
imports the models, so the model registry can use it as well as :mod:`mone.hub`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

__all__ = ["check_finite_file", "check_finite_weights", "header_shapes", "mismatch", "read_tensors"]


def _unreadable(path: Path, error: BaseException) -> ValueError:
    reason = (str(error).splitlines() or [type(error).__name__])[0]
    return ValueError(f"{path} is corrupt or truncated, not a readable safetensors file ({reason})")


def header_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor in the safetensors file ``path``, read from its header only.

    Raises FileNotFoundError for a missing file, ValueError naming the file for an unreadable one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError, RuntimeError) as error:
        raise _unreadable(path, error) from None


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file ``path`` (on CPU); ValueError naming the file when it is unreadable."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, RuntimeError) as error:
        raise _unreadable(path, error) from None


def mismatch(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]) -> str | None:
    """How ``found`` (names and shapes) differs from ``expected``, in a few words; ``None`` when it does not."""
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        return f"missing {missing[:3]}, unexpected {unexpected[:3]}"
    for key, shape in expected.items():
        if found[key] != shape:
            return f"{key} has shape {found[key]}, the model needs {shape}"
    return None


def check_finite_weights(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ValueError naming the first floating-point tensor of ``state`` that holds a NaN or an infinity."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{source} holds non-finite weights ({key} has NaN or inf values): its run diverged")


def check_finite_file(path: str | os.PathLike) -> None:
    """:func:`check_finite_weights` for the file ``path``, reading one tensor at a time."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                check_finite_weights({key: handle.get_tensor(key)}, str(path))
    except (SafetensorError, OSError, RuntimeError) as error:
        raise _unreadable(path, error) from None
