"""Peak resident memory of one call, for the growth curves: Linux's high-water mark (``VmHWM``) is reset before the
call (``/proc/self/clear_refs``) and read after it; the figure is the peak minus the resident memory before."""

from __future__ import annotations

import ctypes
import functools
import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@functools.cache
def _libc() -> Any:
    """glibc with a fixed mmap threshold: by default it raises the threshold after freeing large blocks, which
    then come from a heap it never returns, and a later call's peak would hide in memory already resident."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 17)  # M_MMAP_THRESHOLD: blocks over 128 KiB are mapped and unmapped on free
        libc.mallopt(-1, 1 << 17)  # M_TRIM_THRESHOLD
        return libc
    except (OSError, AttributeError):
        return None


def can_measure() -> bool:
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def measure(fn: Callable[[], Any]) -> tuple[float, float | None, Any]:
    """``(seconds, peak MiB above the memory resident before the call or None where it cannot be read, result)``."""
    gc.collect()
    ok = can_measure()
    before = _status_kib("VmRSS") if ok else None
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM") if ok else None
    mib = None if before is None or peak is None else max(0.0, (peak - before) / 1024)
    return seconds, mib, out


def measure_cpu(fn: Callable[[], Any]) -> tuple[float, float, float | None, Any]:
    """``(CPU seconds of this process, wall-clock seconds, peak MiB as in measure, result)``."""
    c0 = time.process_time()
    wall, mib, out = measure(fn)
    return time.process_time() - c0, wall, mib, out


def slope(sizes: list[float], values: list[float]) -> float:
    """Least-squares slope of ``log(value)`` on ``log(size)``: the growth exponent of a curve."""
    import numpy as np

    x, y = np.log(np.asarray(sizes, float)), np.log(np.maximum(np.asarray(values, float), 1e-12))
    if len(x) < 2 or np.ptp(x) == 0:
        return float("nan")
    return float(np.polyfit(x, y, 1)[0])
