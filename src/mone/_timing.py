"""Wall-clock timing shared by ``mone bench`` and ``mone calibrate``: round-robin medians and the environment that
every measurement must be read with.

Calls are timed round-robin (one call of each entry per round), so a slow drift of a shared machine hits every entry
alike; the device is synchronised around each call (GPUs run asynchronously).
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from collections.abc import Callable

import torch

from ._checks import check_int
from ._progress import progress as progress_display

__all__ = ["DTYPES", "MALLOC_SETTINGS", "check_timing_settings", "environment", "synchronizer", "time_round_robin"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def check_timing_settings(batch_size: int, repeats: int, warmup: int, threads: int | None = None) -> None:
    """ValueError unless the counts of a timing run are in range: ``batch_size`` and ``repeats`` >= 1, ``warmup``
    >= 0, ``threads`` None or >= 1 (``mone bench`` and ``mone calibrate`` take the same four)."""
    check_int("batch_size", batch_size, 1)
    check_int("repeats", repeats, 1)
    check_int("warmup", warmup, 0)
    if threads is not None:
        check_int("threads", threads, 1)


def environment(device: str = "cpu") -> dict:
    """Versions, hardware, thread count and allocator settings that every result must be read with."""
    if torch.device(device).type == "cuda":
        hardware = torch.cuda.get_device_name(torch.device(device))
    else:
        hardware = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
            hardware = names[0] if names else hardware
        except OSError:
            pass
    try:
        import timm

        timm_version = timm.__version__
    except ImportError:
        timm_version = None
    return {
        "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm_version,
        "hardware": hardware,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "malloc": {name: os.environ.get(name, "unset") for name in MALLOC_SETTINGS},
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
    }


def synchronizer(device: str) -> Callable[[], None]:
    """Waits for the device's queued work (GPUs run asynchronously); nothing to wait for on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def time_round_robin(
    calls: dict[str, Callable[[], object]], repeats: int, warmup: int, synchronize: Callable[[], None],
    desc: str | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each entry, timed one call each per round, ``repeats`` rounds after ``warmup``.

    With ``desc``, progress is shown per round (outside the timed calls).
    """
    rounds = progress_display(total=warmup + repeats, desc=desc or "", enabled=desc is not None, leave=False)
    for _ in range(warmup):
        for call in calls.values():
            call()
        rounds.update(1)
    synchronize()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            synchronize()
            start = time.perf_counter()
            call()
            synchronize()
            times[name].append(time.perf_counter() - start)
        rounds.update(1)
    rounds.close()
    return times
