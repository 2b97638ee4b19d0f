"""Latency targets: measure a MoNE model across capacities on this hardware, then pick a capacity for a target
(``mone calibrate``).

:func:`calibrate` times one forward pass (``torch.inference_mode``, eval mode, batches of random inputs) at each
capacity, round-robin as ``mone bench`` does (``mone._timing``), and returns a :class:`LatencyCurve`: per
capacity, the median milliseconds per call and the samples per second. :meth:`LatencyCurve.capacity_for` turns a
latency or throughput target into a capacity.

Selection rule: the **largest capacity whose own measured median meets the target**. Points are never smoothed or
made monotone: timing noise can make a larger capacity measure faster than a smaller one, and then the larger one
is chosen if it meets the target even though a smaller one missed it. Medians over more ``repeats`` make such
inversions rarer; a capacity very close to a target is worth re-measuring before it is relied upon.

Numbers hold for the hardware, threads, batch size, dtype and software they were measured with (kept in the
curve's ``environment``), and for eager mode: a compiled or exported model has its own curve.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ._checks import check_int
from ._device import resolve_device
from ._extras import require
from ._io import check_new_output_dir, output_folder, save_figure
from ._settings import add_setting_arguments, device_setting, progress_setting, setting, settings_from_args
from ._timing import DTYPES, check_timing_settings, environment, synchronizer, time_round_robin
from .capacity import feasible_capacity_range, validate_capacity
from .models import MoneVisionTransformer, MoneViViT, create_model

__all__ = ["CalibrateCommand", "CalibrateConfig", "LatencyCurve", "LatencyPoint", "add_arguments", "calibrate",
           "plot_latency_curve", "run"]

JSON_NAME, PLOT_NAME = "latency_curve.json", "latency_curve.png"


@dataclass(frozen=True)
class LatencyPoint:
    """One measured capacity: median milliseconds per forward of a batch, and samples (images or clips) per second."""

    capacity: float
    median_ms: float
    images_per_s: float


def _check_target(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class LatencyCurve:
    """Latency and throughput against capacity, as measured by :func:`calibrate` (or written by hand).

    ``points`` are kept sorted by capacity; ``batch_size`` is the samples per timed call, the rest says where the
    numbers were measured.
    """

    points: tuple[LatencyPoint, ...]
    batch_size: int = 1
    model: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    repeats: int = 0
    environment: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        points = tuple(sorted(self.points, key=lambda p: p.capacity))
        if not points:
            raise ValueError("a latency curve needs at least one point")
        capacities = [p.capacity for p in points]
        if len(set(capacities)) != len(capacities):
            raise ValueError(f"a latency curve has one point per capacity, got capacities {capacities}")
        for p in points:
            if not all(math.isfinite(v) and v > 0 for v in (p.capacity, p.median_ms, p.images_per_s)):
                raise ValueError(f"latency points need positive finite numbers, got {p}")
        check_int("batch_size", self.batch_size, 1)
        object.__setattr__(self, "points", points)

    @property
    def capacities(self) -> tuple[float, ...]:
        """The measured capacities, ascending."""
        return tuple(p.capacity for p in self.points)

    def capacity_for(self, latency_ms: float | None = None, images_per_s: float | None = None) -> float:
        """The largest measured capacity whose median meets every target given (see the module docstring).

        Args:
            latency_ms: at most this many milliseconds per call (of ``batch_size`` samples).
            images_per_s: at least this many samples per second.

        Raises:
            ValueError: when no target is given, a target is not a positive number, or no capacity meets the
                targets (the message names the targets and the measured range).
        """
        latency_ms = _check_target("latency_ms", latency_ms)
        images_per_s = _check_target("images_per_s", images_per_s)
        if latency_ms is None and images_per_s is None:
            raise ValueError("give a target: latency_ms or images_per_s")
        meets = [
            p.capacity for p in self.points
            if (latency_ms is None or p.median_ms <= latency_ms)
            and (images_per_s is None or p.images_per_s >= images_per_s)
        ]  # fmt: skip
        if meets:
            return max(meets)
        wanted, measured = [], []
        if latency_ms is not None:
            wanted.append(f"latency <= {latency_ms:g} ms")
            low, high = min(p.median_ms for p in self.points), max(p.median_ms for p in self.points)
            measured.append(f"{low:.4g}-{high:.4g} ms")
        if images_per_s is not None:
            wanted.append(f"throughput >= {images_per_s:g} images/s")
            low, high = min(p.images_per_s for p in self.points), max(p.images_per_s for p in self.points)
            measured.append(f"{low:.4g}-{high:.4g} images/s")
        raise ValueError(
            f"no capacity meets {' and '.join(wanted)} at batch size {self.batch_size}: measured "
            f"{', '.join(measured)} over capacities {self.capacities[0]:g}-{self.capacities[-1]:g}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (:meth:`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyCurve:
        """The curve written by :meth:`to_dict` (a ``latency_curve.json`` of ``mone calibrate``)."""
        try:
            points = tuple(LatencyPoint(**p) for p in data["points"])
            return cls(points, **{k: v for k, v in data.items() if k != "points"})
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a latency curve: {error}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyCurve:
        """Read a ``latency_curve.json`` written by ``mone calibrate``."""
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not JSON: {error}") from None
        return cls.from_dict(data)

    def format_table(self) -> str:
        """A fixed-width table: capacity, median ms per call, samples per second."""
        lines = [f"{'capacity':>9} {'median ms':>10} {'images/s':>10}"]
        lines += [f"{p.capacity:>9.4g} {p.median_ms:>10.3f} {p.images_per_s:>10.1f}" for p in self.points]
        return "\n".join(lines)


def _default_capacities(num_experts: int, count: int = 8) -> tuple[float, ...]:
    low, high = feasible_capacity_range(num_experts)
    return tuple(round(low + (high - low) * i / (count - 1), 6) for i in range(count))


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None)
    return cfg.get("architecture", type(model).__name__) if isinstance(cfg, dict) else type(model).__name__


def calibrate(
    model: nn.Module | str,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    capacities: Sequence[float] | None = None,
    repeats: int = 10,
    warmup: int = 2,
    progress: bool = False,
) -> LatencyCurve:
    """Measure ``model``'s forward latency at each capacity on this machine.

    Args:
        model: a MoNE model (``MoneVisionTransformer`` or ``MoneViViT``) or a registered name. The caller's model is
            not changed: when it is not already on ``device`` in ``dtype``, a converted copy is measured.
        batch_size: samples per timed call; inputs are random ``[batch_size, *model.default_input_size]``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"``, ...
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (or the torch dtype).
        capacities: the capacities to measure (default: 8 evenly spaced from the smallest feasible one to 1).
        repeats: timed calls per capacity (the curve holds their median).
        warmup: untimed calls per capacity first.
        progress: show the rounds (a bar on a terminal, plain lines otherwise).

    Returns:
        a :class:`LatencyCurve` with one point per capacity, ascending.
    """
    if isinstance(model, str):
        model = create_model(model)
    if not isinstance(model, (MoneVisionTransformer, MoneViViT)):
        raise ValueError(f"calibrate measures MoNE models (capacity is their argument); got {type(model).__name__}")
    check_timing_settings(batch_size, repeats, warmup)
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    dtype_name = dtype if isinstance(dtype, str) else next((k for k, v in DTYPES.items() if v == dtype), str(dtype))
    if dtype_name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if capacities is None:
        capacities = _default_capacities(model.num_experts)
    values = sorted({validate_capacity(c, model.num_experts) for c in capacities})
    if not values:
        raise ValueError("give at least one capacity to measure")

    param = next(model.parameters())
    if param.device != device or param.dtype != DTYPES[dtype_name]:
        model = copy.deepcopy(model).to(device=device, dtype=DTYPES[dtype_name])
    was_training = model.training
    model.eval()
    try:
        images = torch.randn(batch_size, *model.default_input_size, device=device, dtype=DTYPES[dtype_name])
        calls = {c: (lambda c=c: model(images, capacity=c)) for c in values}
        with torch.inference_mode():
            times = time_round_robin(calls, repeats, warmup, synchronizer(str(device)),
                                     "calibrate" if progress else None)
    finally:
        model.train(was_training)
    points = []
    for c in values:
        seconds = statistics.median(times[c])
        points.append(LatencyPoint(capacity=c, median_ms=seconds * 1e3, images_per_s=batch_size / seconds))
    return LatencyCurve(tuple(points), batch_size=batch_size, model=_model_name(model), device=str(device),
                        dtype=dtype_name, repeats=repeats, environment=environment(str(device)))


def plot_latency_curve(
    curve: LatencyCurve, path: str | os.PathLike, latency_ms: float | None = None,
    images_per_s: float | None = None,
) -> Path:  # fmt: skip
    """Two panels against capacity: median ms per call, and samples per second; targets as dashed lines and the
    capacity :meth:`LatencyCurve.capacity_for` picks for them as a dotted one."""
    Figure = require("matplotlib.figure", "the latency plot", "viz").Figure
    chosen = None
    if latency_ms is not None or images_per_s is not None:
        try:
            chosen = curve.capacity_for(latency_ms, images_per_s)
        except ValueError:  # no capacity meets the targets: the dashed lines show by how much
            pass
    fig = Figure(figsize=(8, 3.2))
    axes = fig.subplots(1, 2)
    for ax, key, label, target in ((axes[0], "median_ms", f"median ms per batch of {curve.batch_size}", latency_ms),
                                   (axes[1], "images_per_s", "images per second", images_per_s)):
        ax.plot(curve.capacities, [getattr(p, key) for p in curve.points], marker="o")
        if target is not None:
            ax.axhline(target, linestyle="--", color="grey", label="target")
        if chosen is not None:
            ax.axvline(chosen, linestyle=":", color="black", label=f"chosen: {chosen:g}")
        if target is not None or chosen is not None:
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel("capacity")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    env = curve.environment
    fig.suptitle(f"{curve.model}: {env.get('hardware', curve.device)} ({curve.device}, {curve.dtype}, "
                 f"threads={env.get('threads', '?')}, median of {curve.repeats})", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


# -- command line -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CalibrateConfig:
    """What ``mone calibrate`` measures; every field is a flag (``model_kwargs`` is ``--model-arg``)."""

    batch_size: int = setting(1, help="samples per timed call")
    capacities: tuple[float, ...] | None = setting(
        None, help="capacities to measure (default: 8 evenly spaced from the smallest feasible one to 1)")
    repeats: int = setting(10, help="timed calls per capacity (medians are reported)")
    warmup: int = setting(2, help="untimed calls per capacity first")
    device: str = device_setting()
    dtype: str = setting("float32", choices=sorted(DTYPES), help="parameter and input dtype")
    threads: int | None = setting(None, help="intra-op CPU threads (default: torch's)")
    latency_ms: float | None = setting(None, help="print the largest capacity with a median at most this many ms")
    images_per_s: float | None = setting(None, help="print the largest capacity with at least this many images/s")
    model_kwargs: dict[str, Any] = setting(default_factory=dict, flag="--model-arg",
                                           help="model keyword argument, e.g. img_size=64")

    def __post_init__(self) -> None:
        check_timing_settings(self.batch_size, self.repeats, self.warmup, self.threads)
        _check_target("--latency-ms", self.latency_ms)
        _check_target("--images-per-s", self.images_per_s)


@dataclass(frozen=True)
class CalibrateCommand:
    """What ``mone calibrate`` measures besides :class:`CalibrateConfig`: the model and where the curve goes."""

    model: str = setting(positional=True, help="registered model name, or a folder written by save_pretrained")
    output: str = setting(help=f"new (or empty) folder for {JSON_NAME} and {PLOT_NAME}; never overwritten")
    plot: bool = setting(True, flag="--no-plot", help=f"skip {PLOT_NAME} (no matplotlib needed)")
    progress: bool = progress_setting()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_setting_arguments(parser, CalibrateCommand)
    add_setting_arguments(parser, CalibrateConfig)


def _build(name: str, model_kwargs: dict[str, Any]) -> nn.Module:
    if Path(name).is_dir():
        if model_kwargs:
            raise ValueError("--model-arg applies to registered names, not to a saved folder")
        from .hub import from_pretrained

        return from_pretrained(name)
    return create_model(name, **model_kwargs)


def run(args: argparse.Namespace) -> int:
    # Check everything before measuring; write only once the curve exists.
    command = settings_from_args(args, CalibrateCommand)
    config = settings_from_args(args, CalibrateConfig)
    if command.plot:
        require("matplotlib", "mone calibrate's plot (or --no-plot)", "viz")
    check_new_output_dir(command.output)  # an earlier curve is never replaced
    model = _build(command.model, config.model_kwargs)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    curve = calibrate(model, config.batch_size, config.device, config.dtype, config.capacities, config.repeats,
                      config.warmup, progress=command.progress)
    env = curve.environment
    print(f"{curve.model} on {env['hardware']} ({curve.device}, {curve.dtype}, batch {curve.batch_size}, "
          f"threads={env['threads']}, torch {env['torch']}, median of {curve.repeats})")
    print(curve.format_table())
    with output_folder(command.output) as stage:  # both files or none; the curve, which marks completion, last
        if command.plot:
            plot_latency_curve(curve, stage(PLOT_NAME), config.latency_ms, config.images_per_s)
        stage(JSON_NAME).write_text(json.dumps(curve.to_dict(), indent=2) + "\n")
    written = [JSON_NAME, PLOT_NAME] if command.plot else [JSON_NAME]
    print("wrote " + ", ".join(str(Path(command.output) / name) for name in written))
    if config.latency_ms is not None or config.images_per_s is not None:
        capacity = curve.capacity_for(config.latency_ms, config.images_per_s)  # ValueError (exit 2) when none does
        print(f"largest capacity meeting the target: {capacity:g}")
    return 0
