"""Checkpoints: one safetensors file whose header carries the run's JSON.

``<name>.safetensors`` holds every tensor: the model's state (``model.*``), the optimiser's per-parameter state
(``optimizer.<param index>.<key>``) and torch's generator states (``rng.torch``, ``rng.cuda.<i>``). Its header
metadata holds, as JSON, the model name and keyword arguments, the :class:`~mone.train.config.TrainConfig`, the
optimiser's hyper-parameters and the step: the header is the one stored copy of the run's configuration (a run
folder's ``config.json`` is the trainer's readable copy, there from the start, before any checkpoint). That file
alone is the checkpoint; it is written to a temporary file and moved into place with ``os.replace``, so a reader sees
the old or the new checkpoint, never half of one (a failed save removes its temporary file; the trainer removes one
left by a killed save when it next claims the folder). Nothing here uses pickle.

Only torch's generators are saved: everything else random in training is a pure function of (seed, step) (data
order, capacity draws, the DataLoader's worker seeds), and nothing draws from Python's or NumPy's global
generators. Checkpoints written before that (with ``rng.numpy_keys``, the Python/NumPy states in the header and a
``<name>.json`` copy of the header beside the file) still load and resume; the extra states are ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .._io import fsync_replace
from .._weights import check_finite_weights  # shared with mone.hub; re-exported here
from ..models import create_model

__all__ = [
    "CHECKPOINT_NAME",
    "Checkpoint",
    "LEGACY_JSON_NAME",
    "check_finite_weights",
    "check_same_architecture",
    "load_checkpoint",
    "load_model",
    "optimizer_state_from_tensors",
    "optimizer_state_to_tensors",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT = "mone-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.safetensors"  # a run folder's checkpoint
LEGACY_JSON_NAME = "checkpoint.json"  # the header's JSON copy that older versions wrote beside the checkpoint


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``tensors`` by prefix and the JSON ``meta`` (model, model_kwargs, config, step, ...)."""

    path: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under ``prefix.`` with the prefix removed."""
        start = prefix + "."
        return {key[len(start):]: value for key, value in self.tensors.items() if key.startswith(start)}

    @property
    def model_state(self) -> dict[str, torch.Tensor]:
        return self.section("model")


def optimizer_state_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser's ``state_dict`` into tensors (``<param index>.<key>``) and JSON-able hyper-parameters."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in group.items()} for group in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_state_from_tensors(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_to_tensors`: a ``state_dict`` for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def rng_state() -> dict[str, torch.Tensor]:
    """torch's generator states: the CPU's (``torch``) and each initialised GPU's (``cuda.<i>``)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = cuda_state
    return tensors


def set_rng_state(tensors: Mapping[str, torch.Tensor]) -> None:
    """Restore what :func:`rng_state` captured (an older checkpoint's ``numpy_keys`` is ignored)."""
    torch.set_rng_state(tensors["torch"])
    cuda_states = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    model_name: str,
    model_kwargs: Mapping[str, Any],
    *,
    config: Mapping[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    extra: Mapping[str, Any] | None = None,
    include_rng: bool = True,
) -> Path:
    """Write a checkpoint atomically to ``path`` (``.safetensors``), the metadata as JSON in its header.

    Args:
        path: target file.
        model: the model (unwrapped, not DDP).
        model_name, model_kwargs: how to rebuild it with ``mone.create_model``.
        config: the run's ``TrainConfig.to_dict()``.
        optimizer: saved with its full state when given.
        step: optimiser steps completed.
        extra: more JSON-able metadata (e.g. the planned total steps).
        include_rng: save torch's generator states (what a resumed run needs).
    """
    path = Path(path)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {
        "format": FORMAT,
        "model": model_name,
        "model_kwargs": dict(model_kwargs),
        "config": None if config is None else dict(config),
        "step": int(step),
        **(dict(extra) if extra else {}),
    }
    if optimizer is not None:
        optim_tensors, meta["optimizer"] = optimizer_state_to_tensors(optimizer)
        tensors.update({f"optimizer.{k}": v for k, v in optim_tensors.items()})
    if include_rng:
        tensors.update({f"rng.{k}": v for k, v in rng_state().items()})
    text = json.dumps(meta, indent=2, sort_keys=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "mone": text})
        fsync_replace(tmp, path)
    except (OSError, SafetensorError) as error:  # e.g. a full disk: the previous checkpoint stays as it was
        raise OSError(f"cannot write checkpoint {path}: {getattr(error, 'strerror', None) or error}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike, tensors: bool = True) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on CPU; only the metadata if not ``tensors``).

    A folder is read as ``<folder>/checkpoint.safetensors``. Raises FileNotFoundError when it does not exist and
    ValueError when it is not a readable mone checkpoint or its metadata lacks the model or the step.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            values = {key: handle.get_tensor(key) for key in handle.keys()} if tensors else {}
    except (SafetensorError, OSError, RuntimeError) as error:
        raise ValueError(f"checkpoint {path} is corrupt or not a safetensors file ({error})") from None
    if header.get("format") != FORMAT or "mone" not in header:
        raise ValueError(f"checkpoint {path} is not a mone checkpoint (format {header.get('format')!r})")
    try:
        meta = json.loads(header["mone"])
    except json.JSONDecodeError as error:
        raise ValueError(f"checkpoint {path} has corrupt metadata ({error})") from None
    step = meta.get("step") if isinstance(meta, dict) else None
    if not (isinstance(meta, dict) and isinstance(meta.get("model"), str) and isinstance(meta.get("model_kwargs"), dict)
            and isinstance(step, int) and not isinstance(step, bool) and step >= 0):
        raise ValueError(f"checkpoint {path} has incomplete metadata: it needs a JSON object with 'model' (a name), "
                         f"'model_kwargs' (an object) and 'step' (an integer >= 0)")
    return Checkpoint(path, meta, values)


def check_same_architecture(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ValueError unless ``state`` has exactly ``model``'s parameter names and shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{source} is a checkpoint of another architecture: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for key, shape in expected.items():
        if found[key] != shape:
            raise ValueError(
                f"{source} is a checkpoint of another architecture: {key} has shape {found[key]}, model needs {shape}"
            )


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Rebuild the checkpoint's model with ``mone.create_model`` and load its weights; returns it in eval mode."""
    checkpoint = load_checkpoint(path)
    model = create_model(checkpoint.meta["model"], **checkpoint.meta["model_kwargs"])
    state = checkpoint.model_state
    check_same_architecture(model, state, str(checkpoint.path))
    check_finite_weights(state, f"checkpoint {checkpoint.path}")
    model.load_state_dict(state)
    return model.to(device).eval(), checkpoint
