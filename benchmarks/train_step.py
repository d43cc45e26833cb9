"""Training throughput on this CPU: one optimizer step (forward, loss, backward, update).

Cases, each timed in a fresh subprocess (so its peak resident memory, VmHWM, is its own):
  voc    FCN-8s VGG16, full width, reference layout, 500x500, batch 1, 21 classes, SGD momentum
         0.99 with the reference's summed (unnormalised) loss, upsamplers fixed (the "heavy" recipe)
  digits the CPU digit-scenes benchmark's model: FCN-8s VGG16 at width 0.125, "same" layout,
         128x128, batch 16, 11 classes, AdamW lr 1e-3 (the "modern" recipe), averaged loss
  fast8 / fast32 / fast8_375   the reference layout with and without FastTrainFCN (--fast, issue
         13): FCN-8s 500x500, FCN-32s 500x500, FCN-8s 375x500 (VOC's usual shape), heavy recipe;
         the plain and fast children alternate, and the table gives the ratio
Each also with channels_last (model and input). Seconds per step: median of --repeats steps after
one warm-up step; images/s = batch / seconds. Random inputs and labels (10% labelled 255,
ignored); the timing does not depend on their values. The load average is printed with each
row (a shared machine: compare rows of one run).

--agreement: FastTrainFCN's loss and per-layer gradients vs the model's (float32, full width,
500x500, fast8's model), and both (and FastTrainFCN without Winograd) vs the exact float64
ones. --profile: the fast step's time by op and shape (torch.profiler, forward and backward).

Run: python benchmarks/train_step.py [--repeats 3] [--threads 2] [--cases fast8 fast32]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from cpu_options import add_cpu_options

import fcnseg
from fcnseg.fast.train import FastTrainFCN
from fcnseg.memory import keep_freed_memory
from fcnseg.threads import StepThreads, busy_cores, others_running
from fcnseg.timing import peak_rss_gb

CASES = {
    "voc": dict(width=1.0, layout="reference", size=500, batch=1, classes=21, opt="sgd"),
    "digits": dict(width=0.125, layout="same", size=128, batch=16, classes=11, opt="adamw"),
    "fast8": dict(width=1.0, layout="reference", size=500, batch=1, classes=21, opt="sgd"),
    "fast32": dict(width=1.0, layout="reference", size=500, batch=1, classes=21, opt="sgd",
                   model="fcn32s_vgg16"),
    "fast8_375": dict(width=1.0, layout="reference", size=(375, 500), batch=1, classes=21,
                      opt="sgd"),
}  # fmt: skip
FAST = ("fast8", "fast32", "fast8_375")


def build(case: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The case's model (train mode, upsamplers frozen for SGD), input and labels."""
    c = CASES[case]
    torch.manual_seed(0)
    model = fcnseg.build_model(
        c.get("model", "fcn8s_vgg16"), num_classes=c["classes"], width=c["width"],
        layout=c["layout"],
    ).train()  # fmt: skip
    if c["opt"] == "sgd":
        for name, p in model.named_parameters():
            if name.startswith("upscore"):
                p.requires_grad_(False)
        with torch.no_grad():  # score layers start at zero: give them (and all) gradients
            for name, p in model.named_parameters():
                if name.startswith("score"):
                    p.normal_(0, 1e-3)
    n = c["batch"]
    h, w = (c["size"], c["size"]) if isinstance(c["size"], int) else c["size"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, h, w, generator=g) * 50
    y = torch.randint(0, c["classes"], (n, h, w), generator=g)
    y[torch.rand(n, h, w, generator=g) < 0.1] = 255
    return model, x, y


def child(case: str, channels_last: bool, repeats: int, fast: bool = False) -> None:
    keep_freed_memory()  # as fcnseg's engine and command line do (FCNSEG_MALLOC=system: not)
    c = CASES[case]
    model, x, y = build(case)
    n = c["batch"]
    if c["opt"] == "sgd":  # reference: upsamplers fixed, summed loss, momentum 0.99
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-10, momentum=0.99, weight_decay=5e-4, fused=True)
        reduction = "sum"
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4, fused=True)
        reduction = "mean"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = FastTrainFCN(model) if fast else model

    threads = StepThreads()

    def step():  # as fcnseg's engine runs it: on a shared CPU, the faster thread count
        with threads():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x), y, ignore_index=255, reduction=reduction)
            loss.backward()
            opt.step()

    step()  # warm-up (optimizer state allocated here)
    if others_running():  # beside other programs: StepThreads tries both counts first
        for _ in range(StepThreads.SETTLE - 1):  # (the warm-up step saw the load once)
            step()
    times, cpu = [], []
    for _ in range(repeats):
        t, tc = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - tc)
    secs = sorted(times)[len(times) // 2]
    print(json.dumps({"seconds": secs, "cpu_s": sorted(cpu)[len(cpu) // 2], "images_s": n / secs,
                      "peak_gb": peak_rss_gb(), "load": os.getloadavg()[0]}))  # fmt: skip


def agreement() -> None:
    """Per-layer max relative gradient error (max |diff| / max |exact|) at full width, fast8's
    model and input: the fast step (default: Winograd F(4x4) on convs with >= 128 inputs) vs
    the plain one in float32, and each float32 path vs the exact (float64) gradients, with the
    fast step without Winograd (winograd=None) for comparison."""
    model, x, y = build("fast8")
    exact = copy.deepcopy(model).double()
    runs = {"plain": (model, model, x), "fast": (model, FastTrainFCN(model), x),
            "direct": (model, FastTrainFCN(model, winograd=None), x),
            "exact": (exact, exact, x.double())}  # fmt: skip
    grads, losses = {}, {}
    for name, (m, net, inp) in runs.items():
        torch.manual_seed(5)
        m.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(inp), y, ignore_index=255, reduction="sum")
        loss.backward()
        losses[name] = loss.item()
        grads[name] = {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}
    cols = [("fast", "plain"), ("plain", "exact"), ("fast", "exact"), ("direct", "exact")]
    print("| layer | " + " | ".join(f"{a} vs {b}" for a, b in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    rows = {k: [_rel(grads[a][k], grads[b][k]) for a, b in cols] for k in grads["exact"]}
    for k, v in rows.items():
        print(f"| {k} | " + " | ".join(f"{e:.1e}" for e in v) + " |")
    worst = [max(v[i] for v in rows.values()) for i in range(len(cols))]
    print("| **worst** | " + " | ".join(f"**{e:.1e}**" for e in worst) + " |")
    print("\nloss: " + ", ".join(f"{k} {v:.9e}" for k, v in losses.items()) + "; fast vs plain "
          f"{abs(losses['fast'] - losses['plain']) / abs(losses['plain']):.1e} rel")  # fmt: skip


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def profile(case: str = "fast8") -> None:
    """The fast step's self CPU time by op and input shape (forward and backward)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    keep_freed_memory()  # as the timed step (child) runs
    model, x, y = build(case)
    fast = FastTrainFCN(model)

    def step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(fast(x), y, ignore_index=255, reduction="sum").backward()

    step()
    with prof(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
        step()
    ev = p.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in ev)
    print("| op | input shapes | calls | self CPU s | share |\n|---|---|---:|---:|---:|")
    for e in sorted(ev, key=lambda e: -e.self_cpu_time_total)[:40]:
        shapes = ", ".join(str(tuple(s)) for s in e.input_shapes[:2] if s)
        print(f"| {e.key} | {shapes} | {e.count} | {e.self_cpu_time_total / 1e6:.3f} | "
              f"{100 * e.self_cpu_time_total / total:.1f}% |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per case (median)")
    add_cpu_options(parser)  # --threads, --busy
    parser.add_argument("--cases", nargs="*", choices=list(CASES), default=list(FAST))
    parser.add_argument("--agreement", action="store_true", help="gradient agreement table")
    parser.add_argument("--profile", action="store_true", help="the fast step's profile")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args.child[0], args.child[1] == "1", int(args.child[2]), args.child[3] == "1")
        return
    if args.agreement:
        return agreement()
    if args.profile:
        return profile()
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.machine()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, fp32, "
          f"{args.busy} busy processes beside, malloc: "
          f"{os.environ.get('FCNSEG_MALLOC') or 'freed memory kept'}\n")  # fmt: skip
    with busy_cores(args.busy):
        step_table(args)


def step_table(args) -> None:
    """One row per case, memory format and step (plain, fast), each in a fresh process."""
    print("| case | model | input | batch | optimizer | memory format | forward | s/step "
          "| CPU s/step | images/s | peak RSS GB | fast/plain | load |")  # fmt: skip
    print("|---|---|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|")
    for case in args.cases:
        c = CASES[case]
        size = c["size"] if isinstance(c["size"], tuple) else (c["size"], c["size"])
        for cl in (False, True):
            plain = None
            for fast in (False, True) if case in FAST else (False,):
                cmd = [sys.executable, __file__, "--threads", str(args.threads),
                       "--child", case, str(int(cl)), str(args.repeats),
                       str(int(fast))]  # fmt: skip
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                opt = "SGD m=0.99" if c["opt"] == "sgd" else "AdamW"
                model = f"{c.get('model', 'fcn8s_vgg16')} w={c['width']} {c['layout']}"
                ratio = f"{plain['seconds'] / r['seconds']:.2f}x" if plain else ""
                plain = plain or r
                print(f"| {case} | {model} | {size[0]}x{size[1]} | "
                      f"{c['batch']} | {opt} | {'channels_last' if cl else 'NCHW'} | "
                      f"{'FastTrainFCN' if fast else 'model'} | {r['seconds']:.2f} | "
                      f"{r['cpu_s']:.2f} | {r['images_s']:.2f} | {r['peak_gb']:.2f} | {ratio} | "
                      f"{r['load']:.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
