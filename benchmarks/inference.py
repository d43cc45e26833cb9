"""FCN-8s VGG16 inference on this CPU: a plain eager baseline vs fcnseg's paths, and sizes.

Part 1 (500x500, batch 1, reference layout), variants timed interleaved in one process:
  (a) plain eager: an nn.Sequential VGG16 + head written here, crops by slicing, loaded with the
      same weights as the fcnseg model (what most users run today)
  (b) fcnseg default: build_model("fcn8s_vgg16") in eval mode, eager
  (c) fcnseg fastest exact: fcnseg.fast.FastFCN (padding background computed once per size,
      channels_last, fc6/fc7 as GEMMs, grouped bilinear upsamplers), kernels measured here;
      (c') the same with fixed choices instead of measured ones (Winograd, F(4x4, 3x3) first, from
      256 input channels: the threshold once tuned on AMD Zen 4)
  (d) bf16: FastFCN(bfloat16=True), and plain autocast bf16 + channels_last of (b)
  (e)-(g) peers on the same weights and input: the plain FCN-8s of (a) exported to ONNX
      (torch.onnx.export, opset 17, 500x500), run by ONNX Runtime fp32, OpenVINO fp32 and
      OpenVINO at its default precision (bf16 where the CPU has AMX or AVX-512 BF16; the row
      names what it chose). A peer not installed prints "not installed" in its row.
FastFCN's kernels are measured at first use and cached (fcnseg.fast.tuning); that happens in
the warm-up, and the kernels each layer runs are printed under the table.
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
import tempfile
import time

import torch
import torch.nn.functional as F
from cpu_options import add_cpu_options
from torch import nn

import fcnseg
from fcnseg.amp import machine_name
from fcnseg.fast import FastFCN, bf16_forward
from fcnseg.flops import count_macs
from fcnseg.threads import busy_cores
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


# ---------------------------------------------------------------- (e) peers


def peers(model: nn.Module, x: torch.Tensor, threads: int, folder: str) -> dict:
    """label -> a function running `model` exported to ONNX on x (a tensor out), or a string
    saying why the peer is missing."""
    found: dict = {}
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime as ort
    except ImportError:
        return {"(e) ONNX Runtime fp32": "not installed", "(f) OpenVINO": "not installed"}
    path = os.path.join(folder, "fcn8s.onnx")
    torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"])  # fmt: skip
    xn = x.numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    found[f"(e) ONNX Runtime {ort.__version__} fp32"] = lambda: torch.from_numpy(
        sess.run(None, {"image": xn})[0]
    )
    try:
        import openvino as ov
    except ImportError:
        found["(f) OpenVINO"] = "not installed"
        return found
    core = ov.Core()
    base = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    for tag, label, extra in (
        ("(f)", "fp32", {"INFERENCE_PRECISION_HINT": "f32"}),
        ("(g)", "default", {}),
    ):
        compiled = core.compile_model(path, "CPU", {**base, **extra})
        prec = str(compiled.get_property("INFERENCE_PRECISION_HINT"))  # "<Type: 'bfloat16'>"
        prec = prec.split("'")[1] if prec.count("'") == 2 else prec
        req = compiled.create_infer_request()
        name = f"{tag} OpenVINO {ov.__version__.split('-')[0]} {label}"
        name += f" ({prec})" if label == "default" else ""
        found[name] = lambda req=req: torch.from_numpy(req.infer([xn])[0].copy())
    return found


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
    fixed = FastFCN(model, winograd=256, measure=False)  # the thresholds tuned on AMD Zen 4
    variants = {
        "(a) plain eager fp32 (baseline)": lambda: plain(x),
        "(b) fcnseg eager fp32": lambda: model(x),
        "(c) fcnseg FastFCN fp32 (exact)": lambda: fast(x),
        "(c') FastFCN fp32, fixed kernels (F(4x4) Winograd from 256 channels)": lambda: fixed(x),
        "(d) fcnseg FastFCN bf16": lambda: fast16(x),
        "(d') autocast bf16 + channels_last": lambda: bf16_forward(model, x),
    }
    missing = {}
    with tempfile.TemporaryDirectory() as folder:
        for k, v in peers(plain, x, args.threads, folder).items():
            (missing if isinstance(v, str) else variants)[k] = v
        warm = {}
        for k, f in variants.items():  # warm-up; FastFCN measures its kernels, builds its
            t = time.perf_counter()  # background here
            f()
            warm[k] = time.perf_counter() - t
    outs = {k: f() for k, f in variants.items()}
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
    print(f"\nCPU: {machine_name('cpu')}; load average {os.getloadavg()[0]:.2f} at the start")
    print(f"\nFCN-8s VGG16, reference layout, 500x500, batch 1: {gflop:.1f} GFLOP per image "
          f"(FastFCN performs {gflop_fast:.1f} of them; the 'same' layout would be "
          f"{gflop_same:.1f}); median of {args.repeats} runs, interleaved\n")  # fmt: skip
    print(
        "Ceilings measured in this run: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in ceil.items())
    )
    print()
    print("| path | s | GFLOP/s | % of conv ceiling | vs eager (a) "
          "| agreement with fp32 (a): max rel err | same argmax |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = sorted(times["(a) plain eager fp32 (baseline)"])[args.repeats // 2]
    for k, ts in times.items():
        t = sorted(ts)[len(ts) // 2]
        err = ((outs[k] - ref).abs().max() / ref.abs().max()).item()
        agree = (outs[k].argmax(1) == ref_arg).float().mean().item() * 100
        print(f"| {k} | {t:.3f} | {gflop / t:.0f} | {100 * gflop / t / peak:.0f}% | "
              f"{base / t:.2f}x | {err:.1e} | {agree:.3f}% |")  # fmt: skip
    for k, why in missing.items():
        print(f"| {k} | {why} | | | | | |")
    print(
        f"\nload average {os.getloadavg()[0]:.2f} at the end; first call (s): "
        + "; ".join(f"{k.split()[0]} {t:.2f}" for k, t in warm.items())
    )
    print(
        "FastFCN kernels at 500x500 (measured here, cached): fp32 "
        + ", ".join(f"{n} {k}" for n, k in fast.choices(500, 500).items())
        + "; bf16 "
        + ", ".join(f"{n} {k}" for n, k in fast16.choices(500, 500).items())
    )
    print("\nall runs (s): " + "; ".join(f"{k.split()[0]} " + " ".join(f"{t:.2f}" for t in ts)
                                       for k, ts in times.items()))  # fmt: skip


# ---------------------------------------------------------------- where bf16's error comes from


@torch.no_grad()
def bf16_layers(args) -> None:
    """End-to-end error of the fp32 model when ONE conv runs as a bf16 kernel does (input,
    weight and bias rounded to bf16, fp32 sums, output rounded to bf16), each conv in turn."""
    model, x = make_model(), make_image(500)
    ref = model(x)
    ref_arg, scale = ref.argmax(1), ref.abs().max()

    def bf16_conv(mod, inp, out):
        b = None if mod.bias is None else mod.bias.bfloat16()
        y = F.conv2d(inp[0].bfloat16(), mod.weight.bfloat16(), b, mod.stride, mod.padding)
        return y.float()

    print(
        "\nbf16 error by layer (500x500, the benchmark's weights and image), only that conv "
        "in bf16:\n"
    )
    print("| conv | max rel err | same argmax |\n|---|---:|---:|")
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            hook = mod.register_forward_hook(bf16_conv)
            out = model(x)
            hook.remove()
            err = ((out - ref).abs().max() / scale).item()
            agree = (out.argmax(1) == ref_arg).float().mean().item() * 100
            print(f"| {name} | {err:.1e} | {agree:.3f}% |", flush=True)


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
    add_cpu_options(parser)  # --threads, --busy
    parser.add_argument("--sizes", type=int, nargs="*", default=[224, 500, 1024, 2048])
    parser.add_argument("--skip-part1", action="store_true", help="only the sizes table")
    parser.add_argument("--bf16-layers", action="store_true",
                        help="also: each conv's error when it alone runs in bf16")  # fmt: skip
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "SIZE", "REPEATS"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, {now}, {args.busy} busy processes beside")  # fmt: skip
    with busy_cores(args.busy):
        if not args.skip_part1:
            part1(args)
        if args.bf16_layers:
            bf16_layers(args)
        if args.sizes:
            part2(args)


if __name__ == "__main__":
    main()
