"""``mone demo``: at half the compute, should you pick MoNE or a smaller dense ViT? Measured on cluttered digits.

Compares, with the same data and optimiser (``mone.configs.demo``: D=128, 4 layers, 64 tokens), a dense ViT, a dense
ViT of half its FLOPs (2 layers), the half-width ViT that nested (MatViT) training leaves inside the MoNE model, and
MoNE by the image study's best recipe (docs/results.md, chosen on validation): upcycling, the trained dense ViT's
weights through 400 steps of MatViT-style nested training, then isoFLOPs adaptive MoNE fine-tuning (about 520
steps), one model for every budget. The dense ViT and its nested upcycling (about 9 and 6 minutes on one core) ship
with the package as weights-only checkpoints made by ``experiments/study_images.py`` (seed 0) and
``experiments/export_demo_checkpoint.py``; ``--pretrain`` retrains them here. The 2-layer dense ViT and the MoNE
fine-tuning train here. Every model is evaluated on the test split (source digits never seen in training): top-1
against GFLOPs and against measured images/s, MoNE at capacities {0.25, 0.5, 0.75, 1.0} from one model; then the
verdict in plain words, routing maps and the share of digit tokens the router sends to the large experts, beside a
random router and the router at initialisation. Nothing is tuned on the test split; docs/results.md has 3 seeds of
every comparison.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from ._extras import require
from ._io import atomic_write_text, prepare_output_dir, save_figure
from ._settings import add_setting_arguments, device_setting, progress_setting, setting, settings_from_args
from ._timing import time_round_robin
from .configs import demo as demo_config
from .data import build_dataset
from .models import create_model
from .train.checkpoint import load_model
from .train.evaluate import CPU_BATCH_SIZE, evaluate, format_table, write_results
from .train.loop import train
from .viz import object_routing_share, save_routing_maps

__all__ = ["PRETRAINED", "add_arguments", "run", "run_demo"]

_logger = logging.getLogger(__name__)

PRETRAINED = {variant: files("mone") / "assets" / f"demo_{variant}_seed0.safetensors" for variant in ("dense", "upcycle")}
EVAL_CAPACITIES = (0.25, 0.5, 0.75, 1.0)
SHARE_CAPACITIES = (0.25, 0.5, 0.75)
TEST_SAMPLES = 5000
CLOCK_ROUNDS = 21  # round-robin rounds of the speed comparison (one forward of each model per round)
CLOCK_SPREAD = 0.2  # quartiles of a speed ratio straddling 1 and this far apart (of the median): too noisy to say
HALF_WIDTH = (0.0, 0.0, 1.0, 0.0)  # every token on the third nested expert: the D/2-wide ViT inside the model
LABELS = {
    "dense": "dense ViT (4 layers)",
    "dense_half": "dense ViT, 2 layers (half the FLOPs)",
    "matvit_half": "MatViT half-width ViT (the nested model alone)",
    "finetune": "MoNE (dense ViT -> nested -> adaptive)",
}


@torch.inference_mode()
def clock(
    models: dict[str, tuple[torch.nn.Module, Any]], images: torch.Tensor, rounds: int = CLOCK_ROUNDS
) -> dict[str, list[float]]:
    """Seconds per forward pass of each ``(model, capacity)`` on ``images``, timed round-robin as ``mone bench`` does
    (one call of each per round, so a busy machine slows every model alike): ``rounds`` values per model."""
    calls = {name: functools.partial(model, images, capacity=capacity) for name, (model, capacity) in models.items()}
    return time_round_robin(calls, rounds, warmup=2, synchronize=lambda: None)


def speed_ratio(times: dict[str, list[float]], model: str, reference: str) -> dict[str, float]:
    """How many times ``reference``'s images/s ``model`` runs at: the median and quartiles over rounds of the two
    models' seconds in the same round (``reference / model``)."""
    q1, median, q3 = statistics.quantiles([r / m for r, m in zip(times[reference], times[model])], n=4)
    return {"speedup": median, "q1": q1, "q3": q3}


def clock_words(ratio: dict[str, float], reference: str) -> str:
    """A :func:`speed_ratio` in words: faster or slower when the middle half of the rounds agree on it, else no clear
    difference, or too noisy to say when those rounds spread over more than ``CLOCK_SPREAD`` of the median."""
    spread = (f"{ratio['speedup']:.2f}x the {reference}'s images/s (quartiles over rounds {ratio['q1']:.2f}-"
              f"{ratio['q3']:.2f}x)")
    if ratio["q1"] > 1:
        return f"{spread}: faster"
    if ratio["q3"] < 1:
        return f"{spread}: slower"
    if ratio["q3"] - ratio["q1"] > CLOCK_SPREAD * ratio["speedup"]:
        return f"{spread}: the rounds differ too much on this machine now to conclude"
    return f"{spread}: no clear difference"


def _two_se(a: float, b: float, num_samples: int) -> float:
    """Two standard errors of the difference of two accuracies measured on ``num_samples`` test images each."""
    return 2 * math.sqrt((a * (1 - a) + b * (1 - b)) / num_samples)


def _verdict(dense: float, mone: float, num_samples: int) -> tuple[str, float]:
    """Plain-words comparison of two test accuracies, with two standard errors of their difference as the margin."""
    margin = _two_se(dense, mone, num_samples)
    gap = mone - dense
    if abs(gap) <= margin:
        word = "matches"
    elif gap > 0:
        word = "beats"
    else:
        word = "does not match"
    return word, margin


def _shipped_or_trained(variant: str, config: Any, pretrain: bool, progress: bool) -> tuple[Path, float | None]:
    """The checkpoint of ``variant`` (``dense`` or ``upcycle``) and its training seconds: trained here with
    ``pretrain``, else the one shipped with mone (seconds ``None``)."""
    if pretrain:
        tic = time.perf_counter()
        result = train(config, resume=True, progress=progress)
        return result.checkpoint, time.perf_counter() - tic
    if not PRETRAINED[variant].is_file():
        raise FileNotFoundError(f"the shipped checkpoint {PRETRAINED[variant]} is missing; run with --pretrain")
    return Path(str(PRETRAINED[variant])), None


def run_demo(
    output_dir: str | Path = "runs/demo",
    steps: int | None = None,
    local: bool = False,
    device: str = "cpu",
    progress: bool = True,
    pretrain: bool = False,
) -> dict[str, Any]:
    """Train, evaluate and report; returns the results (also written to ``output_dir``).

    Args:
        output_dir: report folder; each model's run goes to a sub-folder. A finished run with the same settings
            there is reused (an interrupted one continues), a run with other settings is refused.
        steps: override the training steps of every model (default: the presets').
        local: the presets' tiny versions and a small test set (smoke tests; numbers meaningless). Implies
            ``pretrain`` (the shipped checkpoints are for the full-size models).
        device: where to train and evaluate.
        progress: progress bars.
        pretrain: train the dense ViT and its nested upcycling here instead of loading the shipped checkpoints.
    """
    start = time.perf_counter()
    output_dir = prepare_output_dir(output_dir)
    configs = {}
    for variant in ("dense", "dense_half", "upcycle", "finetune"):
        config = demo_config(variant, local).replace(output_dir=str(output_dir / variant), device=device)
        configs[variant] = config if steps is None else config.replace(steps=steps)
    test = build_dataset("cluttered_digits", "test", **dict(configs["dense"].dataset_kwargs,
                                                            num_samples=256 if local else TEST_SAMPLES))

    checkpoints, train_seconds = {}, {}
    pretrain = pretrain or local  # the shipped checkpoints hold the full-size models
    checkpoints["dense"], train_seconds["dense"] = _shipped_or_trained("dense", configs["dense"], pretrain, progress)
    configs["upcycle"] = configs["upcycle"].replace(init_from=str(checkpoints["dense"]))
    checkpoints["upcycle"], train_seconds["upcycle"] = _shipped_or_trained("upcycle", configs["upcycle"], pretrain,
                                                                           progress)
    configs["finetune"] = configs["finetune"].replace(init_from=str(checkpoints["upcycle"]))
    models = {variant: load_model(checkpoints[variant])[0].eval() for variant in ("dense", "upcycle")}
    steps_run = {}
    for variant in ("dense_half", "finetune"):
        tic = time.perf_counter()
        result = train(configs[variant], resume=True, progress=progress)
        models[variant], steps_run[variant] = result.model.cpu().eval(), result.total_steps
        train_seconds[variant] = time.perf_counter() - tic
    results = {LABELS[variant]: evaluate(models[variant], test, (1.0,), CPU_BATCH_SIZE)
               for variant in ("dense", "dense_half")}
    results[LABELS["matvit_half"]] = evaluate(models["upcycle"], test, (HALF_WIDTH,), CPU_BATCH_SIZE)
    results[LABELS["matvit_half"]][0]["capacity"] = 1.0  # a model of its own: all of its (half-width) layers
    results[LABELS["finetune"]] = evaluate(models["finetune"], test, EVAL_CAPACITIES, CPU_BATCH_SIZE)
    mone = models["finetune"]
    clock_rounds = 5 if local else CLOCK_ROUNDS
    times = clock({"dense": (models["dense"], 1.0), "dense_half": (models["dense_half"], 1.0),
                   "matvit_half": (models["upcycle"], HALF_WIDTH), "mone": (mone, 0.5)},
                  torch.stack([test[i][0] for i in range(min(CPU_BATCH_SIZE, len(test)))]),
                  rounds=clock_rounds)

    write_results(results, output_dir)
    plot_tradeoff(results, output_dir / "accuracy_vs_compute.png")
    count = 6
    images = torch.stack([test[i][0] for i in range(count)])
    save_routing_maps(mone, images, EVAL_CAPACITIES[:-1], output_dir / "routing_maps.png",
                      [test.box(i) for i in range(count)], [f"label {test[i][1]}" for i in range(count)])
    shares = routing_shares(mone, configs["finetune"], test, 256 if local else 1000)
    atomic_write_text(output_dir / "routing_share.json", json.dumps(shares, indent=2) + "\n")

    dense, half = results[LABELS["dense"]][0], results[LABELS["dense_half"]][0]
    matvit_half = results[LABELS["matvit_half"]][0]
    mone_half = next(r for r in results[LABELS["finetune"]] if r["capacity"] == 0.5)
    verdict_dense, margin = _verdict(dense["top1"], mone_half["top1"], dense["num_samples"])
    summary = {
        "dense_top1": dense["top1"],
        "dense_half_top1": half["top1"],
        "matvit_half_top1": matvit_half["top1"],
        "mone_at_0.5_top1": mone_half["top1"],
        "verdict_vs_dense": verdict_dense,
        "verdict_vs_dense_half": _verdict(half["top1"], mone_half["top1"], half["num_samples"])[0],
        "verdict_vs_matvit_half": _verdict(matvit_half["top1"], mone_half["top1"], matvit_half["num_samples"])[0],
        "margin": margin,
        "flops_ratio": dense["gflops"] / mone_half["gflops"],
        "clock_rounds": clock_rounds,
        "speed_vs_dense": speed_ratio(times, "mone", "dense"),
        "speed_vs_dense_half": speed_ratio(times, "mone", "dense_half"),
        "speed_vs_matvit_half": speed_ratio(times, "mone", "matvit_half"),
        "train_seconds": train_seconds,
        "fine_tune_steps": steps_run["finetune"],
        "checkpoints": {variant: str(path) for variant, path in checkpoints.items()},
        "alpha": float(mone.alpha_value.detach()),
        "total_seconds": time.perf_counter() - start,
    }
    atomic_write_text(output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(output_dir / "README.md", _report(summary, results, shares, configs, local))
    return {"summary": summary, "results": results, "shares": shares}


@torch.inference_mode()
def routing_shares(model: torch.nn.Module, config: Any, test: Any, num_samples: int) -> dict[str, list[dict]]:
    """Digit and background shares on the two largest experts: the trained model's router, a random router (same
    weights, same capacities) and the router of the same architecture at initialisation (seeded like the run)."""
    torch.manual_seed(config.seed)
    fresh = create_model(config.model, **config.model_kwargs).eval()
    own = model.router_mode
    out = {}
    for name, candidate, router in (("trained", model, own), ("random", model, "random"),
                                    ("at initialisation", fresh, own)):
        candidate.set_router(router)
        torch.manual_seed(0)
        out[name] = [object_routing_share(candidate, test, c, num_samples=num_samples) for c in SHARE_CAPACITIES]
    model.set_router(own)
    return out


def plot_tradeoff(results: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Two panels: top-1 against GFLOPs per image and against measured images/s, one curve or point per model."""
    Figure = require("matplotlib.figure", "the demo's plot", "demo").Figure

    fig = Figure(figsize=(10, 4.2))
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], "gflops", "GFLOPs per image (multiply-accumulates)"),
                           (axes[1], "images_per_s", f"images/s (forward, batch {CPU_BATCH_SIZE}, this machine)")):
        for name, rows in results.items():
            rows = sorted(rows, key=lambda r: r[key])
            ax.plot([r[key] for r in rows], [100 * r["top1"] for r in rows], marker="o", label=name)
            if len(rows) > 1:
                for r in rows:
                    ax.annotate(f"{r['capacity']:g}", (r[key], 100 * r["top1"]), textcoords="offset points",
                                xytext=(4, -10), fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 accuracy (%), test split")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("cluttered digits: accuracy against compute (MoNE points labelled with their capacity)")
    fig.tight_layout()
    return save_figure(fig, path)


def _answer(words: dict[str, str], accuracy: dict[str, float]) -> str:
    """Which model to pick at half the compute, by accuracy, from MoNE's verdict against each same-FLOPs model
    (``words``, by name): the most accurate of them (``accuracy`` in %) when one beats MoNE; else the ones MoNE is
    only level with; else MoNE."""
    if "does not match" in words.values():
        best = max(accuracy, key=accuracy.get)
        return ("At this scale MoNE does not beat a dense ViT of the same FLOPs; for half the compute, the most "
                f"accurate model here is: {best}, {accuracy[best]:.2f}%.")
    level = [name for name, word in words.items() if word == "matches"]
    if level:
        return ("By accuracy, MoNE at half the compute is not ahead of the " + " and the ".join(level)
                + ": level within two standard errors.")
    return "By accuracy, MoNE at half the compute is the model to pick here."


def _budgets(rows: dict[float, dict[str, float]], dense: float, num_samples: int) -> str:
    """One line on the MoNE model across budgets (``rows`` by capacity, ``dense`` the dense ViT's top-1, both on
    ``num_samples`` test images), saying where more capacity stops buying accuracy: when the accuracy at the largest
    budget is below the peak by more than two standard errors (test-set sampling)."""
    listed = ", ".join(f"{c:g}: {100 * r['top1']:.2f}%" for c, r in rows.items())
    text = f"One MoNE model for every budget: {listed} (dense ViT: {100 * dense:.2f}%)."
    peak, top = max(rows, key=lambda c: rows[c]["top1"]), max(rows)
    best, last = rows[peak]["top1"], rows[top]["top1"]
    if best - last <= _two_se(best, last, num_samples):
        return text
    advice = ": for more compute, the dense ViT is the better choice." if dense > best else "."
    return (text[:-1] + f"; its accuracy peaks at capacity {peak:g} and falls above it, so it is worth running up to "
            f"{peak:g}{advice}")


def _report(
    summary: dict[str, Any], results: dict[str, list[dict[str, float]]], shares: dict[str, list[dict[str, Any]]],
    configs: dict[str, Any], local: bool,
) -> str:
    pct = {k: 100 * summary[k] for k in ("dense_top1", "dense_half_top1", "matvit_half_top1", "mone_at_0.5_top1")}
    mone_rows = {r["capacity"]: r for r in results[LABELS["finetune"]]}
    dense_row = results[LABELS["dense"]][0]
    width = configs["upcycle"].model_kwargs["embed_dim"]
    same_flops = {LABELS["dense_half"]: pct["dense_half_top1"], LABELS["matvit_half"]: pct["matvit_half_top1"]}
    words = {LABELS["dense_half"]: summary["verdict_vs_dense_half"],
             LABELS["matvit_half"]: summary["verdict_vs_matvit_half"]}
    answer = _answer(words, same_flops)
    verdict = [
        f"**At capacity 0.5, MoNE {summary['verdict_vs_dense']} the full dense ViT** ({pct['mone_at_0.5_top1']:.2f}% "
        f"against {pct['dense_top1']:.2f}% top-1, {summary['flops_ratio']:.2f}x fewer FLOPs; two standard errors of "
        f"the difference from test-set sampling: {100 * summary['margin']:.2f} points), **"
        f"{summary['verdict_vs_dense_half']} the dense ViT of half the FLOPs** ({pct['dense_half_top1']:.2f}%) **and "
        f"{summary['verdict_vs_matvit_half']} the half-width ViT of its own nested model** "
        f"({pct['matvit_half_top1']:.2f}%, the same FLOPs). {answer}",
        "",
        f"On the clock (this machine, forward passes of batch {CPU_BATCH_SIZE}, the models timed round-robin, "
        f"{summary['clock_rounds']} rounds): MoNE at 0.5 runs at "
        f"{clock_words(summary['speed_vs_dense'], 'dense ViT')}; at "
        f"{clock_words(summary['speed_vs_dense_half'], 'half-FLOPs dense ViT')}; at "
        f"{clock_words(summary['speed_vs_matvit_half'], 'half-width ViT')}. At this small width (D={width}, smallest "
        f"expert {width // 8} features) the per-expert kernels and the routing cost much of what the multiply-adds "
        "save (docs/performance.md).",
        "",
        _budgets(mone_rows, dense_row["top1"], dense_row["num_samples"]),
    ]
    upcycle = configs["upcycle"]

    def made(variant: str) -> str:
        seconds = summary["train_seconds"][variant]
        if seconds is not None:
            return f"trained here, {seconds:.0f} s"
        return (f"loaded from the checkpoint shipped with mone (`{Path(summary['checkpoints'][variant]).name}`, made "
                "by `experiments/study_images.py` and `experiments/export_demo_checkpoint.py`, seed 0; `--pretrain` "
                "retrains it here)")

    routing = [
        "## Routing",
        "",
        "Share of tokens sent to the two largest experts: tokens at least half inside the digit's box, tokens entirely "
        "outside it, and all tokens (what a router blind to the content gives both on average); for the trained "
        "model's router, a random router on the same model, and the same architecture at initialisation. The "
        "digit boxes are read only here: routing uses nothing but the model's own tokens (docs/method.md).",
        "",
        "| router | capacity | digit tokens | background tokens | all tokens |",
        "|---|---|---|---|---|",
    ]
    for name, rows in shares.items():
        routing += [f"| {name} | {r['capacity']:g} | {r['object_share']:.3f} | {r['background_share']:.3f} | "
                    f"{r['expected_share']:.3f} |" for r in rows]
    routing += ["", "Routing maps (green box: the digit):", "", "![routing maps](routing_maps.png)", ""]
    lines = [
        "# MoNE demo: cluttered digits",
        "",
        *(["_Numbers from a `--local` smoke run: tiny models, meaningless accuracies._", ""] if local else []),
        *verdict,
        "",
        *routing,
        "## What was trained",
        "",
        f"Every model: ViT with D={width}, {upcycle.model_kwargs['num_heads']} heads, patch "
        f"{upcycle.model_kwargs['patch_size']} on a {upcycle.model_kwargs['img_size']} px canvas; AdamW, batch "
        f"{upcycle.batch_size}, label smoothing {upcycle.label_smoothing}, seed {upcycle.seed}; data: cluttered digits "
        f"{json.dumps(upcycle.dataset_kwargs)}; test split of {dense_row['num_samples']} images whose source digits "
        "never appear in training.",
        "",
        f"- {LABELS['dense']}: {configs['dense'].steps} steps, lr {configs['dense'].lr}; {made('dense')}.",
        f"- {LABELS['dense_half']}: {configs['dense_half'].steps} steps, lr {configs['dense_half'].lr}; "
        f"{made('dense_half')}.",
        f"- {LABELS['finetune']}: the dense ViT's weights upcycled into nested experts by {upcycle.steps} steps of "
        f"nested (MatViT-style) training, each averaging the loss over the four widths, lr {upcycle.lr}, "
        f"{made('upcycle')}; then {summary['fine_tune_steps']} steps of adaptive "
        f"MoNE fine-tuning (capacity drawn per step, lr {configs['finetune'].lr}, router "
        f"`{configs['finetune'].model_kwargs.get('router', 'learned')}`"
        + (f" with router target `{configs['finetune'].router_target}`"
           if configs['finetune'].router_target != "none" else "")
        + (f"; isoFLOPs: the FLOPs of {configs['finetune'].steps} dense steps" if configs['finetune'].iso_flops else "")
        + f"), {made('finetune')}. Its training "
        "compute adds to the dense ViT's (a nested step costs the four widths' forward and backward passes): "
        "docs/results.md (router study) also compares it with a dense ViT trained on for as long. "
        f"Learned alpha: {summary['alpha']:.3f}.",
        f"- {LABELS['matvit_half']}: the upcycled nested model with every token on the D/2-wide expert, no "
        "training of its own.",
        "",
        f"Whole demo: {summary['total_seconds']:.0f} s. The 3-seed study behind this recipe, with every baseline "
        "(MatViT, Mixture-of-Depths, random routers, upcycling, dense ViTs of matched FLOPs), is docs/results.md.",
        "",
        "## Accuracy against compute",
        "",
        "GFLOPs are multiply-accumulates per image (the ViT/MoNE convention), from the realised per-expert token "
        "counts; images/s times forward passes only, on this machine.",
        "",
        "![accuracy against compute](accuracy_vs_compute.png)",
        "",
    ]
    for label, rows in results.items():
        lines += [f"### {label}", "", "| capacity | realised | GFLOPs | top-1 % | images/s |", "|---|---|---|---|---|"]
        lines += [f"| {r['capacity']:g} | {r['realised_capacity']:.4f} | {r['gflops']:.4f} | {100 * r['top1']:.2f} | "
                  f"{r['images_per_s']:.0f} |" for r in rows]
        lines.append("")
    lines += ["Files: `results.csv`, `results.json`, `routing_share.json`, `summary.json`, and one run folder per "
              "trained model (checkpoint, metrics.jsonl, config.json).", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class DemoSettings:
    """The options of ``mone demo``, one field each."""

    output: str = setting("runs/demo", help="report folder")
    pretrain: bool = setting(False, help="train the dense ViT and its nested upcycling here (about 10 more minutes "
                                         "on 2 cores) instead of loading the shipped checkpoints")
    steps: int | None = setting(None, help="training steps per model (default: the presets')")
    local: bool = setting(False, help="tiny smoke-test version (seconds, meaningless numbers)")
    device: str = device_setting()
    progress: bool = progress_setting()

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_setting_arguments(parser, DemoSettings)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, DemoSettings)
    report = run_demo(settings.output, settings.steps, settings.local, settings.device, settings.progress,
                      settings.pretrain)
    for label, rows in report["results"].items():
        print(format_table(rows, title=label))
    s = report["summary"]
    print(f"MoNE at 0.5 {s['verdict_vs_dense']} the dense ViT ({100 * s['mone_at_0.5_top1']:.2f}% vs "
          f"{100 * s['dense_top1']:.2f}%, {s['flops_ratio']:.2f}x fewer FLOPs), {s['verdict_vs_dense_half']} the "
          f"half-FLOPs dense ViT ({100 * s['dense_half_top1']:.2f}%) and {s['verdict_vs_matvit_half']} MatViT's "
          f"half-width ViT ({100 * s['matvit_half_top1']:.2f}%); {clock_words(s['speed_vs_dense'], 'dense ViT')} "
          f"({s['total_seconds']:.0f} s). Report: {Path(settings.output) / 'README.md'}")
    return 0
