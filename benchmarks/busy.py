"""FCN-8s forward quiet and beside N busy cores: eager, FastFCN (threads fitted per call, fixed,
pinned to 1), bf16, and OpenVINO f32 if installed; one table, one process, one model.

    python benchmarks/busy.py                 # 500x500, median of 5, quiet and 1 busy core
    python benchmarks/busy.py --busy 0 1 --size 500 --repeats 5

Every path is timed in both conditions in the same run, alternating, so the machine's drift
lands on all of them alike. The "busy" processes are single-thread spin loops
(fcnseg.threads.busy_cores): a data-loading worker, a browser tab or a second job.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

import fcnseg
from fcnseg.amp import machine_name
from fcnseg.threads import busy_cores, usable_cpus
from fcnseg.timing import median_time


def _openvino(model, x, precision: str | None):
    """OpenVINO's compiled model (f32, or its default precision: bf16 where the CPU has it)."""
    try:
        import openvino as ov
    except ImportError:
        return None
    config = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
    compiled = ov.compile_model(ov.convert_model(model, example_input=x), "CPU", config)
    return lambda: compiled(x.numpy())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--busy", type=int, nargs="+", default=[0, 1])
    args = p.parse_args()
    torch.manual_seed(0)
    model = fcnseg.build_model("fcn8s_vgg16").eval()
    for q in model.parameters():  # the score layers start at zero: give every layer values
        if q.dim() > 1 and not q.abs().sum():
            torch.nn.init.normal_(q, std=0.01)
    x = torch.randn(1, 3, args.size, args.size)
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

    paths = {"eager fp32": lambda: model(x),
             "FastFCN fp32 (threads fitted per call)": lambda: fitted(x),
             f"FastFCN fp32 ({threads} threads fixed)": lambda: fixed(x),
             "FastFCN fp32 (1 thread)": pinned,
             "FastFCN bf16 (threads fitted per call)": lambda: bf16(x)}  # fmt: skip
    for label, precision in (("OpenVINO f32", "f32"), ("OpenVINO default (bf16 here)", None)):
        ov = _openvino(model, x, precision)
        if ov is not None:
            paths[label] = ov
    with torch.no_grad():
        for f in paths.values():  # first calls: FastFCN's background and kernel choices
            f()
            f()
        ref = model(x)
        err = ((fitted(x) - ref).abs().max() / ref.abs().max()).item()
        times = {n: {} for n in paths}
        for busy in args.busy:
            with busy_cores(busy):
                time.sleep(0.5)
                for name, f in paths.items():
                    times[name][busy] = median_time(f, repeats=args.repeats)
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"FCN-8s VGG16 reference layout, {args.size}x{args.size}, fp32 unless named, median of "
          f"{args.repeats}; {machine_name()}, {usable_cpus()} usable CPUs, torch "
          f"{torch.__version__}, {platform.machine()}, {now}, load {os.getloadavg()[0]:.2f}; "
          f"FastFCN fitted vs eager max rel error {err:.1e}\n")  # fmt: skip
    heads = " | ".join(f"{b} busy s | vs eager" for b in args.busy)
    print(f"| path | {heads} |")
    print("|---|" + "---:|---:|" * len(args.busy))
    for name, by in times.items():
        cells = " | ".join(f"{by[b]:.2f} | {times['eager fp32'][b] / by[b]:.2f}x"
                           for b in args.busy)  # fmt: skip
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
