"""A training run's folder: one trainer at a time, no run overwritten, and what a crash leaves behind recovered.

A run folder holds ``checkpoint.safetensors``, ``metrics.jsonl`` (one JSON line per logged step) and
``config.json`` (the run's configuration, written when the run starts: how a run that stopped before its first
checkpoint is recognised, and the readable copy of the configuration in the checkpoint's header). The trainer
takes a folder only through :func:`claim_run_folder`, which holds an exclusive ``flock`` on ``.lock`` for the
whole run (the kernel releases it when the process ends, even by SIGKILL), refuses a folder that already holds a
run unless resuming, and removes the temporary files of a save that was killed half-way. A crash in the middle of
a metrics line leaves a torn last line: :func:`read_metrics` drops it with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._io import atomic_write_text, prepare_output_dir
from .checkpoint import CHECKPOINT_NAME

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so two trainers in one folder go unnoticed
    fcntl = None

__all__ = [
    "CONFIG_NAME",
    "LOCK_NAME",
    "METRICS_NAME",
    "append_metrics",
    "claim_run_folder",
    "read_config",
    "read_metrics",
    "truncate_metrics",
]

_logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"
LOCK_NAME = ".lock"
# What `atomic_write_text` and `save_checkpoint` write before their os.replace: `.<name>.tmp<pid>`.
_TEMPORARY = re.compile(r"\.(checkpoint\.safetensors|checkpoint\.json|config\.json|metrics\.jsonl)\.tmp\d+")


def _run_files(folder: Path) -> list[str]:
    """The files that make ``folder`` a run: a checkpoint or a non-empty metrics file."""
    return [name for name in (CHECKPOINT_NAME, METRICS_NAME)
            if (folder / name).is_file() and (folder / name).stat().st_size > 0]


@contextlib.contextmanager
def claim_run_folder(folder: str | os.PathLike, resume: bool) -> Iterator[Path]:
    """Create ``folder`` if needed and hold it for one training run until the ``with`` block ends.

    Raises BlockingIOError when another process holds the folder, and FileExistsError when it already holds a run
    (a checkpoint or metrics) and ``resume`` is false.
    """
    folder = prepare_output_dir(folder)
    with open(folder / LOCK_NAME, "a") as lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BlockingIOError(f"output folder {folder} is in use by another training process (it holds "
                                      f"{folder / LOCK_NAME}); wait for it to finish or use another folder") from None
        held = _run_files(folder)
        if held and not resume:
            raise FileExistsError(f"output folder {folder} already holds a run ({', '.join(held)}); continue it "
                                  f"with --resume or train into another folder")
        for path in folder.iterdir():
            if _TEMPORARY.fullmatch(path.name):
                _logger.warning("removing %s, left behind by an interrupted save", path)
                path.unlink(missing_ok=True)
        yield folder


def read_config(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The run's ``config.json`` as a dict, or None when there is none; ValueError when it is not a JSON object."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not hold a training configuration (a JSON object)")
    return config


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (``[]`` when it does not exist).

    A last line that is not a complete record (a crash in the middle of writing it) is dropped with a warning; any
    other line that is not a JSON object with an integer ``step`` is a ValueError naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        elif number == len(lines):
            _logger.warning("%s: dropping its torn last line %d (a run stopped while writing it)", path, number)
        else:
            raise ValueError(f"{path}, line {number}: not a metrics record (a JSON object with a step); fix or "
                             f"delete that line")
    return records


def truncate_metrics(path: str | os.PathLike, last_step: int) -> None:
    """Keep only the records of steps up to ``last_step`` (a resumed run rewrites the later ones)."""
    path = Path(path)
    if path.is_file():
        kept = [record for record in read_metrics(path) if record["step"] <= last_step]
        atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in kept))


def append_metrics(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record as a JSON line; an OSError names the file."""
    try:
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
    except OSError as error:
        raise type(error)(f"cannot append to {path}: {error.strerror or error}") from None
