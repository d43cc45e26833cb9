"""`--amp auto`: bf16 autocast only where it measures faster, on this machine and this model.

Mixed precision is not faster everywhere: on an Intel Xeon with AMX, FCN-32s' dense 64x64
upsampler made a bf16 digit-scenes step 5x slower than fp32 (issue 12), while on an AMD
Zen 4 bf16 was the faster one. So `auto` times a few forward + backward passes of the actual
model on a batch of the actual shape, fp32 and bf16 interleaved (fp32, bf16, bf16, fp32,
...), and takes bf16 only if its fastest pass is at least `MARGIN` (5%) below fp32's (the
fastest, not the median: on a shared machine other processes only ever add time, and a
spike in one of the 5 rounds must not decide). The weights, RNG and buffers are left as they
were; the choice and the times are printed.

The result is cached per (machine: CPU model name and threads, or GPU name; torch version;
model name, options and class count; input shape; memory format) in one JSON file:

    $FCNSEG_CACHE/amp.json      (FCNSEG_CACHE unset: ~/.cache/fcnseg/amp.json)

Each entry keeps every timed pass, the date and the load average; a choice measured while
the machine was busy says so when it is used. To measure again (an idle machine, new BIOS
settings, a changed kernel library), delete that file, or call `fcnseg.amp.reset_cache()`
(all entries) / `reset_cache(key)` (one).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import cachefile
from .cachefile import busy, load_average, read_entries, write_entries

__all__ = ["MARGIN", "AmpChoice", "auto_amp", "cache_key", "cache_path", "choose_amp",
           "decide", "machine_name", "measure", "reset_cache"]  # fmt: skip

MARGIN = 0.05  # bf16 must beat fp32 by this fraction: a tie is not worth the precision
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class AmpChoice:
    """The precision chosen (None: fp32) and the evidence for it."""

    amp: str | None
    times: dict[str, float]  # fastest seconds per forward + backward, by "fp32" / "bf16"
    reason: str
    cached: bool = False
    samples: dict[str, list[float]] = field(default_factory=dict)
    load: float | None = None  # the 1-minute load average when it was measured

    def describe(self) -> str:
        times = ", ".join(f"{k} {v:.3f}" for k, v in self.times.items())
        where = f"cached in {cache_path()}" if self.cached else f"saved to {cache_path()}"
        noisy = ""
        if busy(self.load):
            noisy = (f"; measured while the machine was busy (load {self.load:.1f} on "
                    f"{os.cpu_count()} cores): the times are noisy")  # fmt: skip
        return (f"amp auto: {self.amp or 'fp32'} ({self.reason}; s per forward+backward: "
                f"{times}{noisy}; {where}, delete it to measure again)")  # fmt: skip


# ----------------------------------------------------------------------- the decision


def decide(times: dict[str, list[float]], margin: float = MARGIN) -> tuple[str | None, str]:
    """(choice, reason) from timings {"fp32": [...], "bf16": [...]} (seconds per step).

    The fastest pass of each counts (other processes only add time). The lower-precision
    candidate with the fastest pass wins if it is at least `margin` faster than fp32's;
    otherwise fp32 (None).
    """
    if not times.get("fp32"):
        raise ValueError(f"decide() needs fp32 timings to compare with, got {sorted(times)}")
    fp32 = min(times["fp32"])
    low = {k: min(v) for k, v in times.items() if k != "fp32" and v}
    if not low:
        return None, "no lower precision to compare"
    name = min(low, key=low.get)
    ratio = low[name] / fp32
    if ratio <= 1 - margin:
        return name, f"{name} {1 / ratio:.2f}x faster than fp32"
    if ratio < 1:
        need = 1 / (1 - margin)
        return None, f"{name} only {1 / ratio:.2f}x faster than fp32 (needs {need:.2f}x)"
    return None, f"{name} {ratio:.2f}x slower than fp32"


def measure(
    step: Callable[[str], None],
    names: tuple[str, ...] = ("fp32", "bf16"),
    *,
    rounds: int = 3,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds of `step(name)` for each name: `warmup` untimed calls each, then `rounds`
    interleaved rounds, every other one in reverse order so drift hits all names alike."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for name in names:
            step(name)
    sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t = clock()
            step(name)
            sync()
            times[name].append(clock() - t)
    return times


# ----------------------------------------------------------------------- the cache


def cache_path() -> Path:
    """The cache file: $FCNSEG_CACHE/amp.json, else ~/.cache/fcnseg/amp.json."""
    return cachefile.cache_path("amp.json")


def machine_name(device: torch.device | str = "cpu") -> str:
    """The GPU's name, or the CPU's model name and the threads torch uses."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    return f"{name}, {torch.get_num_threads()} threads"


def cache_key(
    model: str, options: dict, num_classes: int, input_shape, device, channels_last: bool
) -> str:
    """What a measurement depends on, as one string (a key of the cache file)."""
    parts = {"machine": machine_name(device), "torch": torch.__version__, "model": model,
             "options": options, "classes": num_classes, "input": list(input_shape),
             "channels_last": channels_last, "device": torch.device(device).type}  # fmt: skip
    return json.dumps(parts, sort_keys=True, default=str)


def _load() -> dict:
    return read_entries(cache_path(), "amp cache", stacklevel=3)


def _save(entries: dict) -> None:
    write_entries(cache_path(), entries, "fcnseg --amp auto measurements; delete this file to "
                  "measure again", "amp cache", stacklevel=3)  # fmt: skip


def reset_cache(key: str | None = None) -> bool:
    """Forget every measurement (key None) or one; True if something was removed."""
    path = cache_path()
    if key is None:
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed
    entries = _load()
    if entries.pop(key, None) is None:
        return False
    _save(entries)
    return True


# ----------------------------------------------------------------------- on a model


def choose_amp(
    key: str, step: Callable[[str], None], names: tuple[str, ...] = ("fp32", "bf16"), **kw
) -> AmpChoice:
    """The cached choice for `key`, or measure `step` (see `measure`), decide and cache it."""
    entry = _load().get(key)
    if entry is not None and entry.get("amp") in (None, *names):
        return AmpChoice(entry["amp"], entry["times"], entry["reason"], cached=True,
                         samples=entry.get("samples", {}), load=entry.get("load"))  # fmt: skip
    samples = measure(step, names, **kw)
    amp, reason = decide(samples)
    times = {k: min(v) for k, v in samples.items()}
    entries = _load()
    load = load_average()
    entries[key] = {"amp": amp, "times": times, "reason": reason, "samples": samples,
                    "measured": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load": load}  # fmt: skip
    _save(entries)
    return AmpChoice(amp, times, reason, samples=samples, load=load)


def auto_amp(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    name: str,
    options: dict | None = None,
    rounds: int = 5,
    log: Callable[[str], None] | None = print,
) -> AmpChoice:
    """Choose fp32 or bf16 (fp16 on a GPU without bf16) for training `model` on batches like
    `x`, `target`: forward, `loss_fn`, backward, timed; see the module docstring.

    Leaves the weights, buffers (e.g. BatchNorm statistics), gradients (cleared) and the
    RNG (dropout) as they were.
    """
    device = x.device
    low = "fp16" if device.type == "cuda" and not torch.cuda.is_bf16_supported() else "bf16"
    num_classes = getattr(model, "num_classes", 0)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1
    key = cache_key(name, options or {}, num_classes, tuple(x.shape), device, channels_last)
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    was_training = model.training
    model.train()  # time what training runs (dropout on)

    def step(which: str) -> None:
        dtype = _DTYPES.get(which)
        with torch.autocast(device.type, dtype, enabled=dtype is not None):
            loss = loss_fn(model(x), target)
        loss.backward()

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            choice = choose_amp(key, step, ("fp32", low), rounds=rounds, sync=sync)
        finally:
            with torch.no_grad():
                for k, v in model.named_buffers():
                    v.copy_(buffers[k])
            for p in model.parameters():
                p.grad = None
            model.train(was_training)
    if log is not None:
        log(choice.describe())
    return choice
