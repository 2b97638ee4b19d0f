"""Save and load a model in the layout timm and the Hugging Face hub use.

A folder holds ``config.json`` (the architecture, its keyword arguments and the pretrained config, with timm's keys:
``architecture``, ``model_args``, ``num_classes``, ``num_features``, ``global_pool``, ``pretrained_cfg``) and
``model.safetensors`` (the state_dict; no pickle anywhere). ``architecture`` is the registered model name when the
model has one, else its class name (a model built by the class or by :func:`mone.from_timm`). With timm installed, a
folder of a registered model also loads with ``timm.create_model("local-dir:DIR", pretrained=True)``.

``model_args`` are the constructor's arguments with the model's current settings written over them (default
capacity, router mode, classifier and pooling after ``set_capacity``, ``set_router``, ``reset_classifier``), so the
folder rebuilds the model as it is; :func:`save_pretrained` checks this before writing. Every problem with a folder
is one line naming the file: FileNotFoundError for a missing one, ValueError for a corrupt, truncated or mismatched
one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import save_file

from ._io import check_new_output_dir, output_folder
from ._weights import check_finite_weights, header_shapes, mismatch, read_tensors
from .models import MoDVisionTransformer, MoneVisionTransformer, MoneViViT, create_model, list_models
from .models._contract import set_pretrained_writer

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "from_pretrained", "save_pretrained"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "mone-pretrained-v1"
MODEL_CLASSES = {cls.__name__: cls for cls in (MoneVisionTransformer, MoneViViT, MoDVisionTransformer)}
TUPLE_CFG_KEYS = ("input_size", "test_input_size", "min_input_size", "mean", "std", "pool_size")


def _current_args(model: nn.Module) -> dict[str, Any]:
    """The constructor arguments that rebuild ``model`` as it is now."""
    args = dict(model.model_args)
    args["num_classes"] = model.num_classes
    if "global_pool" in args:
        args["global_pool"] = model.global_pool
    if hasattr(model, "distribution"):  # MoNE: the default capacity as a number, or as the distribution it resolved
        args["capacity"] = model.capacity if isinstance(model.capacity, float) else list(model.distribution)
        args["router"] = model.router_mode
    else:
        args["capacity"] = model.capacity
    return args


def _architecture(model: nn.Module) -> str:
    name = getattr(model, "pretrained_cfg", {}).get("architecture")
    return name if name in list_models() else type(model).__name__


def _build(architecture: str, args: Mapping[str, Any]) -> nn.Module:
    if architecture in list_models():
        return create_model(architecture, **args)
    if architecture in MODEL_CLASSES:
        return MODEL_CLASSES[architecture](**args)
    raise ValueError(f"unknown architecture {architecture!r}: neither a registered model nor a mone model class")


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()}


def _jsonable_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in ("state_dict", "file", "source", "url", "hf_hub_id")}


def save_pretrained(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``model`` to ``directory`` as ``config.json`` and ``model.safetensors``: a new or empty folder, created
    if needed; a folder that holds anything (another model, say) is refused, never overwritten, as ``mone export``
    refuses it. ``config.json`` is moved into place last: a folder with it is complete. A failed write (a full disk)
    leaves no files and no folder it created. Returns the folder.

    Raises:
        ValueError: for a model that is not one of mone's, or whose config would not rebuild it (e.g. pruned for
            feature extraction), or a ``directory`` that exists and is not empty.
        NotADirectoryError, PermissionError: for a ``directory`` that is a file or cannot be written.
        OSError: when writing fails, naming the file.
    """
    if not hasattr(model, "model_args"):
        raise ValueError(f"save_pretrained saves mone models, got a {type(model).__name__}")
    architecture, args = _architecture(model), _current_args(model)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    with torch.device("meta"):  # build the model the config describes, without allocating it, and compare
        rebuilt = _build(architecture, args)
    problem = mismatch(_shapes(rebuilt.state_dict()), _shapes(state))
    if problem:
        raise ValueError(f"cannot save this {type(model).__name__}: its config does not rebuild it ({problem})")
    config = {
        "architecture": architecture,
        "model_args": args,
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "global_pool": model.global_pool,
        "pretrained_cfg": _jsonable_cfg(getattr(model, "pretrained_cfg", {})),
        "mone": {"format": FORMAT},
    }
    try:
        text = json.dumps(config, indent=2)
    except TypeError as error:
        raise ValueError(f"cannot save this {type(model).__name__}: a setting is not JSON ({error})") from None
    directory = check_new_output_dir(directory)
    with output_folder(directory) as stage:
        try:
            save_file(state, str(stage(WEIGHTS_NAME)), metadata={"format": "pt"})
        except SafetensorError as error:  # safetensors reports some write failures as its own error type
            raise OSError(f"cannot write {directory / WEIGHTS_NAME}: {error}") from None
        stage(CONFIG_NAME).write_text(text + "\n")
    return directory


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (save_pretrained writes {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        config = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is corrupt or truncated: {error.msg} at line {error.lineno}") from None
    if not (isinstance(config, dict) and isinstance(config.get("architecture"), str)
            and isinstance(config.get("model_args"), dict)):
        raise ValueError(f"{path} is not a model config: it needs 'architecture' (a name) and 'model_args' (an object)")
    return config


def _weights_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        return header_shapes(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist (save_pretrained writes {CONFIG_NAME} and {WEIGHTS_NAME})"
                                ) from None


def check_against_weights(
    architecture: str, args: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], mismatch_prefix: str,
    build_prefix: str,
) -> nn.Module:
    """The model ``architecture(**args)`` built on the meta device (nothing allocated), after checking that its
    parameter names and shapes are ``shapes`` (a weights file's header): a config cannot make a loader allocate
    more than its weights file holds. ValueError ``"<mismatch_prefix>: <what differs>"`` otherwise, or
    ``"<build_prefix>: <why>"`` when the arguments build no model."""
    try:
        with torch.device("meta"):
            model = _build(architecture, args)
    except (ValueError, TypeError, RuntimeError) as error:  # RuntimeError: sizes too large even to describe
        raise ValueError(f"{build_prefix}: {error}") from None
    problem = mismatch(_shapes(model.state_dict()), shapes)
    if problem:
        raise ValueError(f"{mismatch_prefix}: {problem}")
    return model


def from_pretrained(directory: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved in ``directory`` by :func:`save_pretrained`, in eval mode on ``device``, with the
    saved weights' dtype.

    The model is built on the meta device and checked against the weights file's header (names and shapes) before
    anything is allocated, so a config that asks for more than the file holds (``embed_dim=10**9``) is refused, not
    allocated.

    Raises:
        FileNotFoundError: when ``config.json`` or ``model.safetensors`` is missing.
        ValueError: when either is corrupt or truncated, they do not match (names, shapes), or the weights hold NaN
            or infinite values, naming the file.
    """
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    config = _read_config(config_path)
    shapes = _weights_shapes(weights_path)
    model = check_against_weights(config["architecture"], config["model_args"], shapes,
                                  f"{weights_path} does not match {config_path} ({config['architecture']})",
                                  f"{config_path} does not describe a model")
    state = read_tensors(weights_path)
    check_finite_weights(state, str(weights_path))
    model.to_empty(device="cpu")  # allocated now that the file is known to match, and filled from it
    dtypes = {value.dtype for value in state.values() if value.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())
    model.load_state_dict(state)
    cfg = config.get("pretrained_cfg")
    if isinstance(cfg, dict) and cfg:
        cfg = {k: tuple(v) if k in TUPLE_CFG_KEYS and isinstance(v, list) else v for k, v in cfg.items()}
        model.pretrained_cfg = model.default_cfg = cfg
    return model.to(device).eval()


set_pretrained_writer(save_pretrained)  # every model's save_pretrained method writes through this
