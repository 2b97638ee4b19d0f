"""Routing maps and the object/background routing shares."""

from __future__ import annotations

import sys

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mone import create_model, expert_token_counts
from mone.data import ClutteredDigits
from mone.viz import (
    expert_colors,
    expert_grid,
    object_routing_share,
    patch_box_coverage,
    save_routing_maps,
    save_video_routing_maps,
    tint_image,
)

MODEL = dict(img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2, in_chans=1, num_classes=10)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("mone_vit_test", **MODEL).eval()


@pytest.fixture(scope="module")
def digits():
    return ClutteredDigits("test", num_samples=24, img_size=32, digit_size=14, seed=4)


@pytest.mark.parametrize("box", [(0, 0, 32, 32), (3, 5, 17, 19), (10, 12, 11, 30), (28, 0, 32, 4)])
def test_patch_box_coverage_matches_a_pixel_mask(box):
    mask = torch.zeros(32, 32)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = 1
    expected = F.avg_pool2d(mask[None, None], 4).flatten()  # [64]
    assert torch.allclose(patch_box_coverage(box, 32, 4).float(), expected)


def test_expert_grid_is_the_plan_in_image_layout(model, digits):
    images = torch.stack([digits[i][0] for i in range(3)])
    grid = expert_grid(model, images, 0.5)
    assert grid.shape == (3, 8, 8)
    _, plan = model.forward_features(images, 0.5, return_plan=True)
    assert torch.equal(grid.reshape(3, -1), plan.expert)
    counts = expert_token_counts(model.resolve_distribution(0.5), 64)
    for b in range(3):
        assert torch.bincount(grid[b].flatten(), minlength=4).tolist() == list(counts)


def test_tint_image_blends_patch_colours():
    image = torch.linspace(0, 1, 64).reshape(1, 8, 8)
    experts = torch.tensor([[0, 3], [1, 2]])
    colors = expert_colors(4)
    assert colors.shape == (4, 3) and len({tuple(c) for c in colors}) == 4
    grey = tint_image(image, experts, colors, strength=0.0)
    assert np.allclose(grey[..., 0], image[0].numpy()) and np.allclose(grey[..., 0], grey[..., 2])
    solid = tint_image(image, experts, colors, strength=1.0)
    assert np.allclose(solid[:4, 4:], colors[3]) and np.allclose(solid[4:, :4], colors[1])


def test_save_routing_maps_writes_a_png(model, digits, tmp_path):
    images = torch.stack([digits[i][0] for i in range(2)])
    path = save_routing_maps(model, images, [0.2, 1.0], tmp_path / "maps.png", [digits.box(0), digits.box(1)],
                             ["a", "b"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["maps.png"]
    with pytest.raises(ValueError, match="capacity"):
        save_routing_maps(model, images, [0.05], tmp_path / "bad.png")


@pytest.fixture
def no_pyplot(monkeypatch):
    """Fails any import of pyplot or backend switch: a library figure must leave a notebook's backend alone."""
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # `import matplotlib.pyplot` raises ImportError

    def refuse(*args, **kwargs):
        raise AssertionError("library code called matplotlib.use()")

    monkeypatch.setattr(matplotlib, "use", refuse)


def test_routing_maps_never_touch_pyplot_or_the_backend(model, digits, tmp_path, no_pyplot):
    images = torch.stack([digits[i][0] for i in range(2)])
    assert save_routing_maps(model, images, [0.5], tmp_path / "maps.png").is_file()
    torch.manual_seed(0)
    video = create_model("mone_vivit_test", img_size=16, patch_size=8, embed_dim=32, depth=1, temporal_depth=1,
                         num_heads=2, num_frames=4, num_classes=3)
    clips = torch.randn(1, 3, 4, 16, 16)
    assert save_video_routing_maps(video, clips, [0.5], tmp_path / "clips.png").is_file()


def test_object_routing_share_matches_a_direct_count(model, digits):
    share = object_routing_share(model, digits, 0.5, num_samples=24, batch_size=10)
    top = [0, 0, 0, 0]  # object on top experts, object, background on top, background
    for i in range(24):
        image = digits[i][0]
        mask = torch.zeros(32, 32)
        y0, x0, y1, x1 = digits.box(i)
        mask[y0:y1, x0:x1] = 1
        coverage = F.avg_pool2d(mask[None, None], 4).flatten()
        _, plan = model.forward_features(image[None], 0.5, return_plan=True)
        on_top = plan.expert[0] >= 2
        top[0] += int((on_top & (coverage >= 0.5)).sum())
        top[1] += int((coverage >= 0.5).sum())
        top[2] += int((on_top & (coverage == 0)).sum())
        top[3] += int((coverage == 0).sum())
    assert share["object_tokens"] == top[1] and share["background_tokens"] == top[3]
    assert share["object_share"] == pytest.approx(top[0] / top[1])
    assert share["background_share"] == pytest.approx(top[2] / top[3])
    counts = expert_token_counts(model.resolve_distribution(0.5), 64)
    assert share["expected_share"] == pytest.approx((counts[2] + counts[3]) / 64)
    full = object_routing_share(model, digits, 1.0, num_samples=8)
    assert full["object_share"] == full["background_share"] == full["expected_share"] == 1.0


def test_object_routing_share_needs_boxes(model):
    from torch.utils.data import TensorDataset

    with pytest.raises(ValueError, match="no object boxes"):
        object_routing_share(model, TensorDataset(torch.zeros(2, 1, 32, 32), torch.zeros(2)), 0.5)
