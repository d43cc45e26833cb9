"""Timing helpers shared by `fcnseg bench`, the sliding-window comparison and benchmarks/."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["median_time", "peak_rss_gb"]


def median_time(fn: Callable[[], object], repeats: int, *, warmup: bool = False) -> float:
    """Median wall seconds of `repeats` calls (after one untimed call if `warmup`)."""
    if warmup:
        fn()  # allocations, kernel choice, per-size caches
    times = []
    for _ in range(max(repeats, 1)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def peak_rss_gb() -> float:
    """This process's peak resident memory (Linux VmHWM), in GB; NaN where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")
