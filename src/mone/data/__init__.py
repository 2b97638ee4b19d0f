"""Datasets and the ``build_dataset(name, split, ...)`` factory.

Every dataset yields ``(sample, label)`` with ``sample`` a float tensor (``[C, H, W]`` for images, ``[C, T, H, W]``
for clips) and an int label, and exposes ``num_classes`` and ``input_size`` (the sample shape without batch). New
datasets plug in with :func:`register_dataset`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from .cluttered_digits import ClutteredDigits
from .fashion_mnist import DEFAULT_DATA_DIR as FASHION_MNIST_DIR
from .fashion_mnist import FashionMNIST
from .image_folder import ImageFolderDataset
from .moving_digits import MovingDigits
from .video_folder import VideoFolderDataset

__all__ = [
    "ClutteredDigits",
    "FashionMNIST",
    "ImageFolderDataset",
    "MovingDigits",
    "VideoFolderDataset",
    "build_dataset",
    "list_datasets",
    "register_dataset",
]

_BUILDERS: dict[str, Callable[..., Dataset]] = {}


def register_dataset(name: str) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Decorator: register ``builder(split, data_dir, **kwargs) -> Dataset`` under ``name``."""

    def decorate(builder: Callable[..., Dataset]) -> Callable[..., Dataset]:
        _BUILDERS[name] = builder
        return builder

    return decorate


def list_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset`, sorted."""
    return sorted(_BUILDERS)


def build_dataset(name: str, split: str, data_dir: str | None = None, **kwargs: Any) -> Dataset:
    """Build dataset ``name`` for ``split`` (``train``, ``val`` or ``test``).

    Args:
        name: a registered name (see :func:`list_datasets`).
        split: which split.
        data_dir: where the files are, for datasets read from disk.
        **kwargs: dataset options (e.g. ``img_size``, ``seed``, ``num_samples``).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(list_datasets())}")
    try:
        return _BUILDERS[name](split, data_dir, **kwargs)
    except TypeError as error:  # an option the dataset does not take, e.g. a typo in --dataset-arg
        if "unexpected keyword argument" not in str(error):
            raise
        raise ValueError(f"dataset {name!r} does not take that option: {error}") from None


@register_dataset("cluttered_digits")
def _cluttered_digits(split: str, data_dir: str | None, **kwargs: Any) -> Dataset:
    return ClutteredDigits(split, **kwargs)


@register_dataset("fashion_mnist")
def _fashion_mnist(split: str, data_dir: str | None, **kwargs: Any) -> Dataset:
    return FashionMNIST(split, data_dir or FASHION_MNIST_DIR, **kwargs)


@register_dataset("image_folder")
def _image_folder(split: str, data_dir: str | None, **kwargs: Any) -> Dataset:
    if data_dir is None:
        raise ValueError("dataset image_folder needs --data-dir pointing at a root/<split>/<class>/ tree")
    return ImageFolderDataset(data_dir, split, **kwargs)


@register_dataset("moving_digits")
def _moving_digits(split: str, data_dir: str | None, **kwargs: Any) -> Dataset:
    return MovingDigits(split, **kwargs)


@register_dataset("video_folder")
def _video_folder(split: str, data_dir: str | None, **kwargs: Any) -> Dataset:
    if data_dir is None:
        raise ValueError("dataset video_folder needs --data-dir pointing at a root/<split>/<class>/<clip> tree")
    return VideoFolderDataset(data_dir, split, **kwargs)
