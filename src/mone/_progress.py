"""Progress for ``mone train | eval | bench``: a tqdm bar on a terminal, plain periodic lines anywhere else.

A tqdm bar redraws itself with carriage returns, several times a second; sent to a file (``mone eval ... > log
2>&1``, a batch job, CI) those frames become hundreds of lines of noise. :func:`progress` looks at the stream first:
a terminal (or a notebook, through ``tqdm.auto``) gets the bar, anything else gets one plain line per tenth of the
work, at most ``every_s`` seconds apart, and a last line at the end.

tqdm is optional (it comes with the ``train`` and ``demo`` extras): without it a terminal gets the plain lines too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

try:
    from tqdm.std import tqdm as std_tqdm
except ImportError:  # a light install: plain lines everywhere
    std_tqdm = None

__all__ = ["PlainProgress", "progress"]


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


class PlainProgress:
    """The part of tqdm's interface the commands use (``update``, ``set_postfix``, ``close``, iteration, ``with``),
    written as whole lines: ``desc: n/total (p%), elapsed mm:ss, ETA mm:ss, key=value ...``.

    A line is written when another tenth of ``total`` is done or ``every_s`` seconds have passed since the last one
    (only the latter when ``total`` is unknown), and at :meth:`close` unless the last line already said it all.
    """

    def __init__(
        self, iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = "", initial: int = 0,
        stream: IO[str] | None = None, every_s: float = 60.0, disable: bool = False,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc = iterable, total, desc
        self.n = self.initial = initial
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.postfix = ""
        self.start = self.last_time = time.monotonic()
        self.last_n = initial
        self.closed = False
        self.disable = disable  # silent: counts, writes nothing (tqdm's ``disable``)

    def _tenths(self, n: int) -> int:
        return 10 * n // self.total if self.total else 0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.disable:
            return
        if self._tenths(self.n) > self._tenths(self.last_n) or now - self.last_time >= self.every_s:
            self._write(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def _write(self, now: float) -> None:
        elapsed = now - self.start
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total} ({100 * self.n // self.total}%)" if self.total else "")]
        parts.append(f"elapsed {_duration(elapsed)}")
        done = self.n - self.initial
        if self.total and 0 < done and self.n < self.total:
            parts.append(f"ETA {_duration(elapsed / done * (self.total - self.n))}")
        if self.postfix:
            parts.append(self.postfix)
        self.stream.write(", ".join(parts) + "\n")
        self.stream.flush()
        self.last_time, self.last_n = now, self.n

    def close(self) -> None:
        if not self.closed and self.n != self.last_n and not self.disable:
            self._write(time.monotonic())
        self.closed = True

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("PlainProgress was not given an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    enabled: bool = True,
    initial: int = 0,
    leave: bool = True,
    stream: IO[str] | None = None,
    every_s: float = 60.0,
) -> Any:
    """A progress display over ``iterable`` (or ``total`` steps, advanced with ``update``).

    Args:
        iterable: wrapped and iterated, one update per item; None to call ``update`` yourself.
        total: number of steps (default ``len(iterable)`` where it has one).
        desc: what is progressing, the line's prefix.
        enabled: False returns a disabled tqdm (no output at all; without tqdm a silent :class:`PlainProgress`).
        initial: steps already done (a resumed run).
        leave: keep the terminal bar once closed.
        stream: where to write (default: ``sys.stderr`` at the time of the call).
        every_s: longest gap between two plain lines.

    Returns:
        a tqdm bar when ``stream`` is a terminal, tqdm's notebook widget (``tqdm.auto``) in a Jupyter kernel when no
        ``stream`` is given, else (and always without tqdm) :class:`PlainProgress`.
    """
    if not enabled:
        if std_tqdm is None:
            return PlainProgress(iterable, total=total, desc=desc, initial=initial, stream=stream, disable=True)
        return std_tqdm(iterable, total=total, disable=True)
    if std_tqdm is None:
        return PlainProgress(iterable, total=total, desc=desc, initial=initial, stream=stream, every_s=every_s)
    default_stream = stream is None
    stream = sys.stderr if stream is None else stream
    if default_stream and "ipykernel" in sys.modules:  # a notebook (its stderr is no terminal): tqdm's widget
        from tqdm.auto import tqdm as auto_tqdm

        return auto_tqdm(iterable, total=total, desc=desc, initial=initial, leave=leave)
    if _is_terminal(stream):
        return std_tqdm(iterable, total=total, desc=desc, initial=initial, leave=leave, file=stream,
                        dynamic_ncols=True)
    return PlainProgress(iterable, total=total, desc=desc, initial=initial, stream=stream, every_s=every_s)
