"""File output: folders checked before use, and atomic writes (a reader sees the old file or the new one, never
half of one)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_text",
    "check_new_output_dir",
    "check_output_dir",
    "check_output_file",
    "fsync_replace",
    "output_folder",
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


def check_new_output_dir(path: str | os.PathLike) -> Path:
    """:func:`check_output_dir`, and refuse a folder that already holds anything (never overwrite another output).

    Raises NotADirectoryError or PermissionError (see :func:`check_output_dir`), or ValueError for a folder that
    exists and is not empty.
    """
    path = check_output_dir(path)
    if path.is_dir() and any(path.iterdir()):
        raise ValueError(f"output folder {path} exists and is not empty; refusing to overwrite it")
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


@contextlib.contextmanager
def output_folder(path: str | os.PathLike) -> Iterator[Callable[[str], Path]]:
    """Write a command's files into the folder ``path``, all of them or none.

    Yields ``stage(name)``, which returns a temporary path in the folder to write the file ``name`` to. When the
    block ends normally the staged files are moved into place in the order they were staged (renames, which need no
    free space): stage the file that marks the output complete last. When the block raises, the temporary files are
    removed, files of an earlier run are left as they were, and the folder is removed if this call created it (so a
    failed command leaves no empty folder). An OSError (a full disk) is re-raised naming the file being written.
    """
    path = Path(path)
    created = not path.exists()
    prepare_output_dir(path)
    staged: list[tuple[Path, Path]] = []  # (temporary, final)

    def stage(name: str) -> Path:
        final = path / name
        staged.append((final.with_name(f".{final.stem}.tmp{os.getpid()}{final.suffix}"), final))
        return staged[-1][0]

    done = False
    try:
        yield stage
        for tmp, final in staged:
            fsync_replace(tmp, final)
        done = True
    except OSError as error:
        message = str(error)
        for tmp, final in staged:  # name the files as the user knows them, not their temporaries
            message = message.replace(str(tmp), str(final))
        target = str(staged[-1][1] if staged else path)
        if target not in message:
            message = f"cannot write {target}: {error.strerror or error}"
        raise type(error)(message) from None
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        if created and not done:
            with contextlib.suppress(OSError):
                path.rmdir()  # only when empty: nothing of anyone else's is removed


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
    except OSError as error:  # e.g. a full disk: name the file
        raise type(error)(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        tmp.unlink(missing_ok=True)
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close(fig)
    return path
