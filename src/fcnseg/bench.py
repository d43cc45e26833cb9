"""`fcnseg bench`: inference paths side by side on this machine, in one run.

For one model and input size: the eager forward (fp32), FastFCN (exact: skips the 100-pixel
padding's image-independent work), and bf16 (not exact), each timed as the median of
`repeats` runs after a warm-up, with the work counted from layer shapes. The fuller scripts,
with the machine's ceiling, sizes up to 2048, peers (ONNX Runtime, OpenVINO) and training, are
in benchmarks/.

FastFCN's kernels are chosen by timing them on this machine at first use (fcnseg.fast.tuning,
cached in ~/.cache/fcnseg/kernels.json); `retune=True` (`fcnseg bench --retune`) forgets the
cached measurements first, so they are taken again in this run.
"""

from __future__ import annotations

import torch

from .amp import machine_name
from .fast import FastFCN, bf16_forward, tuning
from .flops import count_macs
from .models import build_model
from .timing import median_time

__all__ = ["bench_inference"]


@torch.inference_mode()
def bench_inference(name: str = "fcn8s_vgg16", size: int = 500, *, repeats: int = 5,
                    width: float = 1.0, seed: int = 0, retune: bool = False) -> str:  # fmt: skip
    """A markdown table: path, seconds, GFLOP/s, speed-up, max rel. error, argmax agreement;
    the machine in its header, FastFCN's kernel choices under it."""
    if retune:
        tuning.reset_cache()
    torch.manual_seed(seed)
    model = build_model(name, width=width).eval()
    for p in model.parameters():  # score layers start at zero: give every layer real values
        if p.dim() > 1 and not p.abs().sum():
            torch.nn.init.normal_(p, std=0.01)
    x = torch.randn(1, 3, size, size)
    gflop = 2 * sum(count_macs(model, size, size).values()) / 1e9
    fast, fast_bf16 = FastFCN(model), FastFCN(model, bfloat16=True)
    paths = {
        "eager fp32 (baseline)": lambda: model(x),
        "FastFCN fp32 (exact)": lambda: fast(x),
        "bf16 autocast + channels_last": lambda: bf16_forward(model, x),
        "FastFCN bf16": lambda: fast_bf16(x),
    }
    ref = model(x)
    scale = ref.abs().max().item()
    rows, base = [], None
    for label, fn in paths.items():
        out = fn()
        seconds = median_time(fn, repeats, warmup=True)
        base = base or seconds
        err = (out.float() - ref).abs().max().item() / scale
        agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
        rows.append(f"| {label} | {seconds:.3f} | {gflop / seconds:.0f} | {base / seconds:.2f}x "
                    f"| {err:.1e} | {agree:.2%} |")  # fmt: skip
    kinds = "; ".join(
        f"{label} " + ", ".join(f"{n} {k}" for n, k in f.choices(size, size).items())
        for label, f in (("fp32", fast), ("bf16", fast_bf16))
    )
    rows.append(f"\nFastFCN kernels (measured here, cached in {tuning.cache_path()}): {kinds}")
    head = (f"CPU: {machine_name('cpu')}, torch {torch.__version__}\n\n"
            f"{name}, width {width}, {size}x{size}, batch 1, {gflop:.0f} GFLOP counted from layer "
            f"shapes (eager), {torch.get_num_threads()} threads, median of {repeats}\n\n"
            "| path | seconds | GFLOP/s | speed-up | max rel. error | same argmax |\n"
            "|---|---:|---:|---:|---:|---:|\n")  # fmt: skip
    return head + "\n".join(rows)
