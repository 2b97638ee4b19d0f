"""Users' own images: any ``root/<split>/<class>/<image>`` tree, read with torchvision's ImageFolder.

torchvision and Pillow come with the ``train`` extra and are imported when a dataset is built, so ``import mone``
(and ``mone.data``) works without them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .._extras import require

__all__ = ["ImageFolderDataset", "build_transform", "load_rgb", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CROP_PCT = 0.875  # eval resize = img_size / crop_pct, then centre crop (the usual ImageNet recipe)


def build_transform(img_size: int, train: bool) -> Any:
    """The usual recipe: random resized crop and flip for training; resize and centre crop for evaluation.

    Output: a torchvision ``Compose`` giving float tensors [3, img_size, img_size], normalised with the ImageNet mean
    and std.
    """
    transforms = require("torchvision.transforms", "image folders", "train")
    if train:
        geometry = [transforms.RandomResizedCrop(img_size, scale=(0.35, 1.0)), transforms.RandomHorizontalFlip()]
    else:
        geometry = [transforms.Resize(round(img_size / _CROP_PCT)), transforms.CenterCrop(img_size)]
    return transforms.Compose(
        [*geometry, transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )


def load_rgb(path: str) -> Any:
    """The image at ``path`` as an RGB ``PIL.Image``; a file PIL cannot read (truncated, empty, not an image) is a
    ValueError naming it.

    Files are only decoded when a batch needs them: checking a large tree up front would cost a full pass over it.
    """
    Image = require("PIL.Image", "image folders", "train")
    try:
        with open(path, "rb") as handle:
            image = Image.open(handle)
            return image.convert("RGB")  # decodes the whole image, so truncation shows here
    except (Image.UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:  # SyntaxError: broken PNGs
        raise ValueError(f"cannot read image {path} ({error}); remove or replace the file") from None


class ImageFolderDataset(Dataset):
    """``root/<split>/<class>/*.jpg`` (any format PIL reads), images converted to RGB (:func:`load_rgb`).

    Args:
        root: dataset root holding one folder per split.
        split: sub-folder to read (``"train"``, ``"val"``, ``"test"``); training augmentation only for ``"train"``.
        img_size: output height and width.

    Samples are ``(image [3, img_size, img_size] float32, label int)``. The files are listed by torchvision's
    ``ImageFolder`` (``self.folder``); ``classes``, ``class_to_idx``, ``samples`` and ``targets`` are its own.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", img_size: int = 224) -> None:
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
            raise ValueError(f"img_size must be an integer >= 1, got {img_size!r}")
        folder = Path(root) / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"image folder {folder} does not exist; expected {root}/<split>/<class>/<image files>"
            )
        datasets = require("torchvision.datasets", "image folders", "train")
        self.folder = datasets.ImageFolder(str(folder), transform=build_transform(img_size, train=split == "train"),
                                           loader=load_rgb)
        self.classes, self.class_to_idx = self.folder.classes, self.folder.class_to_idx
        self.samples, self.targets = self.folder.samples, self.folder.targets
        self.split = split
        self.img_size = img_size
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.folder[index]

    @property
    def input_size(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one sample."""
        return (3, self.img_size, self.img_size)
