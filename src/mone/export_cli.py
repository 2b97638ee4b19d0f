"""Turn a trainer checkpoint into a ``save_pretrained`` folder (``mone export RUN_DIR OUT_DIR``).

``RUN_DIR`` is a run folder (or its ``checkpoint.safetensors``); ``OUT_DIR`` receives ``config.json`` and
``model.safetensors``, readable by ``mone.from_pretrained`` (and, with timm, ``timm.create_model("local-dir:OUT_DIR",
pretrained=True)``). Only the model's weights and settings are kept: no optimiser or RNG state. An ``OUT_DIR`` that
exists and is not empty is refused, never overwritten.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .hub import CONFIG_NAME, WEIGHTS_NAME, save_pretrained

__all__ = ["add_arguments", "export", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run folder or checkpoint file written by mone train")
    parser.add_argument("out_dir", help="new (or empty) folder for config.json and model.safetensors")


def export(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Load the checkpoint of ``run_dir`` and write it to ``out_dir`` with :func:`mone.save_pretrained`.

    Raises:
        ValueError: when ``out_dir`` exists and is not an empty folder, or the checkpoint is not readable.
        FileNotFoundError: when the checkpoint does not exist.
    """
    from .train.checkpoint import load_model  # the trainer's reader; imported here, the CLI loads every subcommand

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"output folder {out_dir} exists and is not empty; refusing to overwrite it")
    model, _ = load_model(run_dir)
    return save_pretrained(model, out_dir)


def run(args: argparse.Namespace) -> int:
    out_dir = export(args.run_dir, args.out_dir)
    print(f"wrote {out_dir / CONFIG_NAME} and {out_dir / WEIGHTS_NAME}")
    return 0
