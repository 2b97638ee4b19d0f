"""Train a MoNE model (``mone train``): a preset or the default configuration, overridden by flags.

Examples:
    mone train --config demo_mone --output runs/mone
    mone train --model mone_vit_test --model-arg patch_size=4 --dataset fashion_mnist --capacity-mode adaptive
    mone train --output runs/mone --resume            # continue an interrupted run exactly
    torchrun --nproc_per_node 2 -m mone.cli train ... # data parallel (gloo on CPU, NCCL on GPUs)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from .._settings import add_setting_arguments, progress_setting, setting, setting_changes, settings_from_args
from ..configs import get_config, list_configs
from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .config import TrainConfig
from .loop import train
from .run_dir import read_config

__all__ = ["TrainCommand", "add_arguments", "config_from_args", "run"]


@dataclass(frozen=True)
class TrainCommand:
    """The options of ``mone train`` that are not :class:`TrainConfig` fields: where the configuration starts."""

    config: str | None = setting(None, help=f"preset to start from: {', '.join(list_configs())}")
    local: bool = setting(False, help="the preset's tiny version (smoke test)")
    resume: bool = setting(False, help="continue the run saved in --output")
    progress: bool = progress_setting()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples' lines
    add_setting_arguments(parser, TrainCommand)
    settings = parser.add_argument_group(
        "settings", "One flag per TrainConfig field. The defaults shown are TrainConfig's; a --config preset or a\n"
                    "resumed run (--resume) replaces them, and the flags given change that.")
    add_setting_arguments(settings, TrainConfig)


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
    command = settings_from_args(args, TrainCommand)
    if command.local and command.config is None:
        raise ValueError("--local selects a preset's tiny version: name the preset with --config")
    if command.config is not None:
        config = get_config(command.config, local=command.local)
    elif command.resume:
        config = _saved_config(Path(args.output_dir or TrainConfig().output_dir)) or TrainConfig()
    else:
        config = TrainConfig()
    return config.replace(**setting_changes(args, TrainConfig, base=config))


def run(args: argparse.Namespace) -> int:
    command = settings_from_args(args, TrainCommand)
    result = train(config_from_args(args), resume=command.resume, progress=command.progress)
    metrics = result.last_metrics
    if metrics:
        print(f"step {metrics['step']}/{result.total_steps}: loss {metrics['loss']:.4f}, train acc "
              f"{100 * metrics['acc']:.2f}%")
    print(f"checkpoint: {result.checkpoint}")
    return 0
