"""The trunk of an FCN as a list of steps, and the geometry FastFCN plans with.

Per step and axis: map lengths, the "core" (positions whose receptive field touches the
image), the input window a step reads to produce its core, and the edge zones of the
background (the activations of a black image), which let the background be computed on a
smaller black image with the same edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .. import kernels
from ..models.fcn import FCN

# kernel kind -> output tile size m of F(m x m, 3x3); "winograd4dnnl" is F(4x4) with its a*a
# products by oneDNN's GEMM, one per component (MKL's batched GEMM for the others)
WINOGRAD = {"winograd4": 4, "winograd4dnnl": 4, "winograd": 2}
ONEDNN_PRODUCTS = ("winograd4dnnl",)

__all__ = [
    "ONEDNN_PRODUCTS", "WINOGRAD", "Geom", "Step", "Stream", "core_interval", "geometry",
    "lengths", "out_len", "pair", "parse_trunk", "small_length", "step_dtypes", "window_of",
    "winograd_work", "zones",
]  # fmt: skip


def core_interval(
    core: tuple[int, int], length: int, kernel: int, stride: int, padding: int, out_len: int
) -> tuple[int, int]:
    """Output positions [a, b) of a conv/pool whose window touches input positions `core`."""
    a, b = core
    lo = max(0, -(-(a + padding - kernel + 1) // stride))
    hi = min(out_len, (b - 1 + padding) // stride + 1)
    return lo, hi


def out_len(length: int, kernel: int, stride: int, padding: int, ceil: bool) -> int:
    span = length + 2 * padding - kernel
    n = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (n - 1) * stride >= length + padding:  # PyTorch's rule: last window starts inside
        n -= 1
    return n


@dataclass
class Step:
    """One conv (with its ReLU fused), max pool or local response norm of the trunk."""

    name: str  # the name of the last module it covers (e.g. "relu1_1", "pool1")
    layer: nn.Module
    kind: str  # "conv" | "pool" | "lrn"
    relu: bool = False
    modules: tuple[str, ...] = ()


@dataclass
class Stream:
    """One input stream's trunk: its steps, the steps whose outputs the heads read (step index
    -> feature name: the skips' taps and the trunk's last layer) and its input channels."""

    name: str  # "" for a one-stream net; "color", "hha" for NYUDv2's late fusion
    steps: list[Step]
    taps: dict[int, str]
    in_channels: int


@dataclass
class Geom:
    """Per axis: input length and core, output length and core, the input window to read."""

    in_len: tuple[int, int]
    in_core: tuple[tuple[int, int], tuple[int, int]]
    out_len: tuple[int, int]
    out_core: tuple[tuple[int, int], tuple[int, int]]
    window: tuple[tuple[int, int], tuple[int, int]]  # input coords [lo, hi), may pass the edges

    @property
    def direct(self) -> bool:
        """Input and output are all core: run the layer on the whole map, its own padding."""
        whole_in = all(c == (0, n) for c, n in zip(self.in_core, self.in_len, strict=True))
        whole_out = all(c == (0, n) for c, n in zip(self.out_core, self.out_len, strict=True))
        return whole_in and whole_out


def parse_trunk(
    model: FCN, names: Sequence[str] | None = None, *, lrn: bool = False, groups: bool = False
) -> list[Step]:
    """The steps of the trunk layers `names` (default: all of the model's trunk layers, in
    order). `lrn`: accept LocalResponseNorm (CaffeNet's norm1/norm2) as a step of its own;
    `groups`: accept grouped convs (CaffeNet's conv2/4/5). Callers that cannot run those
    leave them False and get the refusal."""
    steps: list[Step] = []
    for name in model.trunk_names if names is None else names:
        layer = getattr(model, name)
        if isinstance(layer, nn.Conv2d):
            grouped = layer.groups != 1 and not groups
            if grouped or layer.dilation != (1, 1) or layer.padding_mode != "zeros":
                raise ValueError(f"FastFCN: unsupported conv {name}: {layer}")
            steps.append(Step(name, layer, "conv", modules=(name,)))
        elif isinstance(layer, nn.MaxPool2d):
            if layer.padding not in (0, (0, 0)) or layer.dilation not in (1, (1, 1)):
                raise ValueError(f"FastFCN: unsupported pool {name}: {layer}")
            steps.append(Step(name, layer, "pool", modules=(name,)))
        elif isinstance(layer, nn.LocalResponseNorm) and lrn:
            steps.append(Step(name, layer, "lrn", modules=(name,)))
        elif isinstance(layer, nn.ReLU) and steps and steps[-1].kind == "conv":
            if steps[-1].relu:
                raise ValueError(f"FastFCN: two ReLUs in a row at {name}")
            steps[-1].relu = True
            steps[-1].modules += (name,)
            steps[-1].name = name
        elif isinstance(layer, nn.Dropout) and steps:  # identity in eval mode
            steps[-1].modules += (name,)
            steps[-1].name = name
        else:
            raise ValueError(
                f"FastFCN handles plain conv/ReLU/pool trunks (VGG16, AlexNet"
                f"{', CaffeNet' if lrn else ''}); {name} is {type(layer).__name__}"
            )
    return steps


def window_of(s: Step, axis: int) -> tuple[int, int, int]:
    """(kernel, stride, padding) of step `s` along `axis`. LRN normalizes across channels at
    each position: spatially a 1x1 window (its core is its input's, it reads no padding)."""
    if s.kind == "lrn":
        return 1, 1, 0
    layer = s.layer
    return (pair(layer.kernel_size)[axis], pair(layer.stride)[axis], pair(layer.padding)[axis])


def pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def geometry(steps: list[Step], H: int, W: int) -> list[Geom]:
    """Per step: lengths, image-dependent cores and the input window each step reads."""
    geoms = []
    length, core = (H, W), ((0, H), (0, W))
    for s in steps:
        k, st, p = zip(window_of(s, 0), window_of(s, 1), strict=True)
        ceil = s.kind == "pool" and s.layer.ceil_mode
        out = tuple(out_len(length[a], k[a], st[a], p[a], ceil) for a in (0, 1))
        out_core = tuple(
            core_interval(core[a], length[a], k[a], st[a], p[a], out[a]) for a in (0, 1)
        )
        window = []
        for a in (0, 1):
            lo = out_core[a][0] * st[a] - p[a]
            hi = (out_core[a][1] - 1) * st[a] - p[a] + k[a]
            if s.kind == "pool":  # ceil mode: the last window may stop at the map's end
                hi = min(hi, length[a])
            window.append((lo, hi))
        geoms.append(Geom(length, core, out, out_core, tuple(window)))
        length, core = out, out_core
    return geoms


Zones = list[tuple[tuple[int, int], tuple[int, int]]]


def zones(steps: list[Step], length: int, axis: int) -> Zones:
    """Per step along one axis: the edge zones (top, bottom) of its input and its output:
    the positions whose background differs from the map's constant interior because they
    read, directly or through earlier layers, the zero padding or a partial pool window.
    The black input itself equals its padding, so the first step has no zones."""
    found, zl, zr, uniform_zero = [], 0, 0, True
    for s in steps:
        k, st, p = window_of(s, axis)
        ceil = s.kind == "pool" and s.layer.ceil_mode
        out = out_len(length, k, st, p, ceil)
        if uniform_zero and s.kind == "conv":  # zeros everywhere, padding included
            ol, orr = 0, 0
        else:
            ol = min(out, -(-(zl + p) // st))  # windows that start in the top zone
            first = -(-(length - zr + p - k + 1) // st)  # first window reaching the bottom
            orr = out - min(out, max(0, first))
        found.append(((zl, zr), (ol, orr)))
        zl, zr, length = ol, orr, out
        uniform_zero = uniform_zero and s.kind in ("pool", "lrn")  # they keep zeros zero
    return found


def small_length(steps: list[Step], length: int, axis: int, period: int = 32) -> int:
    """The shortest input length, length - k * period, whose background maps are the
    large ones with a shorter interior: at every step the input lengths differ by a multiple
    of the stride (the windows meet the bottom edge the same way) and the zones match and
    leave an interior. `length` itself if there is none."""
    big = zones(steps, length, axis)
    big_len = lengths(steps, length, axis)
    strides = [window_of(s, axis)[1] for s in steps]
    for cand in range(length % period or period, length, period):
        lens = lengths(steps, cand, axis)
        aligned = all((b - c) % st == 0 for b, c, st in zip(big_len, lens, strides, strict=True))
        small = zones(steps, cand, axis)
        outs = [*lens[1:], None]
        room = all(
            zl + zr < L and (Lo is None or ol + orr < Lo)
            for ((zl, zr), (ol, orr)), L, Lo in zip(small, lens, outs, strict=True)
        )
        if aligned and room and small == big:
            return cand
    return length


def lengths(steps: list[Step], length: int, axis: int) -> list[int]:
    """Each step's input length along one axis."""
    out = []
    for s in steps:
        out.append(length)
        k, st, p = window_of(s, axis)
        length = out_len(length, k, st, p, s.kind == "pool" and s.layer.ceil_mode)
    return out


def step_dtypes(steps: list[Step], dtype: torch.dtype | None, fp32: tuple[str, ...]) -> dict:
    """Per step name: the dtype it runs in (None: the input's). In a bf16 trunk (dtype
    bfloat16) the convs named in `fp32` (e.g. "conv1_1") run in float32; a pool runs in the
    dtype of the conv before it."""
    convs = [s.modules[0] for s in steps if s.kind == "conv"]
    unknown = sorted(set(fp32) - set(convs))
    if unknown or (fp32 and dtype != torch.bfloat16):
        why = f"unknown {unknown}; the convs are {convs}" if unknown else "pass bfloat16=True"
        raise ValueError(
            f"FastFCN(fp32={tuple(fp32)}) names convs kept in float32 in a bf16 trunk: {why}"
        )
    found, dt = {}, dtype
    for s in steps:
        if s.kind == "conv" and dtype is not None:
            dt = torch.float32 if s.modules[0] in fp32 else dtype
        found[s.name] = dt
    return found


def winograd_work(kind: str, n: int, out_hw: tuple[int, int], c: int, o: int):
    """For a Winograd step (`kind` in WINOGRAD): the input buffer's (h, w), m*t+2 rows and
    columns (zeros past the real input), and its kernels.winograd_plan."""
    return kernels.winograd_work(n, out_hw, c, o, m=WINOGRAD[kind])
