"""Budget sweep (``mone eval``): top-1 accuracy of trained models at a list of capacities.

For every capacity: the realised capacity (after flooring token counts), GFLOPs per sample (multiply-accumulates,
the ViT/MoNE papers' convention, from :func:`mone.count_flops`), top-1 accuracy and images/s of the forward pass.
Results are written as CSV and JSON, and plotted as accuracy against GFLOPs with one curve per model.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .._device import resolve_device
from .._checks import check_int
from .._extras import require
from .._io import atomic_write_text, check_output_dir, output_folder, save_figure
from .._progress import progress as progress_display
from .._settings import (
    add_setting_arguments,
    data_dir_setting,
    dataset_setting,
    device_setting,
    setting,
    settings_from_args,
    split_setting,
)
from ..capacity import feasible_capacity_range, validate_capacity
from ..data import build_dataset
from ..flops import count_flops
from .checkpoint import Checkpoint, load_model

__all__ = [
    "DEFAULT_CAPACITIES",
    "EvalSettings",
    "add_arguments",
    "batch_must_fit",
    "checkpoint_dataset",
    "evaluate",
    "format_table",
    "plot_accuracy_vs_flops",
    "run",
    "write_results",
]

_logger = logging.getLogger(__name__)

DEFAULT_CAPACITIES = (0.2, 0.3, 0.5, 0.75, 1.0)
COLUMNS = ("capacity", "realised_capacity", "gflops", "top1", "images_per_s")


def _is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA), or an allocator's RuntimeError (``DefaultCPUAllocator: not enough memory``,
    ``MPS backend out of memory``), or Python's MemoryError."""
    if isinstance(error, MemoryError):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in message or "not enough memory" in message)


@contextlib.contextmanager
def batch_must_fit(batch_size: int, device: torch.device | str, option: str = "--batch-size") -> Iterator[None]:
    """Turn running out of memory inside the block into a ValueError that names the batch size to reduce."""
    try:
        yield
    except (RuntimeError, MemoryError) as error:
        if not _is_out_of_memory(error):
            raise
        device = torch.device(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        smaller = f"e.g. {option} {batch_size // 2}" if batch_size > 1 else "or use a smaller model or input"
        raise ValueError(f"a batch of {batch_size} samples does not fit in memory on {device}: lower the batch "
                         f"size ({smaller})") from None


# Evaluation batch sizes. On CPU small batches keep the activations in cache (D=128 dense ViT, 1 thread, AMD EPYC:
# 669 / 625 / 505 / 439 / 410 images/s at batch 32 / 64 / 128 / 256 / 500); an accelerator wants large ones.
CPU_BATCH_SIZE = 64
ACCELERATOR_BATCH_SIZE = 256


def default_batch_size(device: str | torch.device) -> int:
    """Evaluation batch size for ``device``: small on CPU (faster per image), large on an accelerator."""
    return CPU_BATCH_SIZE if torch.device(device).type == "cpu" else ACCELERATOR_BATCH_SIZE


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    capacities: Sequence[float],
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    bf16: bool = False,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Top-1 accuracy of ``model`` on every sample of ``dataset`` at each capacity.

    Args:
        model: a MoNE model (``forward(x, capacity=...)`` with ``num_experts``, ``tokens_per_group``,
            ``default_input_size``).
        dataset: yields ``(sample, label)``.
        capacities: effective capacities, each in the model's feasible range.
        batch_size, device, num_workers: evaluation batching (``batch_size`` ``None``: :func:`default_batch_size`).
        bf16: run the forward under bfloat16 autocast.
        progress: show progress per capacity (a tqdm bar on a terminal, plain periodic lines otherwise).

    Returns:
        One row per capacity: ``capacity``, ``realised_capacity``, ``gflops`` (per sample, multiply-accumulates),
        ``top1`` (fraction in [0, 1]), ``images_per_s`` (forward passes only) and ``num_samples``.
    """
    if hasattr(model, "resolve_capacity"):  # Mixture-of-Depths: a token fraction per routed block
        values = [model.resolve_capacity(c) for c in capacities]
    else:
        values = [c if isinstance(c, (tuple, list)) else validate_capacity(c, getattr(model, "num_experts", 1))
                  for c in capacities]
    device = torch.device(device)
    batch_size = default_batch_size(device) if batch_size is None else check_int("batch_size", batch_size, 1)
    model = model.to(device).eval()
    input_size = tuple(model.default_input_size)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    rows = []
    for capacity in values:
        correct, seen, forward_s = 0, 0, 0.0
        batches = progress_display(loader, desc=f"eval capacity {capacity}", enabled=progress, leave=False)
        with batch_must_fit(batch_size, device):
            for images, labels in batches:
                images, labels = images.to(device), labels.to(device)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                with autocast:
                    logits = model(images, capacity=capacity)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                forward_s += time.perf_counter() - start
                correct += (logits.argmax(dim=-1) == labels).sum().item()
                seen += len(labels)
        rows.append({
            "capacity": capacity,
            "realised_capacity": model.realised_capacity(capacity),
            "gflops": count_flops(model, input_size, capacity) / 1e9,
            "top1": correct / seen,
            "images_per_s": seen / max(forward_s, 1e-9),
            "num_samples": seen,
        })
    return rows


def format_table(rows: Sequence[Mapping[str, Any]], title: str = "") -> str:
    """A fixed-width text table of evaluation rows (top-1 in percent)."""
    lines = [title] if title else []
    lines.append(f"{'capacity':>9} {'realised':>9} {'GFLOPs':>9} {'top-1 %':>8} {'images/s':>9}")
    for row in rows:
        lines.append(
            f"{row['capacity']:>9.3f} {row['realised_capacity']:>9.4f} {row['gflops']:>9.4g} "
            f"{100 * row['top1']:>8.2f} {row['images_per_s']:>9.0f}"
        )
    return "\n".join(lines)


RESULTS_CSV, RESULTS_JSON, PLOT_NAME = "results.csv", "results.json", "accuracy_vs_gflops.png"


def _results_texts(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> tuple[str, str]:
    """The text of ``results.csv`` (a ``model`` column plus one row per capacity) and of ``results.json``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["model", *COLUMNS, "num_samples"], lineterminator="\n")
    writer.writeheader()
    for label, rows in results.items():
        for row in rows:
            writer.writerow({"model": label, **row})
    return buffer.getvalue(), json.dumps({k: list(v) for k, v in results.items()}, indent=2) + "\n"


def write_results(results: Mapping[str, Sequence[Mapping[str, Any]]], output_dir: str | os.PathLike) -> list[Path]:
    """Write ``results.csv`` (a ``model`` column plus one row per capacity) and ``results.json``; returns the paths."""
    output_dir = Path(output_dir)
    csv_text, json_text = _results_texts(results)
    csv_path, json_path = output_dir / RESULTS_CSV, output_dir / RESULTS_JSON
    atomic_write_text(csv_path, csv_text)
    atomic_write_text(json_path, json_text)
    return [csv_path, json_path]


def plot_accuracy_vs_flops(
    results: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike, title: str = ""
) -> Path:
    """Top-1 accuracy against GFLOPs per sample, one curve per model (each point labelled with its capacity)."""
    Figure = require("matplotlib.figure", "the accuracy plot", "viz").Figure

    path = Path(path)
    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    for label, rows in results.items():
        rows = sorted(rows, key=lambda r: r["gflops"])
        xs, ys = [r["gflops"] for r in rows], [100 * r["top1"] for r in rows]
        ax.plot(xs, ys, marker="o", label=label)
        for row, x, y in zip(rows, xs, ys):
            ax.annotate(f"{row['capacity']:g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("GFLOPs per sample (multiply-accumulates)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def checkpoint_dataset(
    checkpoint: Checkpoint, model: nn.Module, name: str | None, split: str, data_dir: str | None
) -> Dataset:
    """The dataset to run a checkpoint's model on: ``name``, or by default the one its run trained on (with the run's
    folder and options), checked against the model's input size (an image model given clips fails here, not mid-run).
    """
    config = checkpoint.meta.get("config") or {}
    name = name or config.get("dataset")
    if name is None:
        raise ValueError(f"checkpoint {checkpoint.path} does not name its dataset; pass --dataset")
    same = name == config.get("dataset")
    dataset = build_dataset(name, split, data_dir or (config.get("data_dir") if same else None),
                            **(config.get("dataset_kwargs", {}) if same else {}))
    expected, found = tuple(model.default_input_size), tuple(dataset.input_size)
    if expected != found:
        kinds = {3: "images", 4: "clips"}
        raise ValueError(f"the model of {checkpoint.path} takes {kinds.get(len(expected), 'samples')} of shape "
                         f"{expected} but dataset {name} yields {kinds.get(len(found), 'samples')} of shape {found}")
    return dataset


def default_capacities_for(model: nn.Module) -> list[float]:
    """:data:`DEFAULT_CAPACITIES` restricted to the model's feasible range (only 1.0 for a dense model)."""
    low, high = feasible_capacity_range(getattr(model, "num_experts", 1))
    return [c for c in DEFAULT_CAPACITIES if low <= c <= high]


# -- command line -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalSettings:
    """The options of ``mone eval``, one field each."""

    checkpoints: tuple[str, ...] = setting(positional=True, help="checkpoint files (or run folders) to evaluate")
    labels: tuple[str, ...] | None = setting(None, help="curve names (default: the run folder names)")
    capacities: tuple[float, ...] | None = setting(
        None, help=f"capacities to evaluate (default {list(DEFAULT_CAPACITIES)}, within each model's range)")
    dataset: str | None = dataset_setting()
    data_dir: str | None = data_dir_setting()
    split: str = split_setting()
    batch_size: int | None = setting(
        None, help=f"images per forward (default {CPU_BATCH_SIZE} on CPU, {ACCELERATOR_BATCH_SIZE} on GPU)")
    device: str = device_setting()
    bf16: bool = setting(False, help="bfloat16 autocast")
    output: str = setting("runs/eval", help="folder for results.csv/json and the plot")

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.checkpoints):
            raise ValueError(f"--labels names {len(self.labels)} curves for {len(self.checkpoints)} checkpoints")
        if self.batch_size is not None:  # None: evaluate() picks the device's default
            check_int("--batch-size", self.batch_size, 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_setting_arguments(parser, EvalSettings)


def run(args: argparse.Namespace) -> int:
    # Check and load everything before evaluating, and write (creating the folder) only once there are results.
    settings = settings_from_args(args, EvalSettings)
    device = resolve_device(settings.device)
    check_output_dir(settings.output)
    loaded = []
    for path in settings.checkpoints:
        model, checkpoint = load_model(path, device)
        capacities = default_capacities_for(model) if settings.capacities is None else settings.capacities
        for capacity in capacities:
            validate_capacity(capacity, getattr(model, "num_experts", 1))
        dataset = checkpoint_dataset(checkpoint, model, settings.dataset, settings.split, settings.data_dir)
        loaded.append((path, model, capacities, dataset))
    labels = settings.labels or [Path(p).parent.name if Path(p).is_file() else Path(p).name
                                 for p in settings.checkpoints]
    results = {}
    for label, (path, model, capacities, dataset) in zip(labels, loaded):
        rows = evaluate(model, dataset, capacities, settings.batch_size, device, bf16=settings.bf16, progress=True)
        results[label] = rows
        print(format_table(rows, title=f"{label} ({path}, {settings.split} split, {rows[0]['num_samples']} samples)"))
    # All three files or none (a full disk names the file): the plot first, results.json, which marks a finished
    # evaluation, last; a folder created here is removed again on failure.
    csv_text, json_text = _results_texts(results)
    with output_folder(settings.output) as stage:
        plot_accuracy_vs_flops(results, stage(PLOT_NAME))
        stage(RESULTS_CSV).write_text(csv_text)
        stage(RESULTS_JSON).write_text(json_text)
    output_dir = Path(settings.output)
    print("wrote " + ", ".join(str(output_dir / name) for name in (RESULTS_CSV, RESULTS_JSON, PLOT_NAME)))
    return 0
