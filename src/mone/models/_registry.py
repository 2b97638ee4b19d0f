"""A small model registry in the style of timm's: ``register_model``, ``create_model``, ``list_models``.

Entrypoints are also registered in timm's registry when timm is installed, so ``timm.create_model`` finds them.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import logging
from collections.abc import Callable

import torch.nn as nn

__all__ = ["create_model", "list_models", "register_model"]

_logger = logging.getLogger(__name__)
_model_entrypoints: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: record ``fn`` as the entrypoint of the model named ``fn.__name__``."""
    name = fn.__name__
    if name in _model_entrypoints:
        _logger.warning("model %s registered twice; the later entrypoint wins", name)
    _model_entrypoints[name] = fn
    if importlib.util.find_spec("timm") is not None:
        from timm.models import register_model as timm_register_model

        timm_register_model(fn)
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style wildcard, sorted."""
    return sorted(fnmatch.filter(_model_entrypoints, pattern))


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name``; keyword arguments override its defaults."""
    if name not in _model_entrypoints:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    try:
        return _model_entrypoints[name](**kwargs)
    except TypeError as error:  # a keyword the model does not take, e.g. num_frames for an image model
        if "unexpected keyword argument" not in str(error):
            raise
        raise ValueError(f"model {name} does not take that argument: {error}") from None
