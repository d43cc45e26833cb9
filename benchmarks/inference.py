"""FCN-8s VGG16 inference on this CPU: a plain eager baseline vs fcnseg's paths, and sizes.

Part 1 (500x500, batch 1, reference layout), variants timed interleaved in one process:
  (a) plain eager: an nn.Sequential VGG16 + head written here, crops by slicing, loaded with the
      same weights as the fcnseg model (what most users run today)
  (b) fcnseg default: build_model("fcn8s_vgg16") in eval mode, eager
  (c) fcnseg fastest exact: fcnseg.fast.FastFCN (padding background computed once per size,
      channels_last, fc6/fc7 as GEMMs, grouped bilinear upsamplers)
  (d) bf16: FastFCN(bfloat16=True), and plain autocast bf16 + channels_last of (b)
Each row: GFLOP per image (2 x MACs from count_macs, of the reference layout: the work the
model defines, so a path that skips work shows a higher "effective" GFLOP/s), median seconds,
GFLOP/s, percent of the machine ceiling (the faster of a large fp32 3x3 conv, NCHW or
channels_last, and a 4096^3 matmul, timed in the same run), speedup vs (a), and agreement with
(a): max |difference| / max |(a)| and the share of pixels with the same argmax.

Weights: He-init trunk (fcnseg's default), biases N(0, 0.1) (so the padding's background is not
trivially zero), score layers N(0, 1/fan_in) + N(0, 0.1) bias (score layers are zero-initialised
in a fresh model, which would make every output 0 and argmax agreement trivial), bilinear
upsamplers. Input: scikit-image's cat photo (Caffe BGR, mean subtracted), resized.

Part 2 (sizes 224 / 500 / 1024 / 2048): (b) and (c), each in a fresh subprocess per size:
median seconds and peak resident memory (VmHWM of that process, so model weights, ~0.5 GB,
are included; FastFCN's figure includes its per-size background and buffers).

Run: python benchmarks/inference.py [--repeats 5] [--threads 2] [--sizes 224 500 1024 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import fcnseg
from fcnseg.fast import FastFCN, bf16_forward
from fcnseg.flops import count_macs
from fcnseg.timing import median_time, peak_rss_gb

# ---------------------------------------------------------------- (a) the plain eager baseline


class PlainFCN8s(nn.Module):
    """FCN-8s as a plain script would write it: VGG16 features with conv1 padded by 100."""

    CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, num_classes: int = 21):
        super().__init__()
        layers, c = [], 3
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=100 if c == 3 else 1), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)  # pool3 = [16], pool4 = [23], pool5 = [30]
        self.fc = nn.Sequential(
            nn.Conv2d(512, 4096, 7), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Conv2d(4096, 4096, 1), nn.ReLU(inplace=True), nn.Dropout(),
        )  # fmt: skip
        C = num_classes
        self.score_fr = nn.Conv2d(4096, C, 1)
        self.score_pool4 = nn.Conv2d(512, C, 1)
        self.score_pool3 = nn.Conv2d(256, C, 1)
        self.upscore2 = nn.ConvTranspose2d(C, C, 4, 2, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(C, C, 4, 2, bias=False)
        self.upscore8 = nn.ConvTranspose2d(C, C, 16, 8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[2:]
        pool3 = self.features[:17](x)
        pool4 = self.features[17:24](pool3)
        score = self.score_fr(self.fc(self.features[24:](pool4)))
        up = self.upscore2(score)
        h, w = up.shape[2:]
        up = self.upscore_pool4(up + self.score_pool4(pool4)[:, :, 5 : 5 + h, 5 : 5 + w])
        h, w = up.shape[2:]
        out = self.upscore8(up + self.score_pool3(pool3)[:, :, 9 : 9 + h, 9 : 9 + w])
        return out[:, :, 31 : 31 + H, 31 : 31 + W].contiguous()

    def load_from_fcnseg(self, model: nn.Module) -> None:
        src = model.state_dict()
        convs = [i for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]
        names = [f"conv{b}_{i}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)]
        state = {}
        for idx, name in zip(convs, names, strict=True):
            state[f"features.{idx}.weight"] = src[f"{name}.weight"]
            state[f"features.{idx}.bias"] = src[f"{name}.bias"]
        for idx, name in ((0, "fc6"), (3, "fc7")):
            state[f"fc.{idx}.weight"] = src[f"{name}.weight"]
            state[f"fc.{idx}.bias"] = src[f"{name}.bias"]
        for k in self.state_dict():
            if not k.startswith(("features.", "fc.")):
                state[k] = src[k]
        self.load_state_dict(state, strict=True)


# ---------------------------------------------------------------- setup helpers


def make_model() -> nn.Module:
    torch.manual_seed(0)
    model = fcnseg.build_model("fcn8s_vgg16").eval()  # He-init trunk, bilinear upsamplers
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1)
            elif name.startswith("score"):
                p.normal_(0, p.shape[1] ** -0.5)
    return model


def make_image(size: int) -> torch.Tensor:
    try:
        from skimage.data import chelsea

        img = torch.from_numpy(chelsea().copy()).permute(2, 0, 1).float()  # RGB, 0-255
        img = img.flip(0) - torch.tensor([104.00699, 116.66877, 122.67892])[:, None, None]
    except ImportError:  # smooth noise with photo-like statistics
        img = F.avg_pool2d(torch.randn(1, 3, 300, 450) * 200, 9, 1, 4)[0]
    return F.interpolate(img[None], size=(size, size), mode="bilinear", align_corners=False)


@torch.no_grad()
def ceilings(repeats: int) -> dict[str, float]:
    """GFLOP/s of a large fp32 3x3 conv (NCHW and channels_last) and a 4096^3 matmul."""
    x = torch.randn(1, 256, 128, 128)
    w = torch.randn(256, 256, 3, 3)
    flop = 2 * 256 * 256 * 9 * 128 * 128
    out = {}
    for fmt_name, fmt in (
        ("conv NCHW", torch.contiguous_format),
        ("conv NHWC", torch.channels_last),
    ):
        xf, wf = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
        F.conv2d(xf, wf, padding=1)
        secs = median_time(lambda xf=xf, wf=wf: F.conv2d(xf, wf, padding=1), repeats)
        out[fmt_name] = flop / secs / 1e9
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    a @ b
    out["matmul 4096^3"] = 2 * 4096**3 / median_time(lambda: a @ b, max(2, repeats // 2)) / 1e9
    return out


# ---------------------------------------------------------------- part 1


@torch.no_grad()
def part1(args) -> None:
    model = make_model()
    plain = PlainFCN8s().eval()
    plain.load_from_fcnseg(model)
    x = make_image(500)
    gflop = 2 * sum(count_macs(model, 500, 500).values()) / 1e9
    gflop_same = (
        2
        * sum(count_macs(fcnseg.build_model("fcn8s_vgg16", layout="same"), 500, 500).values())
        / 1e9
    )
    fast, fast16 = FastFCN(model), FastFCN(model, bfloat16=True)
    variants = {
        "(a) plain eager fp32 (baseline)": lambda: plain(x),
        "(b) fcnseg eager fp32": lambda: model(x),
        "(c) fcnseg FastFCN fp32 (exact)": lambda: fast(x),
        "(d) fcnseg FastFCN bf16": lambda: fast16(x),
        "(d') autocast bf16 + channels_last": lambda: bf16_forward(model, x),
    }
    outs = {k: f() for k, f in variants.items()}  # warm-up; FastFCN builds its background here
    ref = outs["(a) plain eager fp32 (baseline)"]
    ref_arg = ref.argmax(1)
    times = {k: [] for k in variants}
    for _ in range(args.repeats):  # interleaved: drift on a shared machine hits every variant
        for k, f in variants.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    ceil = ceilings(args.repeats)
    peak = max(ceil["conv NCHW"], ceil["conv NHWC"])

    macs = count_macs(model, 500, 500)
    head = sum(v for k, v in macs.items() if k.startswith(("score", "upscore")))
    gflop_fast = 2 * (fast.trunk_macs(500, 500) + head) / 1e9
    print(f"\nFCN-8s VGG16, reference layout, 500x500, batch 1: {gflop:.1f} GFLOP per image "
          f"(FastFCN performs {gflop_fast:.1f} of them; the 'same' layout would be "
          f"{gflop_same:.1f}); median of {args.repeats} runs, interleaved\n")  # fmt: skip
    print(
        "Ceilings measured in this run: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in ceil.items())
    )
    print()
    print("| variant | seconds | GFLOP/s | % of conv ceiling | speedup vs (a) "
          "| max rel err vs (a) | same argmax |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = sorted(times["(a) plain eager fp32 (baseline)"])[args.repeats // 2]
    for k, ts in times.items():
        t = sorted(ts)[len(ts) // 2]
        err = ((outs[k] - ref).abs().max() / ref.abs().max()).item()
        agree = (outs[k].argmax(1) == ref_arg).float().mean().item() * 100
        print(f"| {k} | {t:.3f} | {gflop / t:.0f} | {100 * gflop / t / peak:.0f}% | "
              f"{base / t:.2f}x | {err:.1e} | {agree:.2f}% |")  # fmt: skip
    print("\nall runs (s): " + "; ".join(f"{k.split()[0]} " + " ".join(f"{t:.2f}" for t in ts)
                                       for k, ts in times.items()))  # fmt: skip


# ---------------------------------------------------------------- part 2 (one subprocess per size)


@torch.no_grad()
def child(variant: str, size: int, repeats: int) -> None:
    model = make_model()
    f = FastFCN(model) if variant == "fast" else model
    x = make_image(size)
    t = time.perf_counter()
    f(x)  # warm-up (FastFCN: background + buffers for this size)
    first = time.perf_counter() - t
    secs = median_time(lambda: f(x), repeats)
    print(json.dumps({"seconds": secs, "first": first, "peak_gb": peak_rss_gb()}))


def part2(args) -> None:
    print(f"\nSizes (batch 1, fp32, one fresh process per cell; median of {args.repeats} runs "
          "after one warm-up, 1 run at 2048; peak RSS includes ~0.5 GB of weights)\n")  # fmt: skip
    print("| size | GFLOP | eager s | eager peak GB | FastFCN s | FastFCN first call s "
          "| FastFCN peak GB | speedup |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    model = make_model()
    for size in args.sizes:
        gflop = 2 * sum(count_macs(model, size, size).values()) / 1e9
        res = {}
        for variant in ("eager", "fast"):
            reps = 1 if size >= 2048 else args.repeats
            cmd = [sys.executable, __file__, "--threads", str(args.threads),
                   "--child", variant, str(size), str(reps)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            res[variant] = json.loads(out.strip().splitlines()[-1])
        e, f = res["eager"], res["fast"]
        print(f"| {size}x{size} | {gflop:.0f} | {e['seconds']:.2f} | {e['peak_gb']:.2f} | "
              f"{f['seconds']:.2f} | {f['first']:.2f} | {f['peak_gb']:.2f} | "
              f"{e['seconds'] / f['seconds']:.2f}x |", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--sizes", type=int, nargs="*", default=[224, 500, 1024, 2048])
    parser.add_argument("--skip-part1", action="store_true", help="only the sizes table")
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "SIZE", "REPEATS"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, {now}")  # fmt: skip
    if not args.skip_part1:
        part1(args)
    if args.sizes:
        part2(args)


if __name__ == "__main__":
    main()
