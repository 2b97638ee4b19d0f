"""Users' own images: any ``root/<split>/<class>/<image>`` tree, read with torchvision's ImageFolder."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torchvision import datasets, transforms

__all__ = ["ImageFolderDataset", "build_transform", "load_rgb", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CROP_PCT = 0.875  # eval resize = img_size / crop_pct, then centre crop (the usual ImageNet recipe)


def build_transform(img_size: int, train: bool) -> transforms.Compose:
    """The usual recipe: random resized crop and flip for training; resize and centre crop for evaluation.

    Output: float tensors [3, img_size, img_size], normalised with the ImageNet mean and std.
    """
    if train:
        geometry = [transforms.RandomResizedCrop(img_size, scale=(0.35, 1.0)), transforms.RandomHorizontalFlip()]
    else:
        geometry = [transforms.Resize(round(img_size / _CROP_PCT)), transforms.CenterCrop(img_size)]
    return transforms.Compose(
        [*geometry, transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )


def load_rgb(path: str) -> Image.Image:
    """The image at ``path`` in RGB; a file PIL cannot read (truncated, empty, not an image) is a ValueError naming it.

    Files are only decoded when a batch needs them: checking a large tree up front would cost a full pass over it.
    """
    try:
        with open(path, "rb") as handle:
            image = Image.open(handle)
            return image.convert("RGB")  # decodes the whole image, so truncation shows here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:  # SyntaxError: some broken PNGs
        raise ValueError(f"cannot read image {path} ({error}); remove or replace the file") from None


class ImageFolderDataset(datasets.ImageFolder):
    """``root/<split>/<class>/*.jpg`` (any format PIL reads), images converted to RGB (:func:`load_rgb`).

    Args:
        root: dataset root holding one folder per split.
        split: sub-folder to read (``"train"``, ``"val"``, ``"test"``); training augmentation only for ``"train"``.
        img_size: output height and width.

    Samples are ``(image [3, img_size, img_size] float32, label int)``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", img_size: int = 224) -> None:
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
            raise ValueError(f"img_size must be an integer >= 1, got {img_size!r}")
        folder = Path(root) / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"image folder {folder} does not exist; expected {root}/<split>/<class>/<image files>"
            )
        super().__init__(str(folder), transform=build_transform(img_size, train=split == "train"), loader=load_rgb)
        self.split = split
        self.img_size = img_size
        self.num_classes = len(self.classes)

    @property
    def input_size(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one sample."""
        return (3, self.img_size, self.img_size)
