"""Train a MoNE model (``mone train``): a preset or the default configuration, overridden by flags.

Examples:
    mone train --config demo_mone --output runs/mone
    mone train --model mone_vit_test --model-arg patch_size=4 --dataset fashion_mnist --capacity-mode adaptive
    mone train --output runs/mone --resume            # continue an interrupted run exactly
    torchrun --nproc_per_node 2 -m mone.cli train ... # data parallel (gloo on CPU, NCCL on GPUs)
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any

from ..configs import get_config, list_configs
from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .config import CAPACITY_MODES, PRECISIONS, TrainConfig
from .loop import train
from .run_dir import read_config

__all__ = ["add_arguments", "config_from_args", "run"]

# flag -> TrainConfig field, for the plain overrides
_OVERRIDES = {
    "model": "model", "dataset": "dataset", "data_dir": "data_dir", "steps": "steps", "batch_size": "batch_size",
    "lr": "lr", "min_lr": "min_lr", "warmup_steps": "warmup_steps", "weight_decay": "weight_decay",
    "grad_clip": "grad_clip", "label_smoothing": "label_smoothing", "precision": "precision",
    "capacity_mode": "capacity_mode", "capacity": "capacity", "capacities": "capacities", "iso_flops": "iso_flops",
    "init_from": "init_from", "seed": "seed", "output": "output_dir", "log_every": "log_every",
    "checkpoint_every": "checkpoint_every", "workers": "num_workers", "device": "device",
}


def _key_value(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as a Python literal when it is one (``4``, ``0.5``, ``True``), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples' lines
    parser.add_argument("--config", default=None, help=f"preset to start from: {', '.join(list_configs())}")
    parser.add_argument("--local", action="store_true", help="the preset's tiny version (smoke test)")
    parser.add_argument("--model", default=None, help="registered model name")
    parser.add_argument("--model-arg", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="model keyword argument (repeatable), e.g. patch_size=4")
    parser.add_argument("--dataset", default=None, help="cluttered_digits, fashion_mnist, image_folder, ...")
    parser.add_argument("--data-dir", default=None, help="dataset folder (Fashion-MNIST IDX files, image tree)")
    parser.add_argument("--dataset-arg", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="dataset keyword argument (repeatable), e.g. img_size=32")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--min-lr", type=float, default=None)
    parser.add_argument("--warmup-steps", type=int, default=None)
    parser.add_argument("--weight-decay", type=float, default=None)
    parser.add_argument("--grad-clip", type=float, default=None)
    parser.add_argument("--label-smoothing", type=float, default=None)
    parser.add_argument("--precision", choices=PRECISIONS, default=None)
    parser.add_argument("--capacity-mode", choices=CAPACITY_MODES, default=None)
    parser.add_argument("--capacity", type=float, default=None, help="capacity of fixed-mode training")
    parser.add_argument("--capacities", type=float, nargs="+", default=None, help="set sampled in adaptive mode")
    parser.add_argument("--iso-flops", action="store_const", const=True, default=None,
                        help="scale the steps by dense / MoNE FLOPs")
    parser.add_argument("--init-from", default=None, help="start from this checkpoint's weights (e.g. nested)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--output", default=None,
                        help="run folder (checkpoint, metrics.jsonl, config.json); one holding a run needs --resume")
    parser.add_argument("--log-every", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader processes")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _saved_config(folder: Path) -> TrainConfig | None:
    """The configuration of the run in ``folder``: its checkpoint's, else its ``config.json``, else None."""
    if (folder / CHECKPOINT_NAME).exists():
        saved = load_checkpoint(folder / CHECKPOINT_NAME, tensors=False).meta.get("config")
    else:
        saved = read_config(folder)
    return TrainConfig.from_dict(saved) if isinstance(saved, dict) else None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's configuration: a preset, the saved run (``--resume``) or the defaults, then the given flags.

    With ``--resume`` and ``--config``, the preset (and flags) must describe the saved run: the trainer refuses a
    different one.
    """
    if args.local and args.config is None:
        raise ValueError("--local selects a preset's tiny version: name the preset with --config")
    if args.config is not None:
        config = get_config(args.config, local=args.local)
    elif args.resume:
        config = _saved_config(Path(args.output or TrainConfig().output_dir)) or TrainConfig()
    else:
        config = TrainConfig()
    changes = {field: getattr(args, flag) for flag, field in _OVERRIDES.items() if getattr(args, flag) is not None}
    if args.model_arg:
        changes["model_kwargs"] = {**config.model_kwargs, **dict(args.model_arg)}
    if args.dataset_arg:
        changes["dataset_kwargs"] = {**config.dataset_kwargs, **dict(args.dataset_arg)}
    return config.replace(**changes)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    result = train(config, resume=args.resume, progress=not args.no_progress)
    metrics = result.last_metrics
    if metrics:
        print(f"step {metrics['step']}/{result.total_steps}: loss {metrics['loss']:.4f}, train acc "
              f"{100 * metrics['acc']:.2f}%")
    print(f"checkpoint: {result.checkpoint}")
    return 0
