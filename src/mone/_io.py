"""Atomic file output: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_text", "fsync_replace", "save_figure"]


def fsync_replace(tmp: Path, path: Path) -> None:
    """Flush ``tmp`` to disk, then move it over ``path`` in one step."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        fsync_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write a matplotlib figure atomically (temporary file + ``os.replace``) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
