"""Device names from the command line (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), checked before use."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]

_VALID = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The ``torch.device`` called ``name``; ValueError when it is unknown or not available on this machine.

    ``auto`` is the GPU when one is visible, else the CPU; a bare ``cuda`` is GPU ``local_rank`` (one GPU per
    data-parallel process).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use {_VALID}") from None
    if device.type == "cpu":
        return device
    if device.type == "mps" and torch.backends.mps.is_available():
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine; use cpu or auto")
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: there is no GPU {index} (this machine has "
                             f"{torch.cuda.device_count()})")
        return torch.device("cuda", index)
    raise ValueError(f"device {name!r} is not available here; use {_VALID}")
