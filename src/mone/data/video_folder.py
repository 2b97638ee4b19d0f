"""Users' own clips: a ``root/<split>/<class>/<clip>`` tree, each clip a video file or a folder of frame images.

Video files are decoded with PyAV (``pip install 'mone[video]'``); frame folders (PNG, JPEG, ... sorted by file
name) with Pillow, as torchvision's ImageFolder does. Every clip is sampled uniformly to ``num_frames`` frames
(frames repeat when the clip is shorter), its shorter side resized to ``img_size`` and centre-cropped, then
normalised like :class:`~mone.data.image_folder.ImageFolderDataset`. No flips or crops are drawn at random: flipping
a clip would change the meaning of classes such as "moving left".
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .._checks import check_int
from .._extras import require
from .image_folder import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["FRAME_EXTENSIONS", "VIDEO_EXTENSIONS", "VideoFolderDataset", "read_clip", "sample_frame_indices"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def sample_frame_indices(num_available: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread uniformly over ``num_available`` frames (the centre of each of equal segments)."""
    if num_available < 1:
        raise ValueError("the clip has no frames")
    return [min(num_available - 1, int((i + 0.5) * num_available / num_frames)) for i in range(num_frames)]


def _import_av(path: Path):
    """PyAV, or a ValueError saying how to install it (or to use frame folders) for video files such as ``path``."""
    try:
        import av
    except ImportError:
        raise ValueError(f"reading video files such as {path} needs PyAV: pip install 'mone[video]' (or store "
                         f"each clip as a folder of frame images)") from None
    return av


def _decode_video(path: Path) -> torch.Tensor:
    """All frames of a video file as uint8 [L, H, W, 3] (RGB)."""
    av = _import_av(path)
    try:
        with av.open(str(path)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    except (av.error.FFmpegError, IndexError) as error:  # IndexError: no video stream
        raise ValueError(f"cannot decode video {path}: {error}") from None
    if not frames:
        raise ValueError(f"video {path} has no frames")
    return torch.from_numpy(np.stack(frames))


def _decode_frame_folder(path: Path) -> torch.Tensor:
    """The frame images of a folder, in file-name order, as uint8 [L, H, W, 3] (RGB)."""
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS)
    if not files:
        raise ValueError(f"frame folder {path} holds no images ({', '.join(FRAME_EXTENSIONS)})")
    Image = require("PIL.Image", "frame folders", "video")
    frames = []
    for file in files:
        try:
            with Image.open(file) as image:
                frames.append(np.asarray(image.convert("RGB")))  # [H, W, 3]
        except (Image.UnidentifiedImageError, OSError) as error:
            raise ValueError(f"cannot decode frame {file}: {error}") from None
    if len({f.shape for f in frames}) > 1:
        raise ValueError(f"frames in {path} differ in size")
    return torch.from_numpy(np.stack(frames))  # [L, H, W, 3]


def read_clip(path: str | os.PathLike, num_frames: int, img_size: int) -> torch.Tensor:
    """Read a video file or frame folder -> float clip [3, num_frames, img_size, img_size] in [0, 1].

    Frames are sampled uniformly (:func:`sample_frame_indices`), the shorter side resized to ``img_size``
    (bilinear, antialiased) and the centre cropped square.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"clip {path} does not exist")
    frames = _decode_frame_folder(path) if path.is_dir() else _decode_video(path)  # [L, H, W, 3]
    frames = frames[sample_frame_indices(frames.shape[0], num_frames)]  # [T, H, W, 3]
    clip = frames.permute(0, 3, 1, 2).float() / 255.0  # [T, 3, H, W]
    H, W = clip.shape[-2:]
    scale = img_size / min(H, W)
    size = (max(img_size, round(H * scale)), max(img_size, round(W * scale)))
    clip = F.interpolate(clip, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left = (size[0] - img_size) // 2, (size[1] - img_size) // 2
    clip = clip[:, :, top:top + img_size, left:left + img_size].clamp_(0.0, 1.0)
    return clip.permute(1, 0, 2, 3).contiguous()  # [3, T, img_size, img_size]


class VideoFolderDataset(Dataset):
    """``root/<split>/<class>/<clip>`` where a clip is a video file or a folder of frame images.

    Args:
        root: dataset root holding one folder per split.
        split: sub-folder to read (``"train"``, ``"val"``, ``"test"``).
        num_frames: frames sampled per clip ``T``.
        img_size: output height and width.

    Samples are ``(clip [3, T, img_size, img_size] float32, label int)``, normalised with the ImageNet mean and
    std; classes are the sorted sub-folder names.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", num_frames: int = 16, img_size: int = 224):
        for name, value in (("num_frames", num_frames), ("img_size", img_size)):
            check_int(name, value, 1)
        folder = Path(root) / split
        if not folder.is_dir():
            raise FileNotFoundError(f"video folder {folder} does not exist; expected {root}/<split>/<class>/<clips>")
        self.classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if not self.classes:
            raise ValueError(f"video folder {folder} has no class sub-folders")
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            for clip in sorted((folder / name).iterdir()):
                if clip.is_dir() or clip.suffix.lower() in VIDEO_EXTENSIONS:
                    self.samples.append((clip, label))
        if not self.samples:
            raise ValueError(
                f"video folder {folder} holds no clips: expected video files ({', '.join(VIDEO_EXTENSIONS)}) or "
                f"folders of frames under {folder}/<class>/"
            )
        video_files = [clip for clip, _ in self.samples if not clip.is_dir()]
        if video_files:  # fail now, not at the first batch
            _import_av(video_files[0])
        self.split = split
        self.num_frames = num_frames
        self.img_size = img_size
        self.num_classes = len(self.classes)
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)

    @property
    def input_size(self) -> tuple[int, int, int, int]:
        """``(C, T, H, W)`` of one clip."""
        return (3, self.num_frames, self.img_size, self.img_size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        clip = read_clip(path, self.num_frames, self.img_size)  # [3, T, H, W] in [0, 1]
        return (clip - self._mean) / self._std, label
