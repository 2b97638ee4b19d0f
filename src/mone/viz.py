"""Routing maps (``mone viz``): which expert each token of an image reaches, at several capacities.

Each image patch is tinted with the colour of its expert (the paper's Figure 8). On datasets that know where the
object is (cluttered digits keep the digit's box), :func:`object_routing_share` also measures routing: the share
of object-covering tokens sent to the largest experts, against the share of background tokens sent there. For video
models the maps are a frame grid (:func:`save_video_routing_maps`): one column per temporal index.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ._checks import check_int
from ._extras import require
from ._io import save_figure
from ._settings import (
    add_setting_arguments,
    data_dir_setting,
    dataset_setting,
    device_setting,
    setting,
    settings_from_args,
    split_setting,
)
from .capacity import validate_capacity

__all__ = [
    "VizSettings",
    "add_arguments",
    "expert_colors",
    "expert_frame_grids",
    "expert_grid",
    "object_routing_share",
    "patch_box_coverage",
    "run",
    "save_routing_maps",
    "save_video_routing_maps",
    "tint_image",
]

Box = tuple[int, int, int, int]  # (top, left, bottom, right) in pixels, bottom/right exclusive


def expert_colors(num_experts: int) -> np.ndarray:
    """One RGB colour per expert [E, 3] in [0, 1], smallest expert first (dark blue ... yellow)."""
    cmap = require("matplotlib", "routing maps", "viz").colormaps["plasma"]
    return np.array([cmap(0.05 + 0.9 * i / max(num_experts - 1, 1))[:3] for i in range(num_experts)])


@torch.inference_mode()
def expert_grid(model: nn.Module, images: torch.Tensor, capacity: float) -> torch.Tensor:
    """Expert index of every patch: images [B, C, H, W] -> [B, H / p, W / p] (0 = smallest expert)."""
    model.eval()
    _, plan = model.forward_features(images, capacity, return_plan=True)
    grid_h, grid_w = model.patch_embed.grid_size
    return plan.expert.reshape(images.shape[0], grid_h, grid_w).cpu()  # plan.expert is [B, N] in input order


def tint_image(image: torch.Tensor, experts: torch.Tensor, colors: np.ndarray, strength: float = 0.5) -> np.ndarray:
    """Blend each patch of ``image`` [C, H, W] with its expert's colour; ``experts`` is [H / p, W / p].

    Returns an RGB array [H, W, 3] in [0, 1] (the image is min-max scaled to [0, 1] first).
    """
    pixels = image.detach().float().cpu()
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min()).clamp_min(1e-8)
    rgb = pixels.expand(3, -1, -1) if pixels.shape[0] == 1 else pixels[:3]
    rgb = rgb.permute(1, 2, 0).numpy()  # [H, W, 3]
    H, W = rgb.shape[:2]
    grid_h, grid_w = experts.shape
    tint = colors[experts.numpy()]  # [grid_h, grid_w, 3]
    tint = tint.repeat(H // grid_h, axis=0).repeat(W // grid_w, axis=1)  # [H, W, 3]
    return (1 - strength) * rgb + strength * tint


def _finish_grid(fig: Any, axes: np.ndarray, model: nn.Module, colors: np.ndarray, legend_columns: int) -> None:
    """No ticks on any panel; a legend of the experts (colour, index and width) at the bottom of ``fig``."""
    from matplotlib.patches import Patch

    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    num_experts = len(colors)
    widths = getattr(model, "expert_widths", tuple(range(num_experts)))
    handles = [Patch(color=colors[i], label=f"expert {i} (width {widths[i]})") for i in range(num_experts)]
    fig.legend(handles=handles, loc="lower center", ncol=legend_columns, fontsize=7, frameon=False)


def save_routing_maps(
    model: nn.Module,
    images: torch.Tensor,
    capacities: Sequence[float],
    path: str | os.PathLike,
    boxes: Sequence[Box] | None = None,
    titles: Sequence[str] | None = None,
) -> Path:
    """Write a PNG grid: one row per image [B, C, H, W]; the input, then its routing map at each capacity.

    Args:
        model: a MoNE image model.
        images: the inputs (on the model's device).
        capacities: one column per capacity.
        path: the PNG to write (atomically).
        boxes: optional object box per image, outlined on the input column.
        titles: optional row titles (e.g. the labels).
    """
    Figure = require("matplotlib.figure", "routing maps", "viz").Figure
    from matplotlib.patches import Rectangle

    num_experts = getattr(model, "num_experts", 1)
    values = [validate_capacity(c, num_experts) for c in capacities]
    colors = expert_colors(num_experts)
    grids = [expert_grid(model, images, c) for c in values]  # each [B, gh, gw]
    B = images.shape[0]
    fig = Figure(figsize=(1.6 * (len(values) + 1), 1.6 * B + 0.6))
    axes = fig.subplots(B, len(values) + 1, squeeze=False)
    for b in range(B):
        plain = tint_image(images[b], grids[0][b], colors, strength=0.0)
        axes[b, 0].imshow(plain, interpolation="nearest")
        if boxes is not None:
            top, left, bottom, right = boxes[b]
            axes[b, 0].add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top,
                                           fill=False, edgecolor="lime", linewidth=1.2))
        axes[b, 0].set_ylabel(titles[b] if titles is not None else "", fontsize=8)
        for k, capacity in enumerate(values):
            axes[b, k + 1].imshow(tint_image(images[b], grids[k][b], colors), interpolation="nearest")
            if b == 0:
                axes[b, k + 1].set_title(f"capacity {capacity:g}", fontsize=8)
    axes[0, 0].set_title("input", fontsize=8)
    _finish_grid(fig, axes, model, colors, legend_columns=num_experts)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, path, dpi=110)


def expert_frame_grids(model: nn.Module, clips: torch.Tensor, capacity: float) -> torch.Tensor:
    """Expert index of every tubelet: clips [B, C, T, H, W] -> [B, T', H / p, W / p] (0 = smallest expert)."""
    model.eval()
    _, plan = model.forward_features(clips, capacity, return_plan=True)
    num_temporal, grid_h, grid_w = model.patch_embed.grid_size
    return plan.expert.reshape(clips.shape[0], num_temporal, grid_h, grid_w).cpu()  # plan.expert is [B * T', N]


def save_video_routing_maps(
    model: nn.Module,
    clips: torch.Tensor,
    capacities: Sequence[float],
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
) -> Path:
    """Write a PNG frame grid for clips [B, C, T, H, W]: per clip, a row of frames, then one routing row per capacity.

    Column ``k`` is temporal index ``k`` (the first frame of tubelet ``k``); EPR routes every temporal index on its
    own, so every tile of a routing row holds the same number of tokens per expert.
    """
    Figure = require("matplotlib.figure", "routing maps", "viz").Figure
    num_experts = getattr(model, "num_experts", 1)
    values = [validate_capacity(c, num_experts) for c in capacities]
    colors = expert_colors(num_experts)
    grids = [expert_frame_grids(model, clips, c) for c in values]  # each [B, T', gh, gw]
    frames = clips[:, :, :: model.tubelet_size].cpu()  # [B, C, T', H, W]
    B, num_temporal = grids[0].shape[:2]
    per_clip = len(values) + 1
    legend_rows = 2 if num_temporal < 6 else 1  # the legend wraps on narrow grids
    height = 1.1 * B * per_clip + 0.3 + 0.2 * legend_rows
    fig = Figure(figsize=(1.1 * num_temporal + 0.6, height))
    axes = fig.subplots(B * per_clip, num_temporal, squeeze=False)
    for b in range(B):
        for t in range(num_temporal):
            plain = tint_image(frames[b, :, t], grids[0][b, t], colors, strength=0.0)
            axes[b * per_clip, t].imshow(plain, interpolation="nearest")
            for k in range(len(values)):
                tinted = tint_image(frames[b, :, t], grids[k][b, t], colors)
                axes[b * per_clip + k + 1, t].imshow(tinted, interpolation="nearest")
        axes[b * per_clip, 0].set_ylabel(titles[b] if titles is not None else "input", fontsize=7)
        for k, capacity in enumerate(values):
            axes[b * per_clip + k + 1, 0].set_ylabel(f"capacity {capacity:g}", fontsize=7)
    for t in range(num_temporal):
        axes[0, t].set_title(f"t' = {t}", fontsize=7)
    _finish_grid(fig, axes, model, colors, legend_columns=-(-num_experts // legend_rows))
    fig.tight_layout(rect=(0, 0.25 * legend_rows / height, 1, 1))
    return save_figure(fig, path, dpi=110)


def patch_box_coverage(box: Box, img_size: int, patch_size: int) -> torch.Tensor:
    """Fraction of each patch's area inside ``box``: [N] in row-major patch order (N = (img_size / patch_size)**2)."""
    top, left, bottom, right = box
    starts = torch.arange(0, img_size, patch_size, dtype=torch.float64)  # [grid]
    rows = ((torch.clamp(starts + patch_size, max=bottom) - torch.clamp(starts, min=top)).clamp_min(0)) / patch_size
    cols = ((torch.clamp(starts + patch_size, max=right) - torch.clamp(starts, min=left)).clamp_min(0)) / patch_size
    return (rows[:, None] * cols[None, :]).reshape(-1)  # [grid * grid]


@torch.inference_mode()
def object_routing_share(
    model: nn.Module,
    dataset: Dataset,
    capacity: float,
    num_samples: int = 512,
    batch_size: int = 128,
    top_experts: int = 2,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """How often object tokens reach the largest experts, compared with background tokens.

    A token is an *object* token when at least half of its patch lies inside the dataset's box (``dataset.box(i)``),
    a *background* token when none of it does (tokens in between are not counted).

    Returns:
        ``object_share`` and ``background_share`` (fractions of those tokens routed to the ``top_experts`` largest
        experts), the token counts behind them, and ``expected_share``: the share of *all* tokens the capacity
        sends to those experts, i.e. what a router blind to content would give both groups on average.
    """
    if not hasattr(dataset, "box"):
        raise ValueError(f"{type(dataset).__name__} has no object boxes; routing shares need e.g. cluttered_digits")
    check_int("num_samples", num_samples, 1)
    check_int("batch_size", batch_size, 1)
    num_experts = getattr(model, "num_experts", 1)
    validate_capacity(capacity, num_experts)
    num_samples = min(num_samples, len(dataset))
    patch = model.patch_embed.patch_size[0]
    img_size = model.patch_embed.img_size[0]
    first_top = max(num_experts - top_experts, 0)
    model = model.to(device).eval()
    counts = torch.zeros(4, dtype=torch.float64)  # object on top, object, background on top, background
    for start in range(0, num_samples, batch_size):
        index = range(start, min(start + batch_size, num_samples))
        images = torch.stack([dataset[i][0] for i in index]).to(device)
        coverage = torch.stack([patch_box_coverage(dataset.box(i), img_size, patch) for i in index])  # [b, N]
        _, plan = model.forward_features(images, capacity, return_plan=True)
        on_top = (plan.expert >= first_top).cpu()  # [b, N]
        is_object, is_background = coverage >= 0.5, coverage == 0
        counts += torch.tensor([(on_top & is_object).sum(), is_object.sum(),
                                (on_top & is_background).sum(), is_background.sum()], dtype=torch.float64)
    counts_per_expert = plan.counts
    expected = sum(counts_per_expert[first_top:]) / sum(counts_per_expert)
    return {
        "capacity": float(capacity),
        "top_experts": top_experts,
        "object_share": (counts[0] / counts[1]).item(),
        "background_share": (counts[2] / counts[3]).item(),
        "expected_share": expected,
        "object_tokens": int(counts[1]),
        "background_tokens": int(counts[3]),
        "num_samples": num_samples,
    }


# -- command line -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VizSettings:
    """The options of ``mone viz``, one field each."""

    checkpoint: str = setting(positional=True, help="checkpoint file or run folder")
    capacities: tuple[float, ...] = setting((0.2, 0.3, 0.5, 0.75, 1.0), help="capacities to map")
    num_images: int = setting(6, help="rows of the routing-map figure")
    dataset: str | None = dataset_setting()
    data_dir: str | None = data_dir_setting()
    split: str = split_setting()
    share_samples: int = setting(512, help="images for the object/background shares")
    batch_size: int = setting(128, help="images per forward for the shares")
    device: str = device_setting()
    output: str = setting("runs/viz", help="folder for routing_maps.png (and routing_share.json)")

    def __post_init__(self) -> None:
        check_int("--num-images", self.num_images, 1)
        check_int("--share-samples", self.share_samples, 1)
        check_int("--batch-size", self.batch_size, 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_setting_arguments(parser, VizSettings)


def run(args: argparse.Namespace) -> int:
    from ._device import resolve_device
    from ._io import check_output_dir, output_folder
    from .train.checkpoint import load_model
    from .train.evaluate import batch_must_fit, checkpoint_dataset

    # Check everything, then compute, then create the folder and write: a failure leaves nothing behind.
    settings = settings_from_args(args, VizSettings)
    device = resolve_device(settings.device)
    check_output_dir(settings.output)
    model, checkpoint = load_model(settings.checkpoint, device)
    num_experts = getattr(model, "num_experts", 1)
    for capacity in settings.capacities:
        validate_capacity(capacity, num_experts)
    dataset = checkpoint_dataset(checkpoint, model, settings.dataset, settings.split, settings.data_dir)
    count = min(settings.num_images, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(count)]).to(device)
    boxes = [dataset.box(i) for i in range(count)] if hasattr(dataset, "box") else None
    titles = [f"label {dataset[i][1]}" for i in range(count)]
    shares = []
    if boxes is not None:
        with batch_must_fit(settings.batch_size, device):
            shares = [object_routing_share(model, dataset, c, settings.share_samples, settings.batch_size,
                                           device=device) for c in settings.capacities]
    with output_folder(settings.output) as stage:  # both files or none (a full disk names the file, leaves no folder)
        if images.dim() == 5:  # clips [B, C, T, H, W]: one frame grid
            save_video_routing_maps(model, images, settings.capacities, stage("routing_maps.png"), titles)
        else:
            save_routing_maps(model, images, settings.capacities, stage("routing_maps.png"), boxes, titles)
        if shares:
            stage("routing_share.json").write_text(json.dumps(shares, indent=2) + "\n")
    output_dir = Path(settings.output)
    print(f"wrote {output_dir / 'routing_maps.png'}")
    if shares:
        print(f"share of tokens on the {shares[0]['top_experts']} largest experts ({shares[0]['num_samples']} images)")
        print(f"{'capacity':>9} {'object':>8} {'background':>11} {'all tokens':>11}")
        for share in shares:
            print(f"{share['capacity']:>9.3f} {share['object_share']:>8.3f} {share['background_share']:>11.3f} "
                  f"{share['expected_share']:>11.3f}")
        print(f"wrote {output_dir / 'routing_share.json'}")
    return 0
