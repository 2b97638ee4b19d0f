"""Cluttered digits: an embedded image-classification task where one region of the image matters.

scikit-learn ships 1,797 handwritten digits of 8x8 pixels. Each sample here upscales one of them, places it at a
random position on a larger canvas, and adds distractor clutter: crops of *other* digits placed away from the
digit (by default 4x4-pixel crops, a quarter of the digit's side, as in cluttered MNIST), plus pixel noise. Most
tokens of such an image are redundant, which is the situation MoNE is built for.

Nothing is shipped or downloaded: samples are generated on access, sample ``i`` of a split being a pure function of
``(seed, split, i)``. The source digits are split once, with a fixed permutation that does not depend on ``seed``,
into disjoint train / val / test pools, so no source digit of the test split is ever seen in training (clutter
included).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .._checks import check_bool
from .._extras import require

__all__ = ["ClutteredDigits", "SPLITS", "check_split", "sample_rng", "source_pool", "upscaled_pool"]

SPLITS = ("train", "val", "test")
_SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
_SOURCE_PERMUTATION_SEED = 20240729  # fixed: the train/val/test source pools never depend on the data seed
_TEST_FRACTION, _VAL_FRACTION = 0.2, 0.1
_DEFAULT_NUM_SAMPLES = {"train": 50_000, "val": 2_000, "test": 2_000}
# Pixel mean and standard deviation of the default train split (32 px canvas, 2,000 samples: 0.1094 and 0.2217).
MEAN, STD = 0.11, 0.22

Box = tuple[int, int, int, int]  # (top, left, bottom, right) in pixels, bottom/right exclusive


def source_pool(split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The split's source digits: indices into sklearn's digits [M], images [M, 8, 8] in [0, 1], labels [M].

    The pools are disjoint across splits and fixed (they never depend on a data seed); moving digits use them too.
    """
    datasets = require("sklearn.datasets", "the digit datasets (cluttered_digits, moving_digits)", "train")
    digits = datasets.load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32) / 16.0  # [1797, 8, 8]
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    order = np.random.default_rng(_SOURCE_PERMUTATION_SEED).permutation(len(labels))
    num_test = round(_TEST_FRACTION * len(labels))
    num_val = round(_VAL_FRACTION * len(labels))
    pools = {"test": order[:num_test], "val": order[num_test:num_test + num_val], "train": order[num_test + num_val:]}
    index = torch.as_tensor(np.sort(pools[split]))
    return index, images[index], labels[index]


def upscaled_pool(split: str, digit_size: int) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """:func:`source_pool` with the digits upscaled (bilinear) to ``digit_size`` pixels: indices [M], images
    [M, digit_size, digit_size] in [0, 1] as a NumPy array (what samples are drawn from), labels [M]."""
    index, images, labels = source_pool(split)
    upscaled = F.interpolate(images.unsqueeze(1), size=(digit_size, digit_size), mode="bilinear", align_corners=False)
    return index, upscaled.squeeze(1).clamp_(0.0, 1.0).numpy(), labels


def check_split(split: str) -> None:
    """ValueError unless ``split`` is one of :data:`SPLITS`."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of ``split``: what makes a sample a pure function of (seed, split, index)."""
    return np.random.default_rng([seed, _SPLIT_IDS[split], index])


def draw_two_integers(rng: np.random.Generator, high: int) -> tuple[int, int]:
    """Two draws from ``[0, high)``: the same stream as ``rng.integers(0, high, size=2)``, three times faster."""
    return int(rng.integers(high)), int(rng.integers(high))


def _boxes_overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


class ClutteredDigits(Dataset):
    """Upscaled sklearn digits at random positions on a cluttered canvas.

    Args:
        split: ``"train"``, ``"val"`` (carved from the train digits, for tuning) or ``"test"``.
        num_samples: samples in the split (default 50,000 / 2,000 / 2,000).
        img_size: canvas height and width.
        digit_size: side of the upscaled digit (bilinear from 8x8).
        num_fragments: distractor crops of other digits per image.
        fragment_size: side of each distractor crop (taken from an upscaled digit).
        noise_std: standard deviation of the additive Gaussian pixel noise (images are clipped to [0, 1]).
        seed: generation seed; the same seed gives the same samples.
        normalize: standardise pixels with the train split's statistics, ``(x - MEAN) / STD``, as a
            ``transforms.Normalize`` would. Without it a ViT trained from scratch sits at chance for a few hundred
            steps: the pooled tokens are dominated by the near-constant background.

    Samples are ``(image [1, img_size, img_size] float32, label int)``, pixels in [0, 1] (standardised with
    ``normalize``); :meth:`box` gives the digit's box.
    """

    num_classes = 10

    def __init__(
        self,
        split: str = "train",
        num_samples: int | None = None,
        img_size: int = 32,
        digit_size: int = 16,
        num_fragments: int = 3,
        fragment_size: int = 4,
        noise_std: float = 0.05,
        seed: int = 0,
        normalize: bool = False,
    ) -> None:
        check_split(split)
        num_samples = _DEFAULT_NUM_SAMPLES[split] if num_samples is None else num_samples
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        if not 8 <= digit_size <= img_size:
            raise ValueError(f"digit_size must be in [8, img_size={img_size}], got {digit_size}")
        if not 1 <= fragment_size <= digit_size:
            raise ValueError(f"fragment_size must be in [1, digit_size={digit_size}], got {fragment_size}")
        if num_fragments < 0 or noise_std < 0:
            raise ValueError(f"num_fragments and noise_std must be >= 0, got {num_fragments}, {noise_std}")
        self.split = split
        self.num_samples = num_samples
        self.img_size = img_size
        self.digit_size = digit_size
        self.num_fragments = num_fragments
        self.fragment_size = fragment_size
        self.noise_std = float(noise_std)
        self.seed = int(seed)
        self.normalize = check_bool("normalize", normalize)
        self.source_indices, self.sources, self.source_labels = upscaled_pool(split, digit_size)

    @property
    def input_size(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one sample."""
        return (1, self.img_size, self.img_size)

    def __len__(self) -> int:
        return self.num_samples

    def _rng(self, index: int) -> np.random.Generator:
        return sample_rng(self.seed, self.split, index)

    def _layout(self, rng: np.random.Generator) -> tuple[int, Box]:
        """Draw the source digit and its box (the first draws of a sample's generator)."""
        source = int(rng.integers(len(self.source_labels)))
        top, left = draw_two_integers(rng, self.img_size - self.digit_size + 1)
        return source, (top, left, top + self.digit_size, left + self.digit_size)

    def _check_index(self, index: int) -> int:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        return index % self.num_samples

    def box(self, index: int) -> Box:
        """The digit's box ``(top, left, bottom, right)`` in pixels (bottom/right exclusive) for sample ``index``."""
        return self._layout(self._rng(self._check_index(index)))[1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rng = self._rng(self._check_index(index))
        source, box = self._layout(rng)
        canvas = np.zeros((self.img_size, self.img_size), dtype=np.float32)
        size, frag = self.digit_size, self.fragment_size
        for _ in range(self.num_fragments):
            other = int(rng.integers(len(self.source_labels)))
            dy, dx = draw_two_integers(rng, size - frag + 1)
            crop = self.sources[other, dy:dy + frag, dx:dx + frag]
            # Place the crop away from the digit so the label stays unambiguous (give up after a few tries).
            for _attempt in range(20):
                y, x = draw_two_integers(rng, self.img_size - frag + 1)
                if not _boxes_overlap((y, x, y + frag, x + frag), box):
                    break
            np.maximum(canvas[y:y + frag, x:x + frag], crop, out=canvas[y:y + frag, x:x + frag])
        top, left, bottom, right = box
        np.maximum(canvas[top:bottom, left:right], self.sources[source], out=canvas[top:bottom, left:right])
        if self.noise_std > 0:
            canvas += self.noise_std * rng.standard_normal(canvas.shape, dtype=np.float32)
        np.clip(canvas, 0.0, 1.0, out=canvas)
        if self.normalize:
            canvas = (canvas - MEAN) / STD
        return torch.from_numpy(canvas).unsqueeze(0), int(self.source_labels[source])

    def __repr__(self) -> str:
        return (
            f"ClutteredDigits(split={self.split!r}, num_samples={self.num_samples}, img_size={self.img_size}, "
            f"digit_size={self.digit_size}, num_fragments={self.num_fragments}, seed={self.seed})"
        )
