"""File output: folders checked before use, and atomic writes (a reader sees the old file or the new one, never
half of one)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_text",
    "check_output_dir",
    "check_output_file",
    "fsync_replace",
    "prepare_output_dir",
    "save_figure",
]


def prepare_output_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that files can be written there (PermissionError otherwise)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"output folder {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PermissionError(f"cannot create output folder {path}: {error.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {path} is not writable")
    return path


def _folder_problem(path: Path) -> tuple[type[OSError], str] | None:
    """Why the folder ``path`` can neither be used nor created (the error type and a reason), or None."""
    if path.exists():
        if not path.is_dir():
            return NotADirectoryError, f"{path} is a file, not a folder"
        if not os.access(path, os.W_OK | os.X_OK):
            return PermissionError, f"{path} is not writable"
        return None
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return NotADirectoryError, f"{ancestor} is a file, not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return PermissionError, f"{ancestor} is not writable"
    return None


def check_output_dir(path: str | os.PathLike) -> Path:
    """Check, without creating anything, that ``path`` is a writable folder or can be created as one.

    For commands that must not leave an empty folder behind when they fail later: check first, then create the
    folder (:func:`prepare_output_dir`) only when there is something to write. Raises NotADirectoryError or
    PermissionError naming ``path``.
    """
    path = Path(path)
    problem = _folder_problem(path)
    if problem is not None:
        error_type, reason = problem
        raise error_type(f"output folder {path} cannot be used: {reason}")
    return path


def check_output_file(path: str | os.PathLike) -> Path:
    """Check, without creating anything, that the file ``path`` can be written (its folder created if needed).

    Raises IsADirectoryError, NotADirectoryError or PermissionError naming ``path``.
    """
    path = Path(path)
    problem = (IsADirectoryError, "it is a folder") if path.is_dir() else _folder_problem(path.parent)
    if problem is not None:
        error_type, reason = problem
        raise error_type(f"cannot write {path}: {reason}")
    return path


def fsync_replace(tmp: Path, path: Path) -> None:
    """Flush ``tmp`` to disk, then move it over ``path`` in one step."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    An OSError (a full disk, say) leaves ``path`` as it was, removes the temporary file and is re-raised with a
    message that names ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        fsync_replace(tmp, path)
    except OSError as error:
        raise type(error)(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        tmp.unlink(missing_ok=True)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write a matplotlib figure atomically (temporary file + ``os.replace``).

    Library code builds its figures as ``matplotlib.figure.Figure`` objects, which pyplot never sees: nothing to
    close, and a notebook's backend is left alone. A figure made with pyplot is closed here, without importing
    pyplot when nobody else has.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close(fig)
    return path
