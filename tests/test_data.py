"""Datasets: cluttered digits, Fashion-MNIST IDX files, ImageFolder trees and the build_dataset factory."""

from __future__ import annotations

import gzip
import os
import struct
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from sklearn.datasets import load_digits

from mone.cli import main
from mone.data import ClutteredDigits, FashionMNIST, VideoFolderDataset, build_dataset, list_datasets
from mone.data.cluttered_digits import draw_two_integers
from mone.data.fashion_mnist import DEFAULT_DATA_DIR as FASHION_DIR
from mone.data.fashion_mnist import MEAN as FASHION_MEAN
from mone.data.fashion_mnist import STD as FASHION_STD
from mone.data.fashion_mnist import read_idx

# -- cluttered digits ---------------------------------------------------------------------------------------------

def test_cluttered_digits_samples_are_float_images_with_int_labels():
    data = ClutteredDigits("train", num_samples=20, img_size=40, digit_size=16, seed=3)
    assert len(data) == 20 and data.input_size == (1, 40, 40) and data.num_classes == 10
    for i in range(len(data)):
        image, label = data[i]
        assert image.shape == (1, 40, 40) and image.dtype == torch.float32
        assert isinstance(label, int) and 0 <= label < 10
        assert 0.0 <= image.min() and image.max() <= 1.0
        top, left, bottom, right = data.box(i)
        assert bottom - top == 16 and right - left == 16 and 0 <= top and bottom <= 40 and 0 <= left and right <= 40


def test_cluttered_digits_are_deterministic_per_seed():
    first = ClutteredDigits("train", num_samples=8, seed=5)
    again = ClutteredDigits("train", num_samples=8, seed=5)
    other = ClutteredDigits("train", num_samples=8, seed=6)
    for i in (0, 3, 7):  # any access order gives the same sample
        assert torch.equal(first[i][0], again[i][0]) and first[i][1] == again[i][1]
    assert torch.equal(first[7][0], again[7][0])
    assert any(not torch.equal(first[i][0], other[i][0]) for i in range(8))


@given(seed=st.integers(0, 2**32 - 1), high=st.integers(1, 1000))
def test_two_scalar_draws_follow_the_size_two_stream(seed, high):
    """The scalar draws that make samples cheap give exactly the samples of ``integers(0, high, size=2)``."""
    reference, rng = np.random.default_rng(seed), np.random.default_rng(seed)
    assert list(draw_two_integers(rng, high)) == reference.integers(0, high, size=2).tolist()
    assert rng.integers(1 << 40) == reference.integers(1 << 40)  # and the generators stay in step


def test_cluttered_digit_sits_in_its_box_and_matches_an_upscaled_sklearn_digit():
    digits = load_digits()
    data = ClutteredDigits("test", num_samples=10, num_fragments=0, noise_std=0.0, digit_size=16, seed=1)
    reference = F.interpolate(torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1), size=(16, 16),
                              mode="bilinear", align_corners=False).squeeze(1).clamp(0, 1)  # [1797, 16, 16]
    test_pool = set(data.source_indices.tolist())
    for i in range(len(data)):
        image, label = data[i]
        top, left, bottom, right = data.box(i)
        inside = image[0, top:bottom, left:right]
        outside = image[0].clone()
        outside[top:bottom, left:right] = 0
        assert outside.abs().sum() == 0  # no clutter, no noise: nothing outside the box
        distance = (reference - inside).abs().flatten(1).amax(dim=1)
        source = int(distance.argmin())
        assert distance[source] < 1e-6
        assert digits.target[source] == label and source in test_pool


def test_cluttered_digits_clutter_stays_off_the_digit():
    data = ClutteredDigits("train", num_samples=30, num_fragments=3, noise_std=0.0, img_size=48, seed=2)
    clean = ClutteredDigits("train", num_samples=30, num_fragments=0, noise_std=0.0, img_size=48, seed=2)
    cluttered = 0
    for i in range(len(data)):
        assert data.box(i) == clean.box(i)
        top, left, bottom, right = data.box(i)
        # the digit region is untouched by the fragments on a canvas roomy enough to place them elsewhere
        assert torch.equal(data[i][0][0, top:bottom, left:right], clean[i][0][0, top:bottom, left:right])
        cluttered += int(data[i][0].sum() > clean[i][0].sum())
    assert cluttered >= 25  # fragments are (almost always) there


def test_cluttered_digit_splits_use_disjoint_source_digits():
    pools = {split: set(ClutteredDigits(split, num_samples=1).source_indices.tolist())
             for split in ("train", "val", "test")}
    assert not pools["train"] & pools["test"] and not pools["train"] & pools["val"] and not pools["val"] & pools["test"]
    assert len(pools["train"] | pools["val"] | pools["test"]) == len(load_digits().target)
    assert len(pools["test"]) == round(0.2 * 1797) and len(pools["val"]) == round(0.1 * 1797)


def test_cluttered_digits_reject_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        ClutteredDigits("validation")
    with pytest.raises(ValueError, match="digit_size"):
        ClutteredDigits("train", img_size=12, digit_size=16)
    with pytest.raises(ValueError, match="num_samples"):
        ClutteredDigits("train", num_samples=0)
    with pytest.raises(IndexError):
        ClutteredDigits("train", num_samples=3)[3]


# -- Fashion-MNIST ------------------------------------------------------------------------------------------------

def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(struct.pack(">I", n) for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def _fake_fashion_mnist(folder, num_train=12, num_test=5, compress=True):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (num_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, num_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (num_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, num_test),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        _write_idx(folder / name, array, compress)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_reads_idx_files_and_carves_validation(tmp_path, compress):
    arrays = _fake_fashion_mnist(tmp_path, compress=compress)
    train = FashionMNIST("train", tmp_path, val_size=4)
    val = FashionMNIST("val", tmp_path, val_size=4)
    test = build_dataset("fashion_mnist", "test", str(tmp_path))
    assert (len(train), len(val), len(test)) == (8, 4, 5)
    image, label = val[1]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and isinstance(label, int)
    np.testing.assert_allclose(image[0].numpy(), arrays["train-images-idx3-ubyte"][9] / 255.0, rtol=0, atol=1e-7)
    assert label == arrays["train-labels-idx1-ubyte"][9]
    assert test[4][1] == arrays["t10k-labels-idx1-ubyte"][4]


def test_fashion_mnist_pads_to_larger_images(tmp_path):
    arrays = _fake_fashion_mnist(tmp_path)
    image, _ = FashionMNIST("test", tmp_path, img_size=32)[2]
    assert image.shape == (1, 32, 32)
    np.testing.assert_allclose(image[0, 2:30, 2:30].numpy(), arrays["t10k-images-idx3-ubyte"][2] / 255.0, atol=1e-7)
    assert image[0, :2].abs().sum() == 0 and image[0, :, 30:].abs().sum() == 0


def test_fashion_mnist_normalize_pads_with_black_then_standardises(tmp_path):
    arrays = _fake_fashion_mnist(tmp_path)
    plain, _ = FashionMNIST("test", tmp_path, img_size=32)[3]
    image, label = build_dataset("fashion_mnist", "test", str(tmp_path), img_size=32, normalize=True)[3]
    assert image.shape == (1, 32, 32) and label == arrays["t10k-labels-idx1-ubyte"][3]
    expected = (arrays["t10k-images-idx3-ubyte"][3] / 255.0 - FASHION_MEAN) / FASHION_STD
    np.testing.assert_allclose(image[0, 2:30, 2:30].numpy(), expected, rtol=0, atol=1e-5)
    # The padding is the standardised black background, like a zero pixel inside the image.
    border = torch.cat([image[0, :2].flatten(), image[0, 30:].flatten(), image[0, :, :2].flatten()])
    assert torch.allclose(border, torch.tensor(-FASHION_MEAN / FASHION_STD))
    torch.testing.assert_close(image, (plain - FASHION_MEAN) / FASHION_STD)
    with pytest.raises(ValueError, match="normalize must be True or False"):
        FashionMNIST("test", tmp_path, normalize="false")


def test_fashion_mnist_num_samples_keeps_the_first_images(tmp_path):
    arrays = _fake_fashion_mnist(tmp_path)
    val = FashionMNIST("val", tmp_path, val_size=4, num_samples=3)
    assert len(val) == 3 and val[2][1] == arrays["train-labels-idx1-ubyte"][10]
    for bad in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match=r"num_samples must be an integer in \[1, 4\]"):
            FashionMNIST("val", tmp_path, val_size=4, num_samples=bad)


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason=f"Fashion-MNIST not installed in {FASHION_DIR}")
def test_fashion_mnist_standardised_train_pixels_have_mean_0_and_std_1():
    # Independent of the loader: parse the IDX file with NumPy (16-byte header), take the train split (all but the
    # last 5,000 images) and standardise with the documented constants.
    with gzip.open(f"{FASHION_DIR}/train-images-idx3-ubyte.gz", "rb") as handle:
        raw = np.frombuffer(handle.read(), dtype=np.uint8, offset=16).reshape(60_000, 28, 28)
    train = (raw[:55_000].astype(np.float64) / 255.0 - FASHION_MEAN) / FASHION_STD
    assert abs(train.mean()) < 1e-3 and abs(train.std() - 1.0) < 1e-3
    # The loader gives exactly those pixels (28 px), and at 32 px the same pixels inside a standardised-black frame.
    data, padded = FashionMNIST("train", normalize=True), FashionMNIST("train", img_size=32, normalize=True)
    assert len(data) == 55_000
    for index in (0, 1234, 54_999):
        np.testing.assert_allclose(data[index][0][0].numpy(), train[index], rtol=0, atol=1e-5)
        np.testing.assert_allclose(padded[index][0][0, 2:30, 2:30].numpy(), train[index], rtol=0, atol=1e-5)


def test_fashion_mnist_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        FashionMNIST("train", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        FashionMNIST("train", tmp_path / "empty")


def test_fashion_mnist_corrupt_files_are_reported(tmp_path):
    _fake_fashion_mnist(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    good = path.read_bytes()
    path.write_bytes(good[:-10])  # truncated
    with pytest.raises(ValueError, match="corrupt IDX file"):
        FashionMNIST("train", tmp_path)
    path.write_bytes(b"\x00\x00\x0d\x03" + good[4:])  # float type code instead of unsigned bytes
    with pytest.raises(ValueError, match="corrupt IDX file"):
        FashionMNIST("train", tmp_path)
    path.unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="corrupt IDX file"):
        read_idx(tmp_path / "train-images-idx3-ubyte.gz", 3)


def test_fashion_mnist_label_count_mismatch_is_corrupt(tmp_path):
    _fake_fashion_mnist(tmp_path, compress=False)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3), compress=False)
    with pytest.raises(ValueError, match="12 images but 3 labels"):
        FashionMNIST("train", tmp_path)


# -- ImageFolder ----------------------------------------------------------------------------------------------------

def _image_tree(root):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_image_folder_builds_tensors_with_the_usual_transforms(tmp_path):
    _image_tree(tmp_path)
    train = build_dataset("image_folder", "train", str(tmp_path), img_size=32)
    val = build_dataset("image_folder", "val", str(tmp_path), img_size=32)
    assert train.num_classes == 2 and train.input_size == (3, 32, 32) and len(val) == 4
    image, label = val[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 1
    assert torch.equal(val[3][0], image)  # evaluation transform is deterministic
    assert image.min() < 0  # normalised with the ImageNet mean/std


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="--data-dir"):
        build_dataset("image_folder", "train", None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset("image_folder", "test", str(tmp_path))


@pytest.mark.parametrize("content", [b"", b"not an image", "truncated"])
def test_an_unreadable_image_is_a_one_line_error_naming_the_file(tmp_path, capsys, content):
    _image_tree(tmp_path)
    bad = tmp_path / "train" / "dog" / "bad.png"
    if content == "truncated":
        good = (tmp_path / "train" / "dog" / "0.png").read_bytes()
        content = good[: len(good) // 2]
    bad.write_bytes(content)
    train = build_dataset("image_folder", "train", str(tmp_path), img_size=32)
    index = [path for path, _ in train.samples].index(str(bad))
    with pytest.raises(ValueError, match=f"cannot read image {bad} .*remove or replace the file"):
        train[index]
    # the trainer meets it in its first batch (the whole split): one line, exit 2, nothing written
    out = tmp_path / "run"
    assert main(["train", "--model", "mone_vit_test", "--model-arg", "depth=1", "--dataset", "image_folder",
                 "--data-dir", str(tmp_path), "--dataset-arg", "img_size=32", "--batch-size", "5", "--steps", "1",
                 "--no-progress", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot read image {bad}" in err and not out.exists()


def test_video_files_without_pyav_fail_when_the_dataset_is_built(tmp_path, capsys, monkeypatch):
    clip = tmp_path / "train" / "left" / "clip.mp4"
    clip.parent.mkdir(parents=True)
    clip.write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    with pytest.raises(ValueError, match=f"reading video files such as {clip} needs PyAV: pip install 'mone"):
        VideoFolderDataset(tmp_path, "train", num_frames=4, img_size=32)
    out = tmp_path / "run"
    assert main(["train", "--model", "mone_vivit_test", "--dataset", "video_folder", "--data-dir", str(tmp_path),
                 "--no-progress", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs PyAV" in err and not out.exists()


def test_build_dataset_rejects_unknown_names():
    assert {"cluttered_digits", "fashion_mnist", "image_folder"} <= set(list_datasets())
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        build_dataset("mnist", "train")


def test_cluttered_digits_normalize_standardises_the_same_samples():
    from mone.data.cluttered_digits import MEAN, STD

    raw = ClutteredDigits("val", num_samples=8)
    standard = ClutteredDigits("val", num_samples=8, normalize=True)
    for i in range(8):
        (x, y), (z, w) = raw[i], standard[i]
        assert y == w and z.dtype == torch.float32
        torch.testing.assert_close(z, (x - MEAN) / STD, rtol=0, atol=1e-6)
    pixels = torch.stack([ClutteredDigits("train", num_samples=256, normalize=True)[i][0] for i in range(256)])
    assert abs(pixels.mean().item()) < 0.05 and abs(pixels.std().item() - 1) < 0.05  # standardised on average


@pytest.mark.parametrize("name", ["cluttered_digits", "moving_digits"])
def test_normalize_refuses_what_is_not_a_bool(name):
    # bool("false") is True: a string from --dataset-arg must not silently switch standardisation on
    with pytest.raises(ValueError, match="normalize must be True or False, got 'false'"):
        build_dataset(name, "test", None, normalize="false")
    assert build_dataset(name, "test", None, normalize=False).normalize is False
