"""Fashion-MNIST read straight from its four IDX files (optionally gzip-compressed).

By default the files are looked up where the Debian package ``dataset-fashion-mnist`` installs them. The last
``val_size`` training images form the ``val`` split (for tuning); ``train`` is the rest; ``test`` is the t10k set.

``normalize=True`` standardises pixels with :data:`MEAN` and :data:`STD`, the pixel mean and standard deviation of
the default ``train`` split (the first 55,000 training images, 28x28, pixels in [0, 1]): a fixed pair, the same
for every split, ``img_size`` and ``data_dir``, as a ``transforms.Normalize`` would apply. Padding comes first, with
0 (black, the Fashion-MNIST background), so padded pixels are the standardised background ``-MEAN / STD`` like the
image's own border, and the canvas is one consistent picture. On a 32 px canvas the standardised train pixels
therefore have mean -0.19 and standard deviation 0.94 (exactly 0 and 1 at 28 px).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .._checks import check_bool

__all__ = ["DEFAULT_DATA_DIR", "MEAN", "STD", "FashionMNIST", "read_idx"]

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_HOW_TO_GET = (
    "install it with `apt-get install dataset-fashion-mnist` (files land in /usr/share/datasets/fashion-mnist), "
    "or download the four IDX files from https://github.com/zalandoresearch/fashion-mnist and pass --data-dir"
)
_UBYTE = 0x08
# Pixel mean and standard deviation of the default train split (55,000 images of 28x28, pixels in [0, 1]):
# 0.285817 and 0.352937, computed with NumPy from train-images-idx3-ubyte.gz (all 60,000: 0.286040 and 0.353024).
MEAN, STD = 0.2858, 0.3529


def read_idx(path: str | os.PathLike, expected_dims: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (``.gz`` or raw) into a uint8 array of ``expected_dims`` dimensions.

    Raises ValueError naming the file when its header or size is not a valid IDX file of that kind.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:  # truncated or not gzip at all
        raise ValueError(f"corrupt IDX file {path}: {error}; {_HOW_TO_GET}") from None
    if len(data) < 4 + 4 * expected_dims:
        raise ValueError(f"corrupt IDX file {path}: only {len(data)} bytes; {_HOW_TO_GET}")
    zero, dtype, dims = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or dtype != _UBYTE or dims != expected_dims:
        raise ValueError(
            f"corrupt IDX file {path}: header says type 0x{dtype:02x} with {dims} dims, expected unsigned bytes "
            f"with {expected_dims} dims; {_HOW_TO_GET}"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    offset = 4 + 4 * dims
    if len(data) - offset != int(np.prod(shape)):
        raise ValueError(
            f"corrupt IDX file {path}: header promises shape {shape} ({int(np.prod(shape))} bytes) but "
            f"{len(data) - offset} bytes follow; {_HOW_TO_GET}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _find(data_dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    raise FileNotFoundError(f"Fashion-MNIST file {stem}[.gz] not found in {data_dir}; {_HOW_TO_GET}")


class FashionMNIST(Dataset):
    """Fashion-MNIST: 28x28 grey images of 10 clothing classes.

    Args:
        split: ``"train"``, ``"val"`` (the last ``val_size`` training images) or ``"test"``.
        data_dir: folder with the IDX files (default :data:`DEFAULT_DATA_DIR`).
        img_size: output side; larger than 28 zero-pads around the centre, smaller resizes (bilinear).
        val_size: training images held out as the validation split.
        num_samples: keep only the split's first ``num_samples`` images (default: all of them).
        normalize: standardise pixels, ``(x - MEAN) / STD``, after padding (see the module docstring).

    Samples are ``(image [1, img_size, img_size] float32, label int)``, pixels in [0, 1] (standardised with
    ``normalize``).
    """

    num_classes = 10
    classes = CLASSES

    def __init__(
        self,
        split: str = "train",
        data_dir: str | os.PathLike | None = None,
        img_size: int = 28,
        val_size: int = 5000,
        num_samples: int | None = None,
        normalize: bool = False,
    ) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be one of train, val, test, got {split!r}")
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
            raise ValueError(f"img_size must be an integer >= 1, got {img_size!r}")
        check_bool("normalize", normalize)  # e.g. the string "false" from --dataset-arg, which bool() makes True
        data_dir = Path(DEFAULT_DATA_DIR if data_dir is None else data_dir)
        if not data_dir.is_dir():
            raise FileNotFoundError(f"Fashion-MNIST folder {data_dir} does not exist; {_HOW_TO_GET}")
        image_stem, label_stem = _FILES["test" if split == "test" else "train"]
        images = read_idx(_find(data_dir, image_stem), 3)  # [M, 28, 28]
        labels = read_idx(_find(data_dir, label_stem), 1)  # [M]
        if len(images) != len(labels):
            raise ValueError(f"corrupt Fashion-MNIST in {data_dir}: {len(images)} images but {len(labels)} labels")
        if labels.size and labels.max() >= self.num_classes:
            raise ValueError(f"corrupt Fashion-MNIST in {data_dir}: label {labels.max()} outside 0..9")
        if split != "test":
            if not 0 <= val_size < len(labels):
                raise ValueError(f"val_size must be in [0, {len(labels)}), got {val_size}")
            cut = len(labels) - val_size
            images, labels = (images[:cut], labels[:cut]) if split == "train" else (images[cut:], labels[cut:])
        if num_samples is not None:
            if isinstance(num_samples, bool) or not isinstance(num_samples, int) or not 1 <= num_samples <= len(labels):
                raise ValueError(f"num_samples must be an integer in [1, {len(labels)}] for split {split!r}, "
                                 f"got {num_samples!r}")
            images, labels = images[:num_samples], labels[:num_samples]
        self.split = split
        self.img_size = img_size
        self.normalize = normalize
        self.images = torch.from_numpy(images.copy())  # [M, 28, 28] uint8
        self.labels = torch.from_numpy(labels.astype(np.int64))

    @property
    def input_size(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one sample."""
        return (1, self.img_size, self.img_size)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].float().div_(255.0).unsqueeze(0)  # [1, 28, 28]
        side = image.shape[-1]
        if self.img_size > side:
            before = (self.img_size - side) // 2
            after = self.img_size - side - before
            image = F.pad(image, (before, after, before, after))
        elif self.img_size < side:
            image = F.interpolate(image.unsqueeze(0), size=(self.img_size,) * 2, mode="bilinear",
                                  align_corners=False).squeeze(0)
        if self.normalize:
            image = image.sub_(MEAN).div_(STD)
        return image, int(self.labels[index])
