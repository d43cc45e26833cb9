"""Training throughput on this CPU: one optimizer step (forward, loss, backward, update).

Cases, each timed in a fresh subprocess (so its peak resident memory, VmHWM, is its own):
  voc    FCN-8s VGG16, full width, reference layout, 500x500, batch 1, 21 classes, SGD momentum
         0.99 with the reference's summed (unnormalised) loss, upsamplers fixed (the "heavy" recipe)
  digits the CPU digit-scenes benchmark's model: FCN-8s VGG16 at width 0.125, "same" layout,
         128x128, batch 16, 11 classes, AdamW lr 1e-3 (the "modern" recipe), averaged loss
Each also with channels_last (model and input). Seconds per step: median of --repeats steps after
one warm-up step; images/s = batch / seconds. Random inputs and labels (10% labelled 255,
ignored); the timing does not depend on their values.

Run: python benchmarks/train_step.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import fcnseg
from fcnseg.timing import peak_rss_gb

CASES = {
    "voc": dict(width=1.0, layout="reference", size=500, batch=1, classes=21, opt="sgd"),
    "digits": dict(width=0.125, layout="same", size=128, batch=16, classes=11, opt="adamw"),
}


def child(case: str, channels_last: bool, repeats: int) -> None:
    c = CASES[case]
    torch.manual_seed(0)
    model = fcnseg.build_model(
        "fcn8s_vgg16", num_classes=c["classes"], width=c["width"], layout=c["layout"]
    ).train()
    if c["opt"] == "sgd":  # reference: upsamplers fixed, summed loss, momentum 0.99
        for name, p in model.named_parameters():
            if name.startswith("upscore"):
                p.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-10, momentum=0.99, weight_decay=5e-4)
        reduction = "sum"
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        reduction = "mean"
    n, s = c["batch"], c["size"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, s, s, generator=g) * 50
    y = torch.randint(0, c["classes"], (n, s, s), generator=g)
    y[torch.rand(n, s, s, generator=g) < 0.1] = 255
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y, ignore_index=255, reduction=reduction)
        loss.backward()
        opt.step()

    step()  # warm-up (optimizer state allocated here)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    secs = sorted(times)[len(times) // 2]
    print(json.dumps({"seconds": secs, "images_s": n / secs, "peak_gb": peak_rss_gb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per case (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cases", nargs="*", choices=list(CASES), default=list(CASES))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args.child[0], args.child[1] == "1", int(args.child[2]))
        return
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.machine()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, fp32\n")  # fmt: skip
    print("| case | model | input | batch | optimizer | memory format | s/step | images/s "
          "| peak RSS GB |")  # fmt: skip
    print("|---|---|---|---:|---|---|---:|---:|---:|")
    for case in args.cases:
        c = CASES[case]
        for cl in (False, True):
            cmd = [sys.executable, __file__, "--threads", str(args.threads),
                   "--child", case, str(int(cl)), str(args.repeats)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            opt = "SGD m=0.99" if c["opt"] == "sgd" else "AdamW"
            model = f"fcn8s_vgg16 w={c['width']} {c['layout']}"
            print(f"| {case} | {model} | {c['size']}x{c['size']} | "
                  f"{c['batch']} | {opt} | {'channels_last' if cl else 'NCHW'} | "
                  f"{r['seconds']:.2f} | {r['images_s']:.2f} | {r['peak_gb']:.2f} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
