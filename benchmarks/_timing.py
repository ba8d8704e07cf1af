"""Side-by-side timing: every method runs once per round, in turn, so drift in machine load hits them all alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


def time_side_by_side(
    methods: Mapping[str, Callable[[], object]], rounds: int = 3, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per call of each method, measured in interleaved rounds after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in methods.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}


def print_table(
    title: str, times: dict[str, float], reference: str, notes: dict[str, str] | None = None
) -> None:
    ref = times[reference]
    print(f"\n{title}")
    print(f"{'method':58s} {'seconds':>9s} {'ratio':>7s}")
    for name, t in times.items():
        note = f"  {notes[name]}" if notes and name in notes else ""
        print(f"{name:58s} {t:9.3f} {t / ref:6.2f}x{note}")
