"""Training presets as plain functions (big_vision style): each returns a :class:`~mone.train.config.TrainConfig`.

Every preset takes ``local``: ``True`` shrinks it to a seconds-long run on a laptop CPU (smoke tests, examples).
Use them from Python (``mone.configs.get_config("demo_mone")``) or the command line
(``mone train --config demo_mone [--local] [--steps 500 ...]``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..train.config import TrainConfig
from .demo import DEMO_MODEL_KWARGS, demo
from .presets import fashion_mnist_adaptive, imagenet_vit_s16_adaptive
from .video import VIDEO_VARIANTS, video

__all__ = ["DEMO_MODEL_KWARGS", "PRESETS", "VIDEO_VARIANTS", "demo", "get_config", "list_configs", "video"]

PRESETS: dict[str, Callable[[bool], TrainConfig]] = {
    "demo_dense": lambda local=False: demo("dense", local),
    "demo_mone": lambda local=False: demo("mone", local),
    "demo_adaptive": lambda local=False: demo("adaptive", local),
    "demo_dense_half": lambda local=False: demo("dense_half", local),
    "demo_nested": lambda local=False: demo("nested", local),
    "demo_upcycle": lambda local=False: demo("upcycle", local),
    "demo_finetune": lambda local=False: demo("finetune", local),
    "video_dense": lambda local=False: video("dense", local),
    "video_dense_half": lambda local=False: video("dense_half", local),
    "video_nested": lambda local=False: video("nested", local),
    "video_finetune": lambda local=False: video("finetune", local),
    "fashion_mnist_adaptive": fashion_mnist_adaptive,
    "imagenet_vit_s16_adaptive": imagenet_vit_s16_adaptive,
}


def list_configs() -> list[str]:
    """Preset names, sorted."""
    return sorted(PRESETS)


def get_config(name: str, local: bool = False, **overrides: Any) -> TrainConfig:
    """The preset ``name`` (shrunk when ``local``), with ``overrides`` applied to its fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown config {name!r}; available: {', '.join(list_configs())}")
    return PRESETS[name](local).replace(**overrides)
