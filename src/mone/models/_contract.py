"""What timm expects of a model, for MoNE's models.

* A pretrained config (``model.pretrained_cfg``, alias ``default_cfg``): input size, mean/std, crop, ``num_classes``,
  ``first_conv``, ``classifier``, so ``timm.data.resolve_data_config({}, model=model)`` resolves the model's own
  preprocessing. The values are those of mone's own image pipeline (``mone.data.image_folder``: ImageNet mean and
  std, bilinear resize to ``img_size / 0.875``, centre crop).
* The registered entrypoints go through :func:`build_registered_model`: with timm installed it calls timm's own
  ``build_model_with_cfg``, so ``timm.create_model(name, features_only=True)`` wraps the model in timm's
  ``FeatureGetterNet`` (which calls ``forward_intermediates``) and ``timm.create_model("local-dir:DIR",
  pretrained=True)`` loads a folder written by ``save_pretrained``. Without timm the same config is attached by hand
  and everything but ``features_only`` works.
* :class:`TimmContractMixin`: ``get_classifier``, ``reset_classifier(num_classes, global_pool)``,
  ``no_weight_decay``, ``set_grad_checkpointing`` and ``save_pretrained``; each model sets ``num_features`` and
  ``head_hidden_size`` (the width of ``forward_head(..., pre_logits=True)``) and adds ``group_matcher`` and, for the
  image models, ``forward_intermediates`` / ``prune_intermediate_layers``.
* torch.fx: ``torch.fx.symbolic_trace`` (and timm's fx feature extraction) trace every model. The steps whose shapes
  depend on Python values (input checks, routing and EPR's token counts, the per-expert row groups of a block) are
  registered with ``torch.fx.wrap`` where they are called, so they stay single graph nodes that take the model's
  submodules as arguments (timm's ``register_notrace_function`` does the same; mone needs no timm for it). The
  graph keeps ``capacity`` as an input. See docs/api.md, "torch.fx".
* ``save_pretrained`` writes through the function that :mod:`mone.hub` registers with
  :func:`set_pretrained_writer` when it is imported (``import mone`` does): the models never import the hub, which
  imports them.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn as nn

from .._checks import check_int

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TimmContractMixin",
    "build_registered_model",
    "default_cfg",
    "feature_take_indices",
    "records_init_args",
    "set_pretrained_writer",
    "timm_available",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NO_WEIGHT_DECAY = ("pos_embed", "cls_token", "reg_token", "temporal_pos_embed", "alpha")
# Keyword arguments that timm.create_model passes (or its users pass) to an entrypoint and that are timm's business.
TIMM_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained_model_args", "features_only",
               "out_indices", "feature_cls")

ModelT = TypeVar("ModelT", bound=type)
PretrainedWriter = Callable[[nn.Module, "str | os.PathLike"], Path]
_pretrained_writer: PretrainedWriter | None = None


def set_pretrained_writer(writer: PretrainedWriter) -> None:
    """Set the function behind every model's ``save_pretrained`` (:func:`mone.save_pretrained`, set by
    :mod:`mone.hub`)."""
    global _pretrained_writer
    _pretrained_writer = writer


def timm_available() -> bool:
    """Whether timm can be imported (``sys.modules['timm'] = None`` counts as absent)."""
    return importlib.util.find_spec("timm") is not None


def default_cfg(architecture: str, input_size: Sequence[int], num_classes: int) -> dict[str, Any]:
    """The pretrained config of a MoNE model: timm's ``PretrainedCfg`` fields, with mone's preprocessing.

    Args:
        architecture: registered model name.
        input_size: ``(C, H, W)`` of one image (of one frame, for a video model).
        num_classes: classifier outputs.
    """
    return {
        "architecture": architecture,
        "input_size": tuple(input_size),
        "fixed_input_size": True,
        "interpolation": "bilinear",
        "crop_pct": 0.875,
        "crop_mode": "center",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "num_classes": num_classes,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2407.19985",
        "paper_name": "Mixture of Nested Experts: Adaptive Processing of Visual Tokens",
    }


def records_init_args(cls: ModelT) -> ModelT:
    """Class decorator: after construction ``model.model_args`` holds the constructor's keyword arguments with the
    defaults filled in, which is what ``save_pretrained`` writes to ``config.json`` to rebuild the model."""
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        self.model_args = {name: value for name, value in bound.arguments.items() if name != "self"}

    cls.__init__ = __init__
    return cls


def feature_take_indices(num_blocks: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """timm's block selection: ``None`` all blocks, an int ``n`` the last ``n``, a sequence those indices (negative
    ones from the end). Returns the absolute indices and the largest; ValueError for one out of range."""
    if indices is None:
        indices = num_blocks
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= num_blocks:
            raise ValueError(f"last-n indices must be in [1, {num_blocks}], got {indices}")
        take = list(range(num_blocks - indices, num_blocks))
    else:
        take = [num_blocks + i if i < 0 else i for i in indices]
        if not take or any(not 0 <= i < num_blocks for i in take):
            raise ValueError(f"block indices must be in [-{num_blocks}, {num_blocks - 1}], got {list(indices)}")
    return take, max(take)


def _default(model_cls: type, name: str) -> Any:
    return inspect.signature(model_cls).parameters[name].default


def _check_local_dir(model_cls: type[nn.Module], args: dict[str, Any], folder: Path) -> None:
    """A ``local-dir:`` folder checked as :func:`mone.from_pretrained` checks it, before timm allocates the model:
    the model its config describes, built on the meta device, must have the weights file's names and shapes (read
    from its header), and the weights must be finite. ValueError naming the file otherwise."""
    from .._weights import check_finite_file, header_shapes, mismatch

    config, weights = folder / "config.json", folder / "model.safetensors"  # timm's names, and save_pretrained's
    shapes = header_shapes(weights)
    try:
        with torch.device("meta"):
            model = model_cls(**args)
    except (ValueError, TypeError, RuntimeError) as error:  # RuntimeError: sizes too large even to describe
        raise ValueError(f"{config} does not describe a model: {error}") from None
    problem = mismatch({key: tuple(value.shape) for key, value in model.state_dict().items()}, shapes)
    if problem:
        raise ValueError(f"{weights} does not match {config}: {problem}")
    check_finite_file(weights)


def build_registered_model(
    model_cls: type[nn.Module],
    variant: str,
    defaults: dict[str, Any],
    pretrained: bool = False,
    features: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Body of every registered entrypoint: ``model_cls`` with the caller's ``kwargs`` over ``defaults``, carrying
    its pretrained config (see the module docstring).

    Args:
        model_cls: the model class.
        variant: the registered name.
        defaults: the entrypoint's architecture arguments.
        pretrained: load weights; only through timm, from a config that names them (``local-dir:`` folders).
        features: whether the model supports ``features_only=True`` (it has ``forward_intermediates``).
        kwargs: model arguments, and timm's (``pretrained_cfg``, ``features_only``, ``out_indices``, ...).
    """
    args = {**defaults, **kwargs}
    timm_args = {key: args.pop(key) for key in TIMM_KWARGS if key in args}
    for name in ("img_size", "in_chans", "num_classes"):  # explicit, so timm's builder fills in none of its own
        args.setdefault(name, _default(model_cls, name))
    cfg = default_cfg(variant, (args["in_chans"], args["img_size"], args["img_size"]), args["num_classes"])
    if isinstance(timm_args.get("pretrained_cfg"), dict):  # e.g. read from a local-dir: folder by timm
        cfg = {**cfg, **timm_args["pretrained_cfg"]}
    timm_args["pretrained_cfg"] = cfg
    has_weights = any(cfg.get(key) for key in ("file", "url", "hf_hub_id", "state_dict"))
    if pretrained and not (has_weights and timm_available()):
        raise ValueError(
            f"no pretrained MoNE weights are published for {variant}; load a folder written by save_pretrained "
            f"with mone.from_pretrained(dir), or a dense timm ViT with mone.from_timm(vit)"
        )
    if pretrained and cfg.get("source") == "local-dir":  # before timm builds the model the config asks for
        _check_local_dir(model_cls, args, Path(cfg["file"]))
    if timm_args.get("features_only") and not features:
        raise ValueError(f"{variant} does not support features_only=True: it has no forward_intermediates")
    if not timm_available():
        if timm_args.get("features_only"):
            raise ValueError("features_only=True uses timm's feature wrappers: install timm (pip install timm)")
        model = model_cls(**args)
        model.pretrained_cfg = model.default_cfg = cfg
        return model
    from timm.models import build_model_with_cfg

    feature_cfg = None
    if timm_args.get("features_only"):  # timm's ViT default: the last 3 blocks (all of them, with fewer)
        depth = args.get("depth", _default(model_cls, "depth"))
        feature_cfg = dict(out_indices=min(3, depth) if isinstance(depth, int) else 3, feature_cls="getter")
    return build_model_with_cfg(model_cls, variant, pretrained, feature_cfg=feature_cfg, **timm_args, **args)


class TimmContractMixin:
    """timm's model methods that only need ``head``, ``head_hidden_size``, ``pos_embed``, the parameter names and a
    ``grad_checkpointing`` flag."""

    grad_checkpointing: bool = False
    head: nn.Module
    head_hidden_size: int
    num_classes: int
    global_pool: str = "avg"
    global_pools: tuple[str, ...] = ("avg",)  # what reset_classifier accepts
    has_class_token: bool = False

    def get_classifier(self) -> nn.Module:
        """The classifier head (``nn.Identity`` without one)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh ``num_classes``-way linear layer (``0``: no head), on the model's device and
        dtype; ``global_pool`` (one of ``global_pools``) also changes the pooling, keeping the norm layers."""
        self.num_classes = check_int("num_classes", num_classes, 0)
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool, self.global_pools, self.has_class_token)
        like = dict(device=self.pos_embed.device, dtype=self.pos_embed.dtype)
        self.head = nn.Linear(self.head_hidden_size, num_classes, **like) if num_classes > 0 else nn.Identity()

    def no_weight_decay(self) -> set[str]:
        """Parameters that take no weight decay: position embeddings, prefix tokens and alpha (as mone's trainer)."""
        return {name for name, _ in self.named_parameters() if name in NO_WEIGHT_DECAY}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward instead of storing them (``torch.utils.checkpoint``);
        outputs and gradients are unchanged."""
        self.grad_checkpointing = bool(enable)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``directory`` (see :func:`mone.save_pretrained`)."""
        if _pretrained_writer is None:  # mone/__init__ imports mone.hub, which sets it
            raise RuntimeError("import mone.hub to save models")
        return _pretrained_writer(self, directory)


def check_global_pool(global_pool: str, allowed: Sequence[str], has_class_token: bool = False) -> str:
    """Return ``global_pool`` if it is one of ``allowed`` (``'token'`` only with a class token), else ValueError."""
    if global_pool not in allowed:
        raise ValueError(f"global_pool must be one of {', '.join(map(repr, allowed))}, got {global_pool!r}")
    if global_pool == "token" and not has_class_token:
        raise ValueError("global_pool='token' pools the class token: it needs class_token=True")
    return global_pool
