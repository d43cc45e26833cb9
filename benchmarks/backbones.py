"""FCN-8s on today's classifiers vs the demo's VGG16 1/8 and torchvision's fcn_resnet50 design.

Two parts, one machine, one run:

1. Training on digit scenes (`--data digits`, the demo's recipe family: "modern" AdamW 1e-3,
   poly decay, batch 16, channels_last; FCN-32s -> 16s -> 8s in stages where the net has
   stages, the dilated net in one stage of the same total steps): mean IU on the held-out
   scenes, training seconds, parameters.
2. Inference at 500x500 (and 1024x2048 with --large), batch 1, fp32: median seconds and the
   process's peak resident memory, each model in its own process; the ratio to FCN-8s VGG16 at
   full width, eager and FastFCN (reference layout).

    python benchmarks/backbones.py --steps 40,30,80 --size 96 --n-train 600 --out runs/bb

Prints markdown tables; asserts nothing. The CPU and load average are printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

TRAINED = {  # label: (model of the last stage, staged, options, backbone weights)
    "FCN-8s VGG16 1/8 (demo)": ("fcn8s_vgg16", True, {"width": 0.125, "layout": "same"}, None),
    "FCN-8s ResNet-18 (scratch)": ("fcn8s_resnet18", True, {}, None),
    "FCN-8s EfficientNet-Lite0 (ImageNet)": ("fcn8s_efficientnet_lite0", True, {},
                                             "efficientnet_lite0_imagenet"),
    "FCN-8s EfficientNet-Lite0 (scratch)": ("fcn8s_efficientnet_lite0", True, {}, None),
    "fcn_resnet50 design (dilated, scratch)": ("fcn_dilated_resnet50", False, {}, None),
}  # fmt: skip
INFERENCE = {  # label: (model, options, fast)
    "FCN-8s VGG16 (reference layout)": ("fcn8s_vgg16", {}, False),
    "FCN-8s VGG16 FastFCN": ("fcn8s_vgg16", {}, True),
    "FCN-8s VGG16 1/8 same": ("fcn8s_vgg16", {"width": 0.125, "layout": "same"}, False),
    "FCN-8s ResNet-18": ("fcn8s_resnet18", {}, False),
    "FCN-8s ResNet-50": ("fcn8s_resnet50", {}, False),
    "FCN-8s MobileNetV3-Large": ("fcn8s_mobilenet_v3_large", {}, False),
    "FCN-8s EfficientNet-Lite0": ("fcn8s_efficientnet_lite0", {}, False),
    "fcn_resnet50 design (dilated)": ("fcn_dilated_resnet50", {}, False),
}


def _machine() -> str:
    from fcnseg.amp import machine_name

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"{machine_name('cpu')}, load average {load}"


def train_all(args) -> str:
    from fcnseg.engine import TrainConfig, train, train_stages
    from fcnseg.models import build_model

    steps = [int(s) for s in args.steps.split(",")]
    data = {"n_train": args.n_train, "n_val": args.n_val, "size": args.size, "bold": 1,
            "scale": (args.size / 128 * 2.5, args.size / 128 * 3.5)}  # fmt: skip
    rows = [f"Trained on this machine: {_machine()} (at the start)\n",
            "| model | mean IU | pixel acc. | training s | parameters |",
            "|---|---:|---:|---:|---:|"]  # fmt: skip
    for label, (name, staged, options, backbone) in TRAINED.items():
        config = TrainConfig(model=name, model_options=options, recipe="modern", data="digits",
                             data_options=dict(data), batch_size=16, backbone_weights=backbone,
                             out=str(Path(args.out) / label.split(" (")[0].replace(" ", "_")
                                     / ("imagenet" if backbone else "scratch")),
                             ckpt_every=10**6, log_every=10**6, eval_every=0,
                             channels_last=True, seed=0)  # fmt: skip
        t = time.perf_counter()
        if staged:
            family = name.split("_", 1)[1]
            names = [f"fcn{s}_{family}" for s in ("32s", "16s", "8s")]
            results = train_stages(config, list(zip(names, steps, strict=True)), progress=False)
            res = results[-1]
        else:
            res = train(config.__class__(**{**config.__dict__, "steps": sum(steps)}),
                        progress=False)  # fmt: skip
        seconds = time.perf_counter() - t
        m = res["metrics"]
        params = sum(p.numel() for p in build_model(name, **options).parameters()) / 1e6
        iu, acc = m.get("mean_iu", float("nan")), m.get("pixel_acc", float("nan"))
        rows.append(f"| {label} | {iu:.3f} | {acc:.3f} | {seconds:.0f} | {params:.2f}M |")
        print(rows[-1], flush=True)
    return "\n".join(rows)


def _one(name: str, options: dict, fast: bool, h: int, w: int, repeats: int) -> dict:
    """One model's inference in this process (called in a child): seconds and peak RSS."""
    from fcnseg.fast import FastFCN
    from fcnseg.models import build_model
    from fcnseg.timing import median_time

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)
    model = build_model(name, **options).eval()
    run = FastFCN(model) if fast else model
    x = torch.randn(1, 3, h, w)
    with torch.inference_mode():
        seconds = median_time(lambda: run(x), repeats, warmup=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_mib": peak / 1024, "model_mib": (peak - base) / 1024}


def inference_all(args) -> str:
    sizes = [(500, 500)] + ([(1024, 2048)] if args.large else [])
    rows = [f"Inference on this machine: {_machine()} (at the start); batch 1, fp32, median "
            f"of {args.repeats} after a warm-up, each model in its own process; peak = the "
            "process's maximum resident memory (torch + model + activations)\n"]  # fmt: skip
    for h, w in sizes:
        rows += [f"\n{h}x{w}:\n", "| model | seconds | vs FCN-8s VGG16 eager | "
                 "vs FCN-8s VGG16 FastFCN | peak MiB |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        results = {}
        for label, (name, options, fast) in INFERENCE.items():
            code = ("import json, sys; sys.path.insert(0, 'benchmarks'); from backbones import "
                    f"_one; print(json.dumps(_one({name!r}, {options!r}, {fast}, {h}, {w}, "
                    f"{args.repeats})))")  # fmt: skip
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=False)  # fmt: skip
            if out.returncode:
                rows.append(f"| {label} | failed: {out.stderr.strip().splitlines()[-1]} | | | |")
                continue
            results[label] = json.loads(out.stdout.strip().splitlines()[-1])
            r, eager = results[label], results.get("FCN-8s VGG16 (reference layout)")
            fastv = results.get("FCN-8s VGG16 FastFCN")
            ratio = f"{eager['seconds'] / r['seconds']:.2f}x" if eager else "-"
            fratio = f"{fastv['seconds'] / r['seconds']:.2f}x" if fastv else "-"
            rows.append(f"| {label} | {r['seconds']:.3f} | {ratio} | {fratio} | "
                        f"{r['peak_mib']:.0f} |")  # fmt: skip
            print(rows[-1], flush=True)
    rows.append("\nratios: the VGG16 time divided by this model's (above 1: faster than VGG16)")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default="400,300,1200", help="steps of 32s,16s,8s (the demo's)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--n-val", type=int, default=300)
    p.add_argument("--out", default="runs/backbones")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--large", action="store_true", help="also 1024x2048")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-inference", action="store_true")
    args = p.parse_args()
    if not args.skip_inference:
        print(inference_all(args))
    if not args.skip_train:
        print(train_all(args))


if __name__ == "__main__":
    main()
