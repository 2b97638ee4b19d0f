"""Moving digits: an embedded video-classification task whose label needs the whole clip.

Each clip shows one of scikit-learn's 1,797 handwritten 8x8 digits, upscaled, moving in a straight line at constant
speed over static clutter (crops of other digits) with fresh pixel noise in every frame. The label is
``digit * num_directions + direction``: the digit can be read from any single frame, its direction of motion only
from several, so a model must combine space and time. As in a real clip most tokens are background or clutter.

Nothing is shipped or downloaded: clips are generated on access, clip ``i`` of a split being a pure function of
``(seed, split, i)``. The source digits are split once, by a fixed permutation that does not depend on ``seed``,
into disjoint train / val / test pools, so no source digit of the test split (clutter included) is seen in training.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import Dataset

from .._checks import check_bool, check_int
from .cluttered_digits import SPLITS, check_split, draw_two_integers, sample_rng, upscaled_pool

__all__ = ["DIRECTIONS", "SPLITS", "MovingDigits", "pixel_stats"]

DIRECTIONS = ("right", "left", "down", "up")  # the first ``num_directions`` are used
_STEPS = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}  # (row, column) per unit of travel
_DEFAULT_NUM_SAMPLES = {"train": 20_000, "val": 1_000, "test": 1_000}
_STATS_CLIPS = 256  # train clips (seed 0) whose pixels give the standardisation of ``normalize``


class MovingDigits(Dataset):
    """Upscaled sklearn digits moving in a straight line over clutter.

    Args:
        split: ``"train"``, ``"val"`` (carved from the train digits, for tuning) or ``"test"``.
        num_samples: clips in the split (default 20,000 / 1,000 / 1,000).
        num_frames: frames per clip ``T``.
        img_size: frame height and width.
        digit_size: side of the upscaled digit (bilinear from 8x8).
        num_directions: 2 (right, left) or 4 (right, left, down, up).
        num_fragments: static distractor crops of other digits per clip.
        fragment_size: side of each distractor crop.
        noise_std: standard deviation of the Gaussian pixel noise, drawn anew for every frame (clipped to [0, 1]).
        in_chans: 1, or 3 to repeat the grey frames over three channels (for RGB models).
        seed: generation seed; the same seed gives the same clips.
        normalize: standardise pixels, ``(x - mean) / std``, with the pixel statistics of the first 256 train clips
            (seed 0) generated with the same settings (:func:`pixel_stats`): the same constants for every split and
            seed, computed, not downloaded), as :class:`~mone.data.cluttered_digits.ClutteredDigits`' ``normalize``.

    Samples are ``(clip [in_chans, T, img_size, img_size] float32 in [0, 1], label int)`` (standardised with
    ``normalize``) with
    ``label = digit * num_directions + direction`` (:data:`DIRECTIONS` order); :meth:`trajectory` gives the digit's
    box in every frame.
    """

    def __init__(
        self,
        split: str = "train",
        num_samples: int | None = None,
        num_frames: int = 16,
        img_size: int = 32,
        digit_size: int = 12,
        num_directions: int = 4,
        num_fragments: int = 4,
        fragment_size: int = 6,
        noise_std: float = 0.05,
        in_chans: int = 1,
        seed: int = 0,
        normalize: bool = False,
    ) -> None:
        check_split(split)
        num_samples = _DEFAULT_NUM_SAMPLES[split] if num_samples is None else num_samples
        for name, value in (("num_samples", num_samples), ("num_frames", num_frames)):
            check_int(name, value, 1)
        if num_frames < 2:
            raise ValueError(f"num_frames must be >= 2 so that motion is visible, got {num_frames}")
        if not 8 <= digit_size < img_size:
            raise ValueError(f"digit_size must be in [8, img_size={img_size}) so the digit can move, got {digit_size}")
        if num_directions not in (2, 4):
            raise ValueError(f"num_directions must be 2 or 4, got {num_directions!r}")
        if not 1 <= fragment_size <= digit_size:
            raise ValueError(f"fragment_size must be in [1, digit_size={digit_size}], got {fragment_size}")
        if num_fragments < 0 or noise_std < 0:
            raise ValueError(f"num_fragments and noise_std must be >= 0, got {num_fragments}, {noise_std}")
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans!r}")
        self.source_indices, self.sources, source_labels = upscaled_pool(split, digit_size)
        self.source_labels = source_labels.numpy()
        self.split = split
        self.num_samples = num_samples
        self.num_frames = num_frames
        self.img_size = img_size
        self.digit_size = digit_size
        self.num_directions = num_directions
        self.num_fragments = num_fragments
        self.fragment_size = fragment_size
        self.noise_std = float(noise_std)
        self.in_chans = in_chans
        self.seed = int(seed)
        self.normalize = check_bool("normalize", normalize)
        self.num_classes = 10 * num_directions
        self.pixel_mean, self.pixel_std = (
            pixel_stats(num_frames, img_size, digit_size, num_directions, num_fragments, fragment_size, self.noise_std)
            if self.normalize else (0.0, 1.0)
        )

    @property
    def input_size(self) -> tuple[int, int, int, int]:
        """``(C, T, H, W)`` of one clip."""
        return (self.in_chans, self.num_frames, self.img_size, self.img_size)

    def __len__(self) -> int:
        return self.num_samples

    def _check_index(self, index: int) -> int:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} clips")
        return index % self.num_samples

    def _rng(self, index: int) -> np.random.Generator:
        return sample_rng(self.seed, self.split, index)

    def _layout(self, rng: np.random.Generator) -> tuple[int, int, np.ndarray]:
        """Draw the source digit, the direction and the per-frame (top, left) positions [T, 2] (first draws)."""
        source = int(rng.integers(len(self.source_labels)))
        direction = int(rng.integers(self.num_directions))
        room = self.img_size - self.digit_size  # free pixels along each axis
        travel = int(rng.integers((room + 1) // 2, room + 1))  # at least half the free room, so motion is clear
        along_start = int(rng.integers(0, room - travel + 1))
        across = int(rng.integers(0, room + 1))
        progress = np.rint(np.linspace(0.0, travel, self.num_frames)).astype(np.int64)  # [T], non-decreasing
        step_row, step_col = _STEPS[DIRECTIONS[direction]]
        # Along the axis of motion, a negative step runs from the far end back; across it the digit stays put.
        along = along_start + progress if step_row + step_col > 0 else room - along_start - progress
        rows = along if step_row else np.full_like(along, across)
        cols = along if step_col else np.full_like(along, across)
        return source, direction, np.stack([rows, cols], axis=1)

    def trajectory(self, index: int) -> np.ndarray:
        """The digit's (top, left) corner in every frame of clip ``index`` [T, 2] (its side is ``digit_size``)."""
        return self._layout(self._rng(self._check_index(index)))[2]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rng = self._rng(self._check_index(index))
        source, direction, positions = self._layout(rng)
        background = np.zeros((self.img_size, self.img_size), dtype=np.float32)
        frag = self.fragment_size
        for _ in range(self.num_fragments):
            other = int(rng.integers(len(self.source_labels)))
            dy, dx = draw_two_integers(rng, self.digit_size - frag + 1)
            y, x = draw_two_integers(rng, self.img_size - frag + 1)
            crop = self.sources[other, dy:dy + frag, dx:dx + frag]
            np.maximum(background[y:y + frag, x:x + frag], crop, out=background[y:y + frag, x:x + frag])
        clip = np.repeat(background[None], self.num_frames, axis=0)  # [T, H, W]
        size = self.digit_size
        for t, (top, left) in enumerate(positions):
            window = clip[t, top:top + size, left:left + size]
            np.maximum(window, self.sources[source], out=window)
        if self.noise_std > 0:
            clip += self.noise_std * rng.standard_normal(clip.shape, dtype=np.float32)
        np.clip(clip, 0.0, 1.0, out=clip)
        if self.normalize:
            clip = (clip - np.float32(self.pixel_mean)) / np.float32(self.pixel_std)
        frames = torch.from_numpy(clip).unsqueeze(0)  # [1, T, H, W]
        if self.in_chans == 3:
            frames = frames.expand(3, -1, -1, -1).contiguous()  # [3, T, H, W]
        return frames, int(self.source_labels[source]) * self.num_directions + direction

    def __repr__(self) -> str:
        return (
            f"MovingDigits(split={self.split!r}, num_samples={self.num_samples}, num_frames={self.num_frames}, "
            f"img_size={self.img_size}, num_directions={self.num_directions}, seed={self.seed}, "
            f"normalize={self.normalize})"
        )


@functools.cache
def pixel_stats(
    num_frames: int, img_size: int, digit_size: int, num_directions: int, num_fragments: int, fragment_size: int,
    noise_std: float,
) -> tuple[float, float]:
    """Pixel mean and standard deviation of the first 256 train clips (seed 0) with these settings, in [0, 1]."""
    clips = MovingDigits("train", _STATS_CLIPS, num_frames=num_frames, img_size=img_size, digit_size=digit_size,
                         num_directions=num_directions, num_fragments=num_fragments, fragment_size=fragment_size,
                         noise_std=noise_std)
    pixels = torch.stack([clips[i][0] for i in range(_STATS_CLIPS)])  # [256, 1, T, H, W]
    return float(pixels.mean()), float(pixels.std())
