"""Turn a trainer checkpoint into a ``save_pretrained`` folder (``mone export RUN_DIR OUT_DIR``).

``RUN_DIR`` is a run folder (or its ``checkpoint.safetensors``); ``OUT_DIR`` receives ``config.json`` and
``model.safetensors``, readable by ``mone.from_pretrained`` (and, with timm, ``timm.create_model("local-dir:OUT_DIR",
pretrained=True)``). Only the model's weights and settings are kept: no optimiser or RNG state. An ``OUT_DIR`` that
exists and is not empty is refused, never overwritten.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ._io import check_new_output_dir
from ._settings import add_setting_arguments, setting, settings_from_args
from .hub import CONFIG_NAME, WEIGHTS_NAME, save_pretrained

__all__ = ["ExportSettings", "add_arguments", "export", "run"]


@dataclass(frozen=True)
class ExportSettings:
    """The arguments of ``mone export``, one field each."""

    run_dir: str = setting(positional=True, help="run folder or checkpoint file written by mone train")
    out_dir: str = setting(positional=True, help="new (or empty) folder for config.json and model.safetensors")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_setting_arguments(parser, ExportSettings)


def export(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Load the checkpoint of ``run_dir`` and write it to ``out_dir`` with :func:`mone.save_pretrained`.

    Raises:
        ValueError: when ``out_dir`` exists and is not empty, or the checkpoint is not readable.
        NotADirectoryError: when ``out_dir`` is a file.
        FileNotFoundError: when the checkpoint does not exist.
    """
    from .train.checkpoint import load_model  # the trainer's reader; imported here, the CLI loads every subcommand

    check_new_output_dir(out_dir)  # before the checkpoint is read; save_pretrained checks again
    model, _ = load_model(run_dir)
    return save_pretrained(model, out_dir)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, ExportSettings)
    out_dir = export(settings.run_dir, settings.out_dir)
    print(f"wrote {out_dir / CONFIG_NAME} and {out_dir / WEIGHTS_NAME}")
    return 0
