"""FCN-8s forward quiet and beside N busy cores, every path in one table, one process.

    python benchmarks/busy.py                 # 500x500, median of 5, quiet and 1 busy core
    python benchmarks/busy.py --busy 0 1 --size 500 --repeats 5

Rows (benchmarks/inference.py's weights, photo and peers, so both tables read alike): (a) the
plain eager FCN-8s a script writes (nn.Sequential VGG16, full ConvTranspose2d upsamplers: the
issue's "reference code"), fcnseg's eager model, FastFCN fp32 with its threads chosen per call
(the default: fcnseg.threads.StepThreads, given its trial calls in each condition first), on
fixed threads and pinned to 1, FastFCN bf16, and the peers on (a) exported to ONNX: ONNX Runtime
fp32, OpenVINO f32 and OpenVINO at its default precision (bf16 where the CPU has it). Every path
is timed in both conditions in the same run, so the machine's drift lands on all of them alike;
the last two columns compare each path's output with (a)'s fp32 output (max relative error,
share of pixels with the same argmax), measured once, quiet. The "busy" processes are
single-thread spin loops (fcnseg.threads.busy_cores): a data-loading worker, a browser tab or a
second job.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch
from inference import PlainFCN8s, make_image, make_model, peers

import fcnseg
from fcnseg.amp import machine_name
from fcnseg.threads import StepThreads, busy_cores, usable_cpus
from fcnseg.timing import median_time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--busy", type=int, nargs="+", default=[0, 1])
    args = p.parse_args()
    model = make_model()
    plain = PlainFCN8s().eval()
    plain.load_from_fcnseg(model)
    x = make_image(args.size)
    threads = torch.get_num_threads()
    fitted = fcnseg.FastFCN(model)
    fixed = fcnseg.FastFCN(model, adapt_threads=False)
    bf16 = fcnseg.FastFCN(model, bfloat16=True)

    def pinned():
        torch.set_num_threads(1)
        try:
            return fixed(x)
        finally:
            torch.set_num_threads(threads)

    base = "(a) plain eager fp32 (reference code)"
    paths = {base: lambda: plain(x),
             "fcnseg eager fp32": lambda: model(x),
             "FastFCN fp32, threads chosen per call (default)": lambda: fitted(x),
             f"FastFCN fp32, {threads} threads fixed": lambda: fixed(x),
             "FastFCN fp32, 1 thread": pinned,
             "FastFCN bf16, threads chosen per call (default)": lambda: bf16(x)}  # fmt: skip
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        for name, f in peers(plain, x, threads, folder).items():
            if not isinstance(f, str):  # a string says why the peer is missing
                paths[name] = f
        for f in paths.values():  # first calls: FastFCN's background and kernel choices
            f()
            f()
        ref = paths[base]()
        outs = {name: f() for name, f in paths.items()}
        times = {n: {} for n in paths}
        for busy in args.busy:
            with busy_cores(busy):
                time.sleep(0.5)
                for _ in range(StepThreads.SETTLE):  # StepThreads' trial calls, untimed
                    fitted(x)
                    bf16(x)
                for name, f in paths.items():
                    times[name][busy] = median_time(f, repeats=args.repeats)
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"FCN-8s VGG16 reference layout, {args.size}x{args.size}, batch 1, median of "
          f"{args.repeats}; {machine_name()}, {usable_cpus()} usable CPUs, {threads} threads, "
          f"torch {torch.__version__}, {platform.machine()}, {now}, "
          f"load {os.getloadavg()[0]:.2f}\n")  # fmt: skip
    heads = " | ".join(f"{b} busy s | vs (a)" for b in args.busy)
    print(f"| path | {heads} | max rel err vs (a) | same argmax as (a) |")
    print("|---|" + "---:|---:|" * len(args.busy) + "---:|---:|")
    for name, by in times.items():
        cells = " | ".join(f"{by[b]:.2f} | {times[base][b] / by[b]:.2f}x" for b in args.busy)
        y = outs[name]
        err = ((y - ref).abs().max() / ref.abs().max()).item()
        same = (y.argmax(1) == ref.argmax(1)).float().mean().item() * 100
        print(f"| {name} | {cells} | {err:.1e} | {same:.3f}% |")


if __name__ == "__main__":
    main()
