"""Keep freed memory for the next step instead of returning it to the system (glibc).

PyTorch's CPU tensors come from malloc. glibc serves every block above its mmap threshold
(at most 32 MB, adjusted at run time) with a fresh mmap and unmaps it on free, so each
training step's large tensors (fc6's 411 MB weight gradient, the 65-125 MB activations of
conv1 at 500x500) arrive as untouched pages that the kernel faults in and zeroes one 4 KB page
at a time. Measured (AMD EPYC, 2 cores, FCN-8s 500x500, batch 1, benchmarks/train_step.py):
~0.7-1.0 million page faults a step, 0.4-0.5 s of a 2.1-3.3 s step; with the threshold raised
and trimming off, none after the first step (RESULTS.md, "Freed memory kept").

`keep_freed_memory()` raises the threshold to 1 GiB and the trim threshold to 2 GiB, so freed
blocks stay in the process's heap and the next step reuses them: the process keeps the memory
its largest step needed (its peak, as it would with jemalloc or tcmalloc, which PyTorch's CPU
tuning guide recommends). fcnseg's command line calls it once at start, and `fcnseg.train`
too. FCNSEG_MALLOC=system leaves glibc's defaults. Elsewhere (macOS, Windows, musl) it does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_MMAP_THRESHOLDS = (1 << 30, 32 << 20)  # 1 GiB; else glibc's own ceiling (older glibc caps it)
_TRIM_THRESHOLD = (1 << 31) - 1  # an int: 2 GiB
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed blocks for reuse (once per process); whether it took.

    False where FCNSEG_MALLOC=system, where the C library is not glibc, or where mallopt
    refuses the settings."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("FCNSEG_MALLOC", "").lower() == "system" or not sys.platform.startswith(
        "linux"
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl has a mallopt that ignores these)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not any(mallopt(_M_MMAP_THRESHOLD, t) == 1 for t in _MMAP_THRESHOLDS):
        return False
    _done = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    return _done
