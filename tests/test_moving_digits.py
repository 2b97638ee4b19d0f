"""Moving-digits clips and the reader for users' own clips (video files and frame folders)."""

import numpy as np
import pytest
import torch
from PIL import Image

from mone.data.cluttered_digits import source_pool
from mone.data.image_folder import IMAGENET_MEAN, IMAGENET_STD
from mone.data.moving_digits import DIRECTIONS, MovingDigits
from mone.data.video_folder import VideoFolderDataset, read_clip, sample_frame_indices


def test_clip_shape_range_and_labels():
    ds = MovingDigits("train", num_samples=50, num_frames=8, img_size=32)
    clip, label = ds[3]
    assert clip.shape == ds.input_size == (1, 8, 32, 32) and clip.dtype == torch.float32
    assert 0.0 <= clip.min() and clip.max() <= 1.0
    assert isinstance(label, int) and 0 <= label < ds.num_classes == 40
    rgb = MovingDigits("train", num_samples=50, num_frames=8, in_chans=3)[3][0]
    assert rgb.shape == (3, 8, 32, 32) and torch.equal(rgb[0], clip[0]) and torch.equal(rgb[2], clip[0])


def test_clips_are_deterministic_per_seed():
    a, b, c = (MovingDigits("test", num_samples=10, seed=s) for s in (0, 0, 1))
    assert torch.equal(a[7][0], b[7][0]) and a[7][1] == b[7][1]
    assert not torch.equal(a[7][0], c[7][0])
    assert not torch.equal(a[7][0], a[8][0])
    assert not torch.equal(a[7][0], MovingDigits("train", num_samples=10)[7][0])


def test_source_digits_are_disjoint_across_splits():
    pools = {split: set(source_pool(split)[0].tolist()) for split in ("train", "val", "test")}
    assert not pools["train"] & pools["test"] and not pools["train"] & pools["val"] and not pools["val"] & pools["test"]
    assert len(pools["train"] | pools["val"] | pools["test"]) == 1797
    assert MovingDigits("test", num_samples=1).source_indices.tolist() == sorted(pools["test"])


@pytest.mark.parametrize("num_directions", [2, 4])
def test_digit_and_direction_are_what_the_label_says(num_directions):
    ds = MovingDigits("val", num_samples=60, num_frames=6, num_directions=num_directions, num_fragments=0,
                      noise_std=0.0)
    size = ds.digit_size
    seen = set()
    for i in range(len(ds)):
        clip, label = ds[i]
        digit, direction = divmod(label, num_directions)
        seen.add(direction)
        path = ds.trajectory(i)  # [T, 2] (top, left)
        # Without clutter and noise the frame is exactly the digit at its box, zero elsewhere.
        top, left = path[0]
        crop = clip[0, 0, top:top + size, left:left + size].numpy()
        matches = [k for k in range(len(ds.sources)) if np.array_equal(ds.sources[k], crop)]
        assert matches and all(ds.source_labels[k] == digit for k in matches)
        assert clip[0, 0].sum().item() == pytest.approx(float(crop.sum()), rel=1e-6)
        # The digit moves monotonically along its direction, by at least half the free room, and only along it.
        moves = np.diff(path, axis=0)
        step = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}[DIRECTIONS[direction]]
        axis = 0 if step[0] else 1
        assert (moves[:, 1 - axis] == 0).all() and (moves[:, axis] * step[axis] >= 0).all()
        assert abs(path[-1, axis] - path[0, axis]) >= (ds.img_size - size) / 2
        assert path.min() >= 0 and path.max() <= ds.img_size - size
        # The first and last frames differ by the motion: no single frame holds the label.
        assert not torch.equal(clip[:, 0], clip[:, -1])
    assert seen == set(range(num_directions))


def test_every_class_occurs():
    ds = MovingDigits("train", num_samples=400, num_frames=2, num_directions=2)
    labels = [ds[i][1] for i in range(len(ds))]
    assert set(labels) == set(range(ds.num_classes)) and ds.num_classes == 20



def test_normalize_standardises_with_train_statistics_of_the_same_settings():
    settings = dict(num_frames=4, img_size=24, digit_size=14, num_directions=2, num_fragments=1)
    raw = MovingDigits("val", num_samples=6, seed=3, **settings)
    standard = MovingDigits("val", num_samples=6, seed=3, normalize=True, **settings)
    mean, std = standard.pixel_mean, standard.pixel_std
    assert 0.05 < mean < 0.5 and 0.1 < std < 0.5
    for i in range(6):
        (x, y), (z, w) = raw[i], standard[i]
        assert y == w and z.dtype == torch.float32
        torch.testing.assert_close(z, (x - mean) / std, rtol=0, atol=1e-5)
    # The constants come from the train split whatever the split and seed asked for ...
    assert (MovingDigits("test", num_samples=1, seed=9, normalize=True, **settings).pixel_mean,
            MovingDigits("test", num_samples=1, seed=9, normalize=True, **settings).pixel_std) == (mean, std)
    # ... and follow the settings: a larger digit on the same canvas brightens the clips.
    bigger = MovingDigits("val", num_samples=1, normalize=True, **dict(settings, digit_size=20))
    assert bigger.pixel_mean > mean + 0.05
    # Clips the statistics were not computed from (another seed) come out standardised on average.
    pixels = torch.stack([MovingDigits("train", num_samples=200, seed=5, normalize=True, **settings)[i][0]
                          for i in range(200)])
    assert abs(pixels.mean().item()) < 0.05 and abs(pixels.std().item() - 1) < 0.05

@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split": "dev"}, "split"),
        ({"num_directions": 3}, "num_directions"),
        ({"digit_size": 32}, "digit_size"),
        ({"num_frames": 1}, "num_frames"),
        ({"in_chans": 2}, "in_chans"),
        ({"num_samples": 0}, "num_samples"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MovingDigits(**kwargs)


def test_index_out_of_range():
    with pytest.raises(IndexError):
        MovingDigits("test", num_samples=3)[3]


# -- users' clips ------------------------------------------------------------------------------------------------


def _write_video(path, values, height=40, width=48):
    """A clip whose frame k is uniformly grey at ``values[k]``, encoded with MPEG-4 Part 2 (lossy)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for value in values:
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), value, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_frames(folder, frames):
    folder.mkdir(parents=True)
    for k, frame in enumerate(frames):  # frame: uint8 [3, H, W]
        Image.fromarray(frame.permute(1, 2, 0).numpy()).save(folder / f"frame_{k:03d}.png")


def test_sample_frame_indices():
    assert sample_frame_indices(12, 4) == [1, 4, 7, 10]
    assert sample_frame_indices(3, 5) == [0, 0, 1, 2, 2]
    assert sample_frame_indices(8, 8) == list(range(8))
    with pytest.raises(ValueError, match="no frames"):
        sample_frame_indices(0, 4)


def test_read_video_file_samples_uniformly(tmp_path):
    values = [10 + 20 * k for k in range(12)]
    _write_video(tmp_path / "clip.mp4", values)
    clip = read_clip(tmp_path / "clip.mp4", num_frames=4, img_size=16)
    assert clip.shape == (3, 4, 16, 16)
    grey = clip.mean(dim=(0, 2, 3)) * 255
    expected = torch.tensor([values[i] for i in (1, 4, 7, 10)], dtype=torch.float32)
    assert (grey - expected).abs().max() < 8  # lossy codec and YUV conversion; neighbours are 20 apart


def test_read_frame_folder_exactly(tmp_path):
    frames = []
    for k in range(3):
        frame = torch.zeros(3, 8, 16, dtype=torch.uint8)
        frame[:, :, :4] = 255  # left band: cropped away
        frame[:, :, 4:12] = 40 * (k + 1)  # centre square: the frame's value
        frames.append(frame)
    _write_frames(tmp_path / "clip", frames)
    clip = read_clip(tmp_path / "clip", num_frames=5, img_size=8)
    assert clip.shape == (3, 5, 8, 8)
    for t, k in enumerate([0, 0, 1, 2, 2]):
        torch.testing.assert_close(clip[:, t], torch.full((3, 8, 8), 40 * (k + 1) / 255))


def test_video_folder_dataset(tmp_path):
    root = tmp_path / "clips"
    _write_video(root / "train" / "bright" / "a.mp4", [200] * 6)
    _write_frames(root / "train" / "dark" / "b", [torch.full((3, 20, 20), 30, dtype=torch.uint8)] * 4)
    (root / "train" / "dark" / "notes.txt").write_text("not a clip")
    ds = VideoFolderDataset(root, "train", num_frames=4, img_size=8)
    assert ds.classes == ["bright", "dark"] and ds.num_classes == 2 and len(ds) == 2
    assert ds.input_size == (3, 4, 8, 8)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    (bright, label_bright), (dark, label_dark) = ds[0], ds[1]
    assert (label_bright, label_dark) == (0, 1) and bright.shape == dark.shape == (3, 4, 8, 8)
    torch.testing.assert_close(dark * std + mean, torch.full((3, 4, 8, 8), 30 / 255))
    assert ((bright * std + mean) * 255 - 200).abs().max() < 8


def test_video_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoFolderDataset(tmp_path / "missing", "train")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no class sub-folders"):
        VideoFolderDataset(tmp_path / "empty", "train")
    (tmp_path / "empty" / "train" / "cls").mkdir()
    with pytest.raises(ValueError, match="no clips"):
        VideoFolderDataset(tmp_path / "empty", "train")
    bad = tmp_path / "bad" / "train" / "cls"
    bad.mkdir(parents=True)
    (bad / "broken.mp4").write_bytes(b"not a video" * 20)
    (bad / "frames").mkdir()
    ds = VideoFolderDataset(tmp_path / "bad", "train", num_frames=2, img_size=8)
    with pytest.raises(ValueError, match="cannot decode video"):
        ds[0]
    with pytest.raises(ValueError, match="holds no images"):
        ds[1]
    (bad / "frames" / "0.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot decode frame"):
        ds[1]
    with pytest.raises(ValueError, match="num_frames"):
        VideoFolderDataset(tmp_path / "bad", "train", num_frames=0)


def test_build_dataset_knows_the_video_datasets(tmp_path):
    from mone.data import build_dataset, list_datasets

    assert {"moving_digits", "video_folder"} <= set(list_datasets())
    ds = build_dataset("moving_digits", "val", num_samples=5, num_frames=4, seed=3)
    assert isinstance(ds, MovingDigits) and ds.input_size == (1, 4, 32, 32) and len(ds) == 5
    assert torch.equal(ds[2][0], MovingDigits("val", num_samples=5, num_frames=4, seed=3)[2][0])
    with pytest.raises(ValueError, match="--data-dir"):
        build_dataset("video_folder", "train")
    _write_frames(tmp_path / "train" / "only" / "clip", [torch.zeros(3, 8, 8, dtype=torch.uint8)] * 2)
    assert len(build_dataset("video_folder", "train", str(tmp_path), num_frames=2, img_size=8)) == 1
