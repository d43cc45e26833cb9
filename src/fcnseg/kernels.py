"""CPU kernels for FastFCN: oneDNN's fused conv and linear ops, reached through torch.

PyTorch ships oneDNN ops with fused post-ops (the ones torch.compile's CPU backend emits):
- ``mkldnn._convolution_pointwise_.binary``: conv(x) + bias + `out`, then ReLU, written in place
  into `out`. A persistent, already-faulted output buffer saves the page faults a fresh 50-60 MB
  activation costs on every call (glibc maps and unmaps blocks that large each time): conv1_1
  at 500x500 29 -> 8 ms, conv1_2 105 -> 87 ms on this 2-core machine.
- ``mkldnn._linear_pointwise``: x @ W^T + bias, then ReLU. For fc6 (256 x 25088 @ 25088 x 4096
  at 500x500) it runs at ~210 GFLOP/s where torch.matmul (MKL) gives ~150.

Both are private ops; `available` checks once, on tiny tensors, that they exist and give the
same numbers as F.conv2d / F.linear, and callers fall back to those when they do not (float64,
CUDA, a torch built without oneDNN, or a future torch that renames them).

Winograd F(2x2, 3x3) and F(4x4, 3x3) (`winograd_*`) live in fcnseg.winograd, re-exported here.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import winograd
from .winograd import (
    kernel_transform_grad,
    winograd_conv,
    winograd_plan,
    winograd_tiles,
    winograd_weight,
    winograd_weight_grad,
    winograd_work,
)

__all__ = [
    "available", "component_products", "conv_as_gemm", "conv_into", "kernel_transform",
    "kernel_transform_grad", "kernel_transform_rotated", "linear", "weight_products",
    "winograd_conv", "winograd_plan", "winograd_tiles", "winograd_weight", "winograd_weight_grad",
    "winograd_work",
]  # fmt: skip


def _ops():
    return torch.ops.mkldnn._convolution_pointwise_.binary, torch.ops.mkldnn._linear_pointwise


@functools.cache
def _ops_work() -> bool:
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 3, 6, 7, generator=g).contiguous(memory_format=torch.channels_last)
        w = torch.randn(4, 3, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
        b = torch.randn(4, generator=g)
        out = torch.zeros(1, 4, 4, 5).contiguous(memory_format=torch.channels_last)
        conv_ok = torch.allclose(
            conv_into(out, x, w, b, relu=True), F.conv2d(x, w, b).relu(), atol=1e-5
        )
        a, m = torch.randn(5, 8, generator=g), torch.randn(3, 8, generator=g)
        lin_ok = torch.allclose(linear(a, m, b[:3], relu=True), F.linear(a, m, b[:3]).relu())
        return bool(conv_ok and lin_ok)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def available(x: torch.Tensor) -> bool:
    """Whether the fused oneDNN ops can run on tensors like `x` (CPU, float32 or bfloat16)."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and _ops_work()


def conv_into(
    out: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    *,
    relu: bool,
    groups: int = 1,
) -> torch.Tensor:
    """out = relu(conv2d(x, w, b, groups=groups)), stride 1, no padding, written into `out`
    (channels_last).

    (N, C, H, W) -> (N, O, H-kh+1, W-kw+1); `out` must have that shape, dense.
    """
    conv, _ = _ops()
    out.zero_()  # the op adds the conv to what `out` holds
    return conv(
        out, x, w, b, [0, 0], [1, 1], [1, 1], groups, "add", None,
        "relu" if relu else None, [], "" if relu else None,
    )  # fmt: skip


def conv_as_gemm(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    *,
    relu: bool = False,
    weight_t: torch.Tensor | None = None,
) -> torch.Tensor:
    """conv2d(x, w, b) (stride 1, no padding), then ReLU, as im2col + one GEMM.

    What a convolutionalized fully connected layer is: the classifier's matrix applied to every
    window at once. On the small maps fc6/fc7 see (AlexNet fc6, 6x6 on 14x14 at 500x500) this
    runs ~3x faster than the direct conv kernels. (N, C, H, W) -> (N, O, H-kh+1, W-kw+1), as a
    channels_last view. weight_t: a contiguous (C*kh*kw, O) copy of w, for the fallback GEMM
    (MKL runs (L, K) @ (K, O) ~1.4x faster than with the (O, K) weight transposed).
    """
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    cols = x if kh == kw == 1 else F.unfold(x, (kh, kw))  # (N, C*kh*kw, oh*ow)
    cols = cols.reshape(n, c * kh * kw, oh * ow).transpose(1, 2)  # (N, L, K)
    grad = torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)
    if available(x) and not grad:  # oneDNN: ~1.4x MKL's GEMM here, ReLU fused
        y = linear(cols.reshape(n * oh * ow, -1), w.reshape(o, -1), b, relu=relu)
    else:
        y = torch.matmul(cols, w.reshape(o, -1).t() if weight_t is None else weight_t)
        if b is not None:
            y = y + b
        if relu:
            y = y.relu()
    return y.reshape(n, oh, ow, o).permute(0, 3, 1, 2)  # (N, L, O) is already NHWC


def component_products(u: torch.Tensor):
    """Winograd's a*a GEMMs by oneDNN, for winograd_conv's `products`: u (a*a, C, O), the
    transformed weight. Each component's (tiles, C) @ (C, O) runs as one oneDNN linear, its
    weight U[k]^T a transposed view (oneDNN reads it as it lies: faster than a contiguous
    (O, C) copy at 128-256 channels); the a*a results are handed on as they are (the output
    transform reads them: stacking them into one tensor was one more pass, ~5% of the conv).
    AMD Zen 4, 2 threads: 1.5-2.0x MKL's batched GEMM (torch.bmm) at 128-512 channels
    (benchmarks/RESULTS.md)."""

    def products(v: torch.Tensor) -> list[torch.Tensor]:
        return [linear(v[k], u[k].t(), None, relu=False) for k in range(len(u))]

    return products


@functools.cache
def _kernel_matrix(m: int, points, flipped: bool) -> torch.Tensor:
    """G (x) G, (a*a, 9): U's component (i, j) of tap (r, s) is G[i][r] G[j][s] (products of
    the exact fractions, rounded once); `flipped`: taps in reverse order (the kernel rotated
    by 180 degrees)."""
    G = winograd.transforms(m, points)[1]
    rows = [[G[i][r] * G[j][s] for r in range(3) for s in range(3)]
            for i in range(m + 2) for j in range(m + 2)]  # fmt: skip
    return torch.tensor([[float(v) for v in (r[::-1] if flipped else r)] for r in rows])


def _by_gemm(w: torch.Tensor) -> bool:
    return w.dtype == torch.float32 and available(w)


def kernel_transform(w: torch.Tensor, *, m: int = 2, points: tuple | None = None) -> torch.Tensor:
    """U = G w G^T per (c, o): (O, C, 3, 3) -> (a*a, C, O), in w's dtype (training: every
    step). float32 on CPU: one oneDNN GEMM (a*a x 9) @ (9 x C*O) on a transposed copy of w,
    2-3x faster than fcnseg.winograd's elementwise ops (its float64 path elsewhere)."""
    if not _by_gemm(w):
        return winograd.kernel_transform(w, m=m, points=points)
    o, c = w.shape[:2]
    taps = w.permute(1, 0, 2, 3).reshape(c * o, 9)  # rows (c, o)
    return linear(_kernel_matrix(m, points, False), taps, None, relu=False).view(-1, c, o)


def kernel_transform_rotated(w: torch.Tensor, *, m: int = 2, points: tuple | None = None):
    """kernel_transform(w.flip(2, 3).transpose(0, 1)), the input gradient's kernel: (a*a, O,
    C). float32 on CPU: one oneDNN GEMM on w as it lies (its rows (o, c) are the rotated
    kernel's (c', o'); the rotation reverses the taps, folded into the matrix)."""
    if not _by_gemm(w):
        return winograd.kernel_transform(w.flip(2, 3).transpose(0, 1), m=m, points=points)
    o, c = w.shape[:2]
    taps = w.reshape(o * c, 9)
    return linear(_kernel_matrix(m, points, True), taps, None, relu=False).view(-1, o, c)


def weight_products(buffer: torch.Tensor):
    """Winograd's weight-gradient GEMMs by oneDNN, for winograd_weight_grad's `products`:
    dU[k] (=, or +=) V[k]^T @ z[k]. V's band is first copied transposed, (a*a, C, tiles), into
    `buffer` (at least V's size): oneDNN reads a contiguous V^T with z[k]^T as a transposed
    view ~1.5x faster than either as views, and than MKL's batched GEMM at 256-512 channels
    on AMD Zen 5 (at 128: no faster; the tuner measures which). A band after the first is
    added to dU by one more pass (oneDNN's linear has no accumulating form here)."""

    def products(v: torch.Tensor, z: torch.Tensor, out: torch.Tensor, first: bool) -> None:
        k, tiles, c = v.shape
        vt = buffer[: v.numel()].view(k, c, tiles)
        vt.copy_(v.transpose(1, 2))
        parts = [linear(vt[i], z[i].t(), None, relu=False) for i in range(k)]
        if first:
            torch.stack(parts, out=out)
        else:
            out.add_(torch.stack(parts))

    return products


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, *, relu: bool):
    """relu(x @ w^T + b): (L, K) x (O, K) -> (L, O)."""
    _, lin = _ops()
    return lin(x, w, b, "relu" if relu else "none", [], "")
