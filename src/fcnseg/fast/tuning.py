"""FastFCN's kernel choices, measured on this machine at first use and cached.

Which kernel is fastest for a layer (Winograd F(4x4, 3x3) or F(2x2, 3x3), oneDNN's direct
conv into a kept buffer, torch's conv, im2col + one GEMM) depends on the CPU (AVX-512, AMX,
cache sizes), the thread count, the dtype and the layer's shapes; a threshold tuned on one
CPU is a cliff on another. So FastFCN times the allowed kernels of each layer on this machine
the first time it meets that layer shape (a few runs each, interleaved; about as long as six
forward passes of the model at that size, once), and keeps the fastest. Other programs on the
machine only ever make a run slower, so each kernel's time is its fastest run, and a kernel
later in FastFCN's order of preference (Winograd F(4x4), F(2x2), GEMM, oneDNN in place,
torch's conv) must be at least MARGIN faster than an earlier one to be chosen: noise alone
does not flip a choice. Every candidate computes the same function (fcnseg.kernels: exact up
to float rounding), so a choice changes speed, never results beyond rounding.

The measurements are cached in one JSON file:

    $FCNSEG_CACHE/kernels.json     (FCNSEG_CACHE unset: ~/.cache/fcnseg/kernels.json)

keyed by the machine (CPU model name and torch's thread count), the torch version and the
layer (kind, dtype, batch, channels, kernel, stride, memory format, the candidates, and the
size of its output in steps of sqrt(2) in area: photos of similar sizes share one measurement,
so a folder of VOC images of a dozen sizes is not measured a dozen times). Each entry holds
the choice, each candidate's fastest time in seconds and the load average then; a choice
measured on a busy machine (load above the core count) is measured again the first time the
machine is quiet, since other programs slow the kernels unevenly. To measure again: delete the file,
call `fcnseg.fast.tuning.reset_cache()`, or run `fcnseg bench --retune`.
An unreadable file is ignored with a warning and rewritten (atomically: a temporary file
renamed over it) with the new measurements; an unwritable one only costs measuring again in
the next process.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from .. import cachefile
from ..amp import machine_name
from ..cachefile import busy, load_average, read_entries, write_entries
from .plan import WINOGRAD, Geom, Step, pair, winograd_work

__all__ = ["MARGIN", "cache_path", "choose", "layer_key", "measure", "pick", "reset_cache",
           "step_choice"]  # fmt: skip

ROUNDS = 2  # timed runs per candidate (after one warm-up each), interleaved
MARGIN = 0.05  # a later candidate must be this much faster than an earlier one
_memo: dict[str, dict] = {}  # per cache path: its entries, read once per process


def cache_path() -> Path:
    """The cache file: $FCNSEG_CACHE/kernels.json, else ~/.cache/fcnseg/kernels.json."""
    return cachefile.cache_path("kernels.json")


def layer_key(**layer) -> str:
    """What a measurement depends on, as one string (a key of the cache file)."""
    parts = {"machine": machine_name("cpu"), "torch": torch.__version__, **layer}
    return json.dumps(parts, sort_keys=True, default=str)


def _read(path: Path) -> dict:
    entries = read_entries(path, "FastFCN kernel cache", stacklevel=4)
    return {k: v for k, v in entries.items() if isinstance(v, dict) and "choice" in v}


def _entries() -> dict:
    path = cache_path()
    key = str(path)
    if key not in _memo:
        _memo[key] = _read(path)
    return _memo[key]


def _save() -> None:
    """Merge this process's entries into the file (keeping those another process wrote
    meanwhile), written to a temporary file and renamed over the old one."""
    path = cache_path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the load before already warned once
        entries = {**_read(path), **_entries()}
    write_entries(path, entries, "FastFCN kernel measurements (fcnseg.fast.tuning); delete "
                  "this file or run `fcnseg bench --retune` to measure again",
                  "FastFCN kernel cache", stacklevel=4)  # fmt: skip


def reset_cache() -> bool:
    """Forget every measurement (this process's and the file's); True if the file existed."""
    _memo.clear()
    path = cache_path()
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


def measure(trials: dict[str, Callable[[], object]], rounds: int = ROUNDS) -> dict[str, float]:
    """The fastest of `rounds` runs of each trial, after one warm-up each; runs interleaved
    (the order reversed every other round, so drift on a shared machine hits every one)."""
    names = list(trials)
    for name in names:
        trials[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            trials[name]()
            times[name].append(time.perf_counter() - t)
    return {name: min(ts) for name, ts in times.items()}


def pick(seconds: dict[str, float], candidates: list[str], margin: float = MARGIN) -> str:
    """The first candidate (in order of preference) within `margin` of the fastest."""
    best = min(seconds.values())
    return next(c for c in candidates if seconds[c] <= best * (1 + margin))


def choose(
    key: str,
    candidates: list[str],
    make_trial: Callable[[str], Callable[[], object]],
    rounds: int = ROUNDS,
) -> str:
    """The cached choice for `key` if it is one of `candidates`, else time every candidate
    (`make_trial(name)` returns a function that runs it once), `pick` one and cache it."""
    if len(candidates) == 1:
        return candidates[0]
    entries = _entries()
    entry = entries.get(key)
    load = load_average()
    # measured while other programs held the cores (they slow the kernels unevenly: under load
    # the tuner once took oneDNN's direct conv for every layer), and quiet now: measure again
    stale = entry is not None and busy(entry.get("load")) and not busy(load)
    if entry is not None and entry["choice"] in candidates and not stale:
        return entry["choice"]
    measured = measure({name: make_trial(name) for name in candidates}, rounds)
    # picked on the times as written (4 significant digits), so every cache entry's choice
    # follows from its own seconds: rounding to microseconds after picking could not promise that
    seconds = {k: float(f"{v:.4g}") for k, v in measured.items()}
    choice = pick(seconds, candidates)
    entry = {"choice": choice, "seconds": seconds,
             "measured": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
             "load": load}  # fmt: skip
    entries[key] = entry
    _save()
    return choice


# ---------------------------------------------------------------- FastFCN's steps


def step_choice(fast, s: Step, g: Geom, n: int, c: int, dt: torch.dtype, found: list[str]) -> str:
    """The kernel of `found` that runs FastFCN `fast`'s step `s` fastest here (cached)."""
    (a0, a1), (b0, b1) = g.out_core
    key = layer_key(
        kind=s.kind, dtype=str(dt), batch=n, in_channels=c, weight=list(s.layer.weight.shape),
        stride=pair(s.layer.stride), relu=s.relu, direct=g.direct,
        area_step=round(2 * math.log2(max(1, (a1 - a0) * (b1 - b0)))),
        channels_last=fast.channels_last, candidates=found,
    )  # fmt: skip
    return choose(key, found, lambda kind: trial(fast, s, g, n, c, dt, kind))


def trial(fast, s: Step, g: Geom, n: int, c: int, dt: torch.dtype, kind: str):
    """A function that runs the step once by `kind`, on random input of its real shape."""
    (a0, a1), (b0, b1) = g.out_core
    (h0, h1), (w0, w1) = g.window
    size = g.in_len if g.direct else (h1 - h0, w1 - w0)
    out_hw = (a1 - a0, b1 - b0)
    if kind in WINOGRAD:
        size, work = winograd_work(kind, n, out_hw, c, s.layer.out_channels)
    fmt = torch.channels_last if fast.channels_last else torch.contiguous_format
    x = torch.randn(n, c, *size).to(dt).contiguous(memory_format=fmt)
    if kind in WINOGRAD:
        arenas = {k: torch.empty(work[k], dtype=dt) for k in ("a", "b", "y")}
        return lambda: fast._winograd(s, kind, x, work, arenas, out_hw)
    out = None
    if kind == "inplace":
        out = torch.empty(n, s.layer.out_channels, a1 - a0, b1 - b0, dtype=dt)
        out = out.contiguous(memory_format=torch.channels_last)
    pad = None if g.direct else (0, 0)
    return lambda: fast._step(s, x, padding=pad, out=out, gemm=kind == "gemm")
