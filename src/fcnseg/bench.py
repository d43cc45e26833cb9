"""`fcnseg bench`: inference paths side by side on this machine, in one run.

For one model (any name of `fcnseg.list_models()` or `fcnseg.reference_nets()`) and input size:
the eager forward (fp32), FastFCN (exact: skips the 100-pixel padding's image-independent
work), and bf16 (not exact), each timed as the median of `repeats` runs after a warm-up, with
the work counted from layer shapes. The input is random noise of the kind the net takes: one
(1, 3, size, size) tensor, NYUDv2 colour + depth's (1, 4, size, size), or colour + HHA's dict of
two; a net with two heads (SIFT Flow) gets an error and agreement column per head. A net
FastFCN cannot run (the GoogLeNet FCN) is timed eagerly and in bf16, with the reason shown.
The fuller scripts, with the machine's ceiling, sizes up to 2048, peers (ONNX Runtime,
OpenVINO) and training, are in benchmarks/.

FastFCN's kernels are chosen by timing them on this machine at first use (fcnseg.fast.tuning,
cached in ~/.cache/fcnseg/kernels.json); `retune=True` (`fcnseg bench --retune`) forgets the
cached measurements first, so they are taken again in this run.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .amp import machine_name
from .fast import FastFCN, bf16_forward, tuning
from .flops import count_macs
from .models import build_model
from .threads import StepThreads, others_running
from .timing import median_time

__all__ = ["bench_inference"]


class _Fed(nn.Module):
    """The model fed its `example_input` of the size of a (N, 3, H, W) tensor: count_macs passes a
    3-channel image, whatever the net takes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model(self.model.example_input(x.shape[0], *x.shape[-2:], device=x.device))


def _num(v: float) -> str:
    """363 (large), 2.41, 0.0153: three significant digits below 100, no exponent above."""
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def _outputs(y) -> dict[str, torch.Tensor]:
    """{head: scores}; {"": scores} for a one-head net."""
    return dict(y) if isinstance(y, Mapping) else {"": y}


@torch.inference_mode()
def bench_inference(name: str = "fcn8s_vgg16", size: int = 500, *, repeats: int = 5,
                    width: float = 1.0, seed: int = 0, retune: bool = False) -> str:  # fmt: skip
    """A markdown table: path, seconds, GFLOP/s, speed-up, max rel. error and argmax agreement
    (per head for a two-head net); the machine in its header, FastFCN's kernel choices under
    it."""
    if retune:
        tuning.reset_cache()
    torch.manual_seed(seed)
    notes = []
    try:
        model = build_model(name, **({} if width == 1 else {"width": width}))
    except (TypeError, ValueError) as e:  # GoogLeNet's FCN has no width multiplier
        if width == 1 or "width" not in str(e):
            raise
        model, width = build_model(name), 1.0
        notes.append(f"{name} takes no width option: timed at full width")
    model.eval()
    for p in model.parameters():  # score layers start at zero: give every layer real values
        if p.dim() > 1 and not p.abs().sum():
            torch.nn.init.normal_(p, std=0.01)
    x = model.example_input(1, size, size)
    gflop = 2 * sum(count_macs(_Fed(model), size, size).values()) / 1e9
    paths = {"eager fp32 (baseline)": lambda: model(x)}
    try:
        fast, fast_bf16 = FastFCN(model), FastFCN(model, bfloat16=True)
    except (TypeError, ValueError) as e:
        fast = fast_bf16 = None
        notes.append(f"FastFCN does not run {name}: {e}")
    else:
        paths["FastFCN fp32 (exact)"] = lambda: fast(x)
    paths["bf16 autocast + channels_last"] = lambda: bf16_forward(model, x)
    if fast_bf16 is not None:
        paths["FastFCN bf16"] = lambda: fast_bf16(x)
    ref = _outputs(model(x))
    heads = list(ref)
    rows, base = [], None
    busy = others_running()  # other programs running: FastFCN first tries its thread counts
    trials = StepThreads.SETTLE if busy else 0
    for label, fn in paths.items():
        out = _outputs(fn())
        for _ in range(trials if label.startswith("FastFCN") else 0):
            fn()
        seconds = median_time(fn, repeats, warmup=True)
        base = base or seconds
        cells = []
        for k in heads:
            err = (out[k].float() - ref[k]).abs().max().item() / ref[k].abs().max().item()
            agree = (out[k].argmax(1) == ref[k].argmax(1)).float().mean().item()
            cells += [f"{err:.1e}", f"{agree:.2%}"]
        rows.append(f"| {label} | {seconds:.3f} | {_num(gflop / seconds)} | {base / seconds:.2f}x "
                    f"| {' | '.join(cells)} |")  # fmt: skip
    rows += [f"\n{note}" for note in notes]
    if fast is not None:
        kinds = "; ".join(
            f"{label} " + ", ".join(f"{n} {k}" for n, k in f.choices(size, size).items())
            for label, f in (("fp32", fast), ("bf16", fast_bf16))
        )
        rows.append(f"\nFastFCN kernels (measured here, cached in {tuning.cache_path()}): {kinds}")
    named = [f" ({k})" if k else "" for k in heads]
    columns = "".join(f" max rel. error{k} | same argmax{k} |" for k in named)
    inputs = ", ".join(f"{s or 'input'} {tuple(t.shape)}"
                       for s, t in (x if isinstance(x, dict) else {"": x}).items())  # fmt: skip
    head = (f"CPU: {machine_name('cpu')}, torch {torch.__version__}\n\n"
            f"{name}, width {width}, {size}x{size} ({inputs}), batch 1, {_num(gflop)} GFLOP "
            f"counted from layer shapes (eager), {torch.get_num_threads()} threads, median of "
            f"{repeats}\n\n"
            f"| path | seconds | GFLOP/s | speed-up |{columns}\n"
            f"|---|---:|---:|---:|{'---:|---:|' * len(heads)}\n")  # fmt: skip
    return head + "\n".join(rows)
