"""What every study script shares: arms (a training recipe plus how to evaluate it), seeds, runs, tables, plots.

An *arm* is one row of a comparison: a function ``seed -> TrainConfig`` (or a chain of them: pre-training then
fine-tuning), the capacities to evaluate it at and the router to evaluate with. :func:`run_study` trains every arm
for every seed (a finished run is reused, an interrupted one resumed), evaluates each on the test split, and writes
``results.json`` / ``results.csv`` (one row per arm, capacity and seed), ``summary.json`` (mean and standard
deviation over seeds) and two plots: top-1 against GFLOPs and against measured images/s, with error bars.

Hyper-parameters are chosen on the validation split (see ``probe`` notes in docs/results.md); the test split is
only ever evaluated.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mone import create_model
from mone._io import atomic_write_text, save_figure
from mone.configs import demo
from mone.data import build_dataset
from mone.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_model
from mone.train.config import TrainConfig
from mone.train.evaluate import evaluate
from mone.train.loop import model_kwargs_for_dataset, planned_steps, step_flops, train

__all__ = ["Arm", "aggregate", "distilled", "for_flops_of", "paper_router", "parser", "run_dir", "run_study",
           "select_arms", "setup", "training_flops", "twice_as_long"]

_logger = logging.getLogger("experiments")

SPLITS = ("val", "test")

Stage = Callable[[int, str | None], TrainConfig]  # (seed, checkpoint of the previous stage or None) -> config


@dataclass(frozen=True)
class Arm:
    """One row of a comparison.

    Attributes:
        name: label in tables and plots.
        stages: training stages run in order; each gets the seed and the previous stage's checkpoint path (for the
            first stage: the final checkpoint of arm ``init``, if set).
        capacities: capacities (or one-hot distributions, with ``capacity_labels``) to evaluate at.
        capacity_labels: labels for distribution-valued capacities (e.g. the widths of a MatViT model).
        router: ``"learned"`` or ``"random"``: the router used at evaluation.
        family: groups arms in the verdicts (``dense``, ``mone``, ``matvit``, ``mod``, ...).
        more_compute: trains on more FLOPs than the study's references trained as long (self-distillation for as
            many steps): tabled and judged on its budget curve, never picked as the recipe the verdicts judge.
    """

    name: str
    stages: tuple[Stage, ...]
    capacities: tuple[Any, ...] = (1.0,)
    capacity_labels: tuple[str, ...] = ()
    router: str = "learned"
    family: str = "mone"
    init: str | None = None  # the arm whose trained model (same seed) starts this arm's first stage
    init_seed: int | None = None  # start from the ``init`` arm's run of this seed instead (every seed the same model)
    reuse: str | None = None  # evaluate another arm's trained model instead of training (e.g. with a random router)
    more_compute: bool = False


STUDY_EMBED_DIM = 64  # the image studies' recipe, pinned: the demo's presets have since moved on (D=128, tuned lr)
STUDY_LR = 2e-3
STUDY_FINE_TUNE_LR = 5e-4
STUDY_FINE_TUNE_STEPS = dict(steps=300, warmup_steps=15)  # the demo's fine-tune has since doubled (600 steps)

# Shared by the image studies (study_images.py) and the Fashion-MNIST study (study_fashion.py):
CAPACITIES = (0.25, 0.5, 0.75, 1.0)  # where MoNE arms are evaluated
WIDTHS = ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0))  # one-hot
WIDTH_LABELS = ("width 1/8", "width 1/4", "width 1/2", "width 1")  # MatViT's nested models, each width alone
UPCYCLED_NESTED, UPCYCLED_MONE = "dense -> MatViT (nested)", "dense -> MatViT -> MoNE adaptive, isoFLOPs"
WIDE_LR = 1e-3  # D=192: every pre-training at the dense ViT's learning rate chosen at D=128 (2e-3 unstable)


def study_preset(variant: str, quick: bool, embed_dim: int | None = None) -> TrainConfig:
    """The ``demo`` preset ``variant`` with the image studies' recipe: width ``embed_dim`` (default 64; ``quick``
    keeps the presets' tiny model), lr 2e-3, fine-tuning lr 5e-4 and 300 steps, no isoFLOPs scaling (the values every
    study run so far used)."""
    config = paper_router(demo(variant, quick))
    if variant == "finetune" and not quick:
        config = config.replace(**STUDY_FINE_TUNE_STEPS)
    width = embed_dim or (config.model_kwargs["embed_dim"] if quick else STUDY_EMBED_DIM)
    return config.replace(lr=STUDY_FINE_TUNE_LR if variant == "finetune" else STUDY_LR, iso_flops=False,
                          model_kwargs=dict(config.model_kwargs, embed_dim=width))


def twice_as_long(stage: Stage, quick: bool) -> Stage:
    """``stage`` with twice its steps and warm-up (``quick``: unchanged, the presets' tiny runs)."""
    def longer(seed: int, previous: str | None) -> TrainConfig:
        config = stage(seed, previous)
        return config if quick else config.replace(steps=2 * config.steps, warmup_steps=2 * config.warmup_steps)
    return longer


def distilled(stage: Stage, same: str) -> Stage:
    """``stage`` with self-distillation from the full width (``distill_weight=1``), spending the same ``"flops"`` as
    ``stage`` (fewer steps: each also trains the full width) or taking the same ``"steps"`` (more FLOPs)."""
    if same not in ("flops", "steps"):
        raise ValueError(f"same must be 'flops' or 'steps', got {same!r}")

    def with_teacher(seed: int, previous: str | None) -> TrainConfig:
        config = stage(seed, previous)
        teacher = config.replace(distill_weight=1.0)
        if same == "steps" and config.iso_flops:  # the steps isoFLOPs gives the stage, now with the teacher too
            return teacher.replace(iso_flops=False, steps=training_flops(config)[0])
        if same == "flops" and not config.iso_flops:  # the stage's steps times its FLOPs per step / the teacher's
            steps, per_step = training_flops(config)
            return teacher.replace(steps=max(1, round(steps * per_step / training_flops(teacher)[1])))
        return teacher  # isoFLOPs already counts the teacher; without it the steps stay
    return with_teacher


def for_flops_of(stage: Stage, reference: Stage) -> Stage:
    """``stage`` run for as many steps as spend the training FLOPs of ``reference`` (isoFLOPs off)."""
    def matched(seed: int, previous: str | None) -> TrainConfig:
        config = stage(seed, previous)
        steps, per_step = training_flops(reference(seed, previous))
        return config.replace(iso_flops=False, steps=max(1, round(steps * per_step / training_flops(config)[1])))
    return matched


def training_flops(config: TrainConfig) -> tuple[int, float]:
    """The steps the trainer runs for ``config`` and the forward FLOPs per sample of one step (every forward)."""
    dataset = build_dataset(config.dataset, "train", config.data_dir, **config.dataset_kwargs)
    model = create_model(config.model, **model_kwargs_for_dataset(dataset, config.model_kwargs))
    size = tuple(model.default_input_size)
    return planned_steps(config, model, size), step_flops(config, model, size)


def paper_router(config: TrainConfig) -> TrainConfig:
    """``config`` with the paper's router and its training (the demo's fine-tuning preset now uses the router study's
    recipe): the studies' earlier arms keep the configuration their runs were made with."""
    model_kwargs = {key: value for key, value in config.model_kwargs.items() if key != "router"}
    return config.replace(router_target="none", model_kwargs=model_kwargs)


def run_dir(root: Path, arm: str, seed: int, stage: int) -> Path:
    """The run folder of ``arm``'s stage ``stage`` for ``seed`` under the study folder ``root``."""
    return root / "runs" / arm.replace(" ", "_").replace("/", "-") / f"seed{seed}" / f"stage{stage}"


def _finished(folder: Path) -> bool:
    """A run whose checkpoint holds its last step (an interrupted run's does not). The last step is the checkpoint's
    ``total_steps``, which ``iso_flops`` scales; the configuration's ``steps`` where an older checkpoint lacks it."""
    path = folder / CHECKPOINT_NAME
    if not path.exists():
        return False
    meta = load_checkpoint(path).meta
    total = meta.get("total_steps", json.loads((folder / "config.json").read_text())["steps"])
    return int(meta["step"]) == int(total)


def train_arm(arm: Arm, seed: int, root: Path, progress: bool, arms: dict[str, Arm]) -> tuple[Path, float]:
    """Train every stage of ``arm`` for ``seed`` (reusing finished stages and the ``init`` arm's run); returns the
    last checkpoint and the training seconds of all stages, the ``init`` arm's included."""
    previous: str | None = None
    seconds = 0.0
    if arm.init is not None:
        init_seed = seed if arm.init_seed is None else arm.init_seed
        checkpoint, seconds = train_arm(arms[arm.init], init_seed, root, progress, arms)
        previous = str(checkpoint)
    for index, stage in enumerate(arm.stages):
        folder = run_dir(root, arm.name, seed, index)
        config = stage(seed, previous).replace(output_dir=str(folder))
        timing = folder / "train_seconds.json"
        if not _finished(folder):
            tic = time.perf_counter()
            train(config, resume=True, progress=progress)
            atomic_write_text(timing, json.dumps({"seconds": time.perf_counter() - tic}) + "\n")
        seconds += json.loads(timing.read_text())["seconds"] if timing.exists() else float("nan")
        previous = str(folder / CHECKPOINT_NAME)
    return Path(previous), seconds


def evaluate_arm(arm: Arm, checkpoint: Path, split: str, num_samples: int | None) -> list[dict[str, Any]]:
    """Test-split rows of one trained model at the arm's capacities and router."""
    model, ckpt = load_model(checkpoint)
    config = ckpt.meta["config"]
    dataset = build_dataset(config["dataset"], split, config.get("data_dir"),
                            **dict(config.get("dataset_kwargs", {}), num_samples=num_samples))
    if arm.router != "learned":
        model.set_router(arm.router)
    torch.manual_seed(0)  # a random router draws from torch's generator: the same draws for every arm
    rows = evaluate(model, dataset, arm.capacities, batch_size=500)
    labels = arm.capacity_labels or tuple(f"{c:g}" for c in arm.capacities)
    for row, label in zip(rows, labels):
        row["capacity"] = label
    return rows


def run_study(
    name: str, arms: Sequence[Arm], seeds: Sequence[int], root: Path, num_samples: int | None = 2000,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Train every arm for every seed, evaluate on the val and test splits; write results and summary under ``root``
    (rows of other arms already in its results.json are kept).

    ``num_samples`` samples of each split are evaluated (``None``: the data set's default, for Fashion-MNIST the
    whole split). Recipes are compared on ``val`` (that is where a choice may be made); ``test`` gives the reported
    numbers.
    """
    root.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    by_name = {arm.name: arm for arm in arms}
    for seed in seeds:
        for arm in arms:
            source = by_name[arm.reuse] if arm.reuse else arm
            checkpoint, seconds = train_arm(source, seed, root, progress, by_name)
            for split in SPLITS:
                for row in evaluate_arm(arm, checkpoint, split, num_samples):
                    rows.append({"arm": arm.name, "family": arm.family, "split": split, "seed": seed,
                                 "train_seconds": seconds, **row})
            _logger.info("%s seed %d done", arm.name, seed)
    rows = _earlier_rows(root, {arm.name for arm in arms}) + rows
    summary = aggregate(rows)
    first = next(arm for arm in arms if arm.stages)
    write_outputs(name, rows, summary, root, first.stages[0](seeds[0], None).model_kwargs)
    return summary


def _earlier_rows(root: Path, rerun: set[str]) -> list[dict[str, Any]]:
    """Rows of ``root``'s results.json for arms not in ``rerun``: a study run with ``--arms`` adds to the results,
    it does not drop the other arms' rows (their run folders may be gone)."""
    path = root / "results.json"
    if not path.exists():
        return []
    kept = [row for row in json.loads(path.read_text()) if row["arm"] not in rerun]
    if kept:
        _logger.info("keeping %d result rows of %d earlier arms from %s", len(kept),
                     len({row["arm"] for row in kept}), path)
    return kept


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation (over seeds) of top-1 per arm and capacity; GFLOPs; median images/s."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["split"], row["arm"], str(row["capacity"])), []).append(row)
    summary = []
    for (split, arm, capacity), members in groups.items():
        top1 = [100 * m["top1"] for m in members]
        summary.append({
            "split": split,
            "arm": arm,
            "family": members[0]["family"],
            "capacity": capacity,
            "gflops": members[0]["gflops"],
            "top1_mean": statistics.fmean(top1),
            "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
            "seeds": len(top1),
            "top1_per_seed": top1,
            "images_per_s": statistics.median(m["images_per_s"] for m in members),
            "train_seconds": statistics.fmean(m["train_seconds"] for m in members),
        })
    return summary


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    """Rows of the summary as a markdown table."""
    lines = ["| arm | capacity | GFLOPs | top-1 % (mean ± std) | seeds | images/s | train s |",
             "|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['arm']} | {s['capacity']} | {1000 * s['gflops']:.2f}e-3 | {s['top1_mean']:.2f} ± "
                     f"{s['top1_std']:.2f} | {s['seeds']} | {s['images_per_s']:.0f} | {s['train_seconds']:.0f} |")
    return "\n".join(lines)


def write_outputs(
    name: str, rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]], root: Path,
    model_kwargs: dict[str, Any],
) -> None:
    """results.csv/json (one row per seed), summary.json (with the first arm's ``model_kwargs``: the study's model
    size, for the report) and the two plots under ``root``."""
    buffer = io.StringIO()
    columns = ["split", "arm", "family", "seed", "capacity", "realised_capacity", "gflops", "top1", "images_per_s",
               "num_samples", "train_seconds"]
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(root / "results.csv", buffer.getvalue())
    atomic_write_text(root / "results.json", json.dumps(list(rows), indent=2) + "\n")
    document = {"study": name, "model_kwargs": model_kwargs, "rows": list(summary)}
    atomic_write_text(root / "summary.json", json.dumps(document, indent=2) + "\n")
    test = [s for s in summary if s["split"] == "test"]
    plot(test, root / "accuracy_vs_gflops.png", "gflops", "GFLOPs per image (multiply-accumulates)", name)
    plot(test, root / "accuracy_vs_images_per_s.png", "images_per_s", "images/s (forward, this machine)", name)


def plot(summary: Sequence[dict[str, Any]], path: Path, x_key: str, x_label: str, title: str) -> Path:
    """Top-1 (mean ± std over seeds) against ``x_key``, one curve per arm."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.2))
    ax = fig.subplots()
    arms: dict[str, list[dict[str, Any]]] = {}
    for s in summary:
        arms.setdefault(s["arm"], []).append(s)
    colors = colormaps["tab20"].colors
    markers = "osD^vP*Xh<>p"
    for index, (arm, points) in enumerate(arms.items()):
        points = sorted(points, key=lambda p: p[x_key])
        ax.errorbar([p[x_key] for p in points], [p["top1_mean"] for p in points],
                    yerr=[p["top1_std"] for p in points], marker=markers[index % len(markers)], capsize=3,
                    color=colors[(2 * index) % 20 + (2 * index // 20) % 2], label=arm)
    ax.set_xlabel(x_label)
    ax.set_ylabel("top-1 accuracy (%), mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def lookup(summary: Sequence[dict[str, Any]], arm: str, capacity: str, split: str = "test") -> dict[str, Any]:
    for s in summary:
        if s["arm"] == arm and s["capacity"] == capacity and s["split"] == split:
            return s
    raise KeyError(f"no {split} result for {arm!r} at capacity {capacity}")


def difference(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float]:
    """Mean difference a - b in points and its standard error (independent seeds)."""
    se = math.sqrt(a["top1_std"] ** 2 / a["seeds"] + b["top1_std"] ** 2 / b["seeds"])
    return a["top1_mean"] - b["top1_mean"], se


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--output", type=Path, required=True, help="study folder (runs, results, plots)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="tiny models and steps: checks the script end to end")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--progress", action="store_true")
    return p


def select_arms(arms: Sequence[Arm], names: Sequence[str] | None) -> list[Arm]:
    """The arms named in ``names`` (all when ``None``) and the arms they start from or evaluate, in study order.

    Raises SystemExit naming the available arms when a name is unknown.
    """
    if names is None:
        return list(arms)
    unknown = sorted(set(names) - {arm.name for arm in arms})
    if unknown:
        raise SystemExit(f"unknown arms: {', '.join(unknown)}; available: {', '.join(a.name for a in arms)}")
    chosen = set(names)
    for arm in reversed(arms):  # the arms a chosen arm starts from or evaluates come along
        if arm.name in chosen:
            chosen |= {name for name in (arm.init, arm.reuse) if name}
    return [arm for arm in arms if arm.name in chosen]


def setup(args: argparse.Namespace) -> None:
    """Logging to stderr, and torch's thread count when ``--threads`` is given."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
