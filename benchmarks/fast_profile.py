"""Where FastFCN's time goes, quiet and beside a busy core: per layer and per phase, with the
number of parallel regions one forward opens and how long each lasts (issue 23).

    python benchmarks/fast_profile.py [--size 500] [--calls 3]

FCN-8s VGG16 reference layout (benchmarks/inference.py's weights and photo), fp32, batch 1,
three conditions in one run: quiet on torch's threads, beside one single-thread spin loop on the
same fixed threads, and beside it with the threads chosen per call (FastFCN's default,
fcnseg.threads.StepThreads, after its trial calls). Each is
profiled by torch.profiler over `--calls` forwards after two warm-up calls; FastFCN labels each
step ("fast/conv3_2") and the head ("fast/head"). Ops are sorted into phases by name; a compute
op on at least 32768 elements (at::parallel_for's grain) or any oneDNN primitive opens one
OpenMP parallel region, so "regions" counts those ops (views and bookkeeping, "other", open
none), and "ms / region" is the phase's time over them.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import defaultdict

import torch
from inference import make_image, make_model
from torch.profiler import ProfilerActivity, profile

import fcnseg
from fcnseg.amp import machine_name
from fcnseg.threads import StepThreads, busy_cores

GRAIN = 32768  # at::internal::GRAIN_SIZE
PHASES = (  # (phase, op-name fragments), first match wins
    ("GEMM: Winograd's batched products, fc6/fc7", ("bmm", "aten::mm", "addmm", "linear")),
    ("direct conv (oneDNN, ReLU fused)", ("convolution",)),
    ("Winograd transforms, bias, ReLU", ("aten::add", "aten::mul", "aten::sub", "relu")),
    (
        "rim fill, core paste, copies",
        ("copy_", "fill_", "index_select", "zero_", "clone", "cat", "stack"),
    ),
    ("max pool", ("max_pool",)),
)


def _phase(name: str, step: str) -> str:
    if step == "head":
        return "head: score layers, skips, upsampling"
    return next((p for p, frags in PHASES if any(f in name for f in frags)), "other")


def _numel(shapes) -> int:
    best = 0
    for s in shapes or ():
        if isinstance(s, list) and s and all(isinstance(d, int) for d in s):
            n = 1
            for d in s:
                n *= d
            best = max(best, n)
    return best


def profile_calls(f, calls: int) -> tuple[dict, dict, float]:
    """Per step and per phase: [ms, ops, regions] summed over `calls`; and wall s per call."""
    for _ in range(StepThreads.SETTLE + 1):  # warm-up, and StepThreads' trial calls
        f()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t = time.perf_counter()
        for _ in range(calls):
            f()
        wall = (time.perf_counter() - t) / calls
    events = prof.events()
    ranges = [e for e in events if e.name.startswith("fast/")]
    steps: dict[str, list] = defaultdict(lambda: [0.0, 0, 0])
    phases: dict[str, list] = defaultdict(lambda: [0.0, 0, 0])
    for r in ranges:
        steps[r.name[5:]][0] += r.cpu_time_total / 1e3
    # the ops a step calls itself (their time includes what they call)
    for e in events:
        owner = e.cpu_parent
        if e.name.startswith("fast/") or owner is None or not owner.name.startswith("fast/"):
            continue
        step = owner.name[5:]
        kind = _phase(e.name, step)  # "other": views and bookkeeping, no parallel work
        region = kind != "other" and (
            "mkldnn" in e.name or "convolution" in e.name or _numel(e.input_shapes) >= GRAIN
        )
        phase = phases[kind]
        phase[0] += e.cpu_time_total / 1e3
        for row in (steps[step], phase):
            row[1] += 1
            row[2] += region
    return steps, phases, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=500)
    p.add_argument("--calls", type=int, default=3)
    args = p.parse_args()
    model, x = make_model(), make_image(args.size)
    threads = torch.get_num_threads()
    fixed, fitted = fcnseg.FastFCN(model, adapt_threads=False), fcnseg.FastFCN(model)
    conditions = {
        f"quiet, {threads} threads": (0, fixed),
        f"1 busy, {threads} threads fixed": (1, fixed),
        "1 busy, threads chosen (default)": (1, fitted),
    }
    found = {}
    with torch.no_grad():
        for label, (busy, f) in conditions.items():
            with busy_cores(busy) if busy else contextlib.nullcontext():
                time.sleep(0.3 if busy else 0)
                found[label] = profile_calls(lambda f=f: f(x), args.calls)
    n = args.calls
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"FastFCN fp32, FCN-8s VGG16 reference layout, {args.size}x{args.size}; "
          f"{machine_name()}, torch {torch.__version__}, {now}; "
          f"per call, mean of {n} profiled calls (the profiler adds ~5%)\n")  # fmt: skip
    labels = list(found)
    print("wall s per call: " + ", ".join(f"{k} {found[k][2]:.3f}" for k in labels) + "\n")
    for title, idx in (("step", 0), ("phase", 1)):
        rows = found[labels[0]][idx]
        head = " | ".join(f"{k} ms" for k in labels)
        print(f"| {title} | {head} | slowdown, fixed threads | regions | ms / region, quiet "
              f"| ms / region, busy fixed |")  # fmt: skip
        print("|---|" + "---:|" * (len(labels) + 4))
        order = sorted(rows, key=lambda k: -rows[k][0]) if idx else list(rows)
        for k in order:
            ms = [found[lb][idx].get(k, [0.0, 0, 0])[0] / n for lb in labels]
            regions = rows[k][2] / n
            per = [m / regions if regions else float("nan") for m in ms[:2]]
            slow = ms[1] / ms[0] if ms[0] else float("nan")
            cells = " | ".join(f"{m:.1f}" for m in ms)
            print(f"| {k} | {cells} | {slow:.2f}x | {regions:.0f} | {per[0]:.2f} | {per[1]:.2f} |")
        print()


if __name__ == "__main__":
    main()
