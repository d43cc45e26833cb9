"""FastFCN's plan for one input size: each step's kernel, its buffers, the background.

`kinds` picks each step's kernel among those allowed (`candidates`), measured on this machine
(fcnseg.fast.tuning) or the first allowed. `prepare` then sizes the shared work arenas from
those kernels (the Winograd plans, the kept outputs, the input buffers) and computes the
background: the trunk on a black image, each step's input rim and the tap maps the head reads
outside the core. FastFCN (fast/net.py) keeps what `prepare` returns per input shape.
"""

from __future__ import annotations

import math

import torch

from .. import kernels
from . import plan, tuning
from .buffers import Background, RimInput
from .plan import ONEDNN_PRODUCTS, WINOGRAD, Geom, Step, Stream, pair

__all__ = ["candidates", "kinds", "prepare", "winograd_eligible"]


def winograd_eligible(fast, s: Step) -> bool:
    """A stride-1 3x3 conv with at least `fast.winograd` input channels (NHWC only), in a
    float32 or float64 trunk. Never in bf16: its transforms and GEMM outputs would each round
    to bf16 (oneDNN's direct bf16 conv rounds once, after an fp32 sum); see fast/__init__."""
    return (
        fast._dt(s, torch.float32) != torch.bfloat16
        and fast.winograd is not None
        and fast.channels_last
        and s.kind == "conv"
        and s.layer.groups == 1
        and s.layer.stride == (1, 1)
        and pair(s.layer.kernel_size) == (3, 3)
        and s.layer.in_channels >= fast.winograd
    )


def candidates(fast, s: Step, g: Geom, dtype: torch.dtype) -> list[str]:
    """The kernels allowed for a step, in the fixed order of preference: "winograd4" (F(4x4,
    3x3)), "winograd4dnnl" (the same, its GEMMs by oneDNN), "winograd" (F(2x2, 3x3)),
    "gemm" (im2col + one GEMM), "inplace" (oneDNN into a kept output), then "plain"
    (torch's conv or pool on the step's buffer) or "direct" (the layer on the whole
    previous map with its own padding, where the step's input and output are all core). An
    LRN step is "pointwise": it runs on the previous step's output (its core) as it is,
    since it reads no neighbouring positions."""
    last = "direct" if g.direct else "plain"
    if s.kind == "lrn":
        return ["pointwise"]
    if s.kind != "conv":
        return [last]
    (a0, a1), (b0, b1) = g.out_core
    found = []
    probe = torch.empty(0, dtype=fast._dt(s, dtype))
    if not g.direct and winograd_eligible(fast, s):
        found += [k for k in WINOGRAD if k not in ONEDNN_PRODUCTS or kernels.available(probe)]
    if fast._as_gemm(s, (a1 - a0, b1 - b0)):
        found.append("gemm")
    # torch's conv runs the same oneDNN kernel as "inplace", and allocates: not a candidate
    if (
        not g.direct
        and s.layer.stride == (1, 1)
        and fast.channels_last
        and kernels.available(probe)
    ):
        return [*found, "inplace"]
    return [*found, last]


def kinds(fast, stream: Stream, n: int, geoms: list[Geom], dtype: torch.dtype) -> list[str]:
    """Each step's kernel: measured (cached) or the first allowed (see FastFCN's doc)."""
    found_kinds = []
    c = stream.in_channels  # the step's input channels
    for s, g in zip(stream.steps, geoms, strict=True):
        found = candidates(fast, s, g, dtype)
        if fast.measure and len(found) > 1:
            found_kinds.append(tuning.step_choice(fast, s, g, n, c, fast._dt(s, dtype), found))
        else:
            found_kinds.append(found[0])
        c = s.layer.out_channels if s.kind == "conv" else c
    return found_kinds


@torch.no_grad()
def prepare(fast, stream: Stream, n: int, H: int, W: int, dtype: torch.dtype) -> dict:
    """For one stream's trunk: background activations of an all-zero input, each step's input
    rim, and the sizes of the arenas its buffers live in.

    A step's input is dead once the step has run, and its output once the next step has
    pasted it, so all inputs share one arena (refilled each call: rim strips + core), the
    kept outputs ("inplace") another, and the Winograd steps three more. Peak memory is
    then a few layers' worth, not the whole net's (at 2048x2048 the net's inputs alone
    are ~5 GB)."""
    steps = stream.steps
    geoms = plan.geometry(steps, H, W)
    step_kinds = kinds(fast, stream, n, geoms, dtype)
    needs: dict[torch.dtype, dict[str, int]] = {}  # per dtype, elements each arena holds
    work: list[object] = []  # per step: the kept output's shape, or the Winograd plan
    shapes: list[tuple | None] = []  # per step: its input buffer's (N, C, h, w)
    c = stream.in_channels  # the step's input channels
    for s, g, kind in zip(steps, geoms, step_kinds, strict=True):
        need = needs.setdefault(fast._dt(s, dtype), dict.fromkeys(("in", "out", "a", "b", "y"), 0))
        (a0, a1), (b0, b1) = g.out_core
        (h0, h1), (w0, w1) = g.window
        size, w = (h1 - h0, w1 - w0), None
        if kind in WINOGRAD:  # the tiles need m*t+2 rows and columns: zeros past the window
            out_hw = (a1 - a0, b1 - b0)
            size, w = plan.winograd_work(kind, n, out_hw, c, s.layer.out_channels)
            for k in ("a", "b", "y"):
                need[k] = max(need[k], w[k])
        elif kind == "inplace":
            w = (n, s.layer.out_channels, a1 - a0, b1 - b0)
            need["out"] = max(need["out"], math.prod(w))
        shape = None if g.direct or kind == "pointwise" else (n, c, *size)
        if shape is not None:
            need["in"] = max(need["in"], math.prod(shape))
        work.append(w)
        shapes.append(shape)
        c = s.layer.out_channels if s.kind == "conv" else c

    # background: the trunk on a black image (batch 1), computed on a smaller one with the
    # same edges where that is exact; each step's input window holds it where the window
    # lies inside the map, zeros (padding) outside
    small = [fast._small_length(L, a, steps) for a, L in enumerate((H, W))]
    zones = [plan.zones(steps, L, a) for a, L in enumerate(small)]
    x = torch.zeros(1, stream.in_channels, *small, dtype=torch.float32 if fast.dtype else dtype)
    fmt = torch.channels_last if fast.channels_last else torch.contiguous_format
    inputs: list[RimInput | None] = []
    taps: dict[int, torch.Tensor] = {}
    for i, (s, g, shape) in enumerate(zip(steps, geoms, shapes, strict=True)):
        if shape is not None:
            bg = Background(x, g.in_len, [z[i][0] for z in zones])
            (h0, _), (w0, _) = g.window
            (c0, c1), (d0, d1) = g.in_core
            rows, cols = (c0 - h0, c1 - h0), (d0 - w0, d1 - w0)  # the core, buffer coords
            inputs.append(RimInput.of(bg, (h0, w0), shape, rows, cols, fast._dt(s, dtype)))
        else:
            inputs.append(None)  # the layer runs on the previous map as it is (direct, LRN)
        x = fast._run_full(s, x)
        if i in stream.taps and g.out_core != tuple((0, L) for L in g.out_len):
            full = Background(x, g.out_len, [z[i][1] for z in zones]).region(
                0, g.out_len[0], 0, g.out_len[1]
            )
            full = full.expand(n, *full.shape[1:]).to(fast._dt(s, dtype))
            taps[i] = full.contiguous(memory_format=fmt)
    return {
        "geoms": geoms, "kinds": step_kinds, "inputs": inputs, "work": work, "taps": taps,
        "need": needs, "background_size": tuple(small),
    }  # fmt: skip
