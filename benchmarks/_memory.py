"""Peak resident memory of one call, for the growth curves: Linux's high-water mark (``VmHWM``) is reset before the
call (``/proc/self/clear_refs``) and read after it; the figure is the peak minus the resident memory before.

Before each call ``malloc_trim`` hands the heap's free pages back to the system, so an earlier call's freed memory
neither counts in the baseline nor hides this call's peak. The allocator is otherwise left as every run has it
(glibc's adaptive mmap threshold): forcing every block over 128 KiB to be mapped and unmapped would make each large
temporary page-fault afresh, which slowed the batched probe's timed fit by 20-45% at 4,000 x 4,096.
"""

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
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def can_measure() -> bool:
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
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
