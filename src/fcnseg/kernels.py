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
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = [
    "available", "conv_as_gemm", "conv_into", "linear", "winograd_conv", "winograd_plan",
    "winograd_tiles", "winograd_weight",
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
    out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, *, relu: bool
) -> torch.Tensor:
    """out = relu(conv2d(x, w, b)), stride 1, no padding, written into `out` (channels_last).

    (N, C, H, W) -> (N, O, H-kh+1, W-kw+1); `out` must have that shape, dense.
    """
    conv, _ = _ops()
    out.zero_()  # the op adds the conv to what `out` holds
    return conv(
        out, x, w, b, [0, 0], [1, 1], [1, 1], 1, "add", None,
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


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, *, relu: bool):
    """relu(x @ w^T + b): (L, K) x (O, K) -> (L, O)."""
    _, lin = _ops()
    return lin(x, w, b, "relu" if relu else "none", [], "")


# ---------------------------------------------------------------- Winograd F(2x2, 3x3)
# Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016). Each 2x2
# block of a 3x3 conv's output comes from a 4x4 tile of its input (tiles overlap by 2):
#     Y = A^T [ (G g G^T) * (B^T d B) ] A,
# 16 products per block where the direct conv makes 36: 2.25x fewer multiply-adds, spent as 16
# GEMMs (tiles x C_in) @ (C_in x C_out). The transforms B, A hold only 0 and +-1 (adds); G holds
# halves and is applied to the weights once, in float64. Rounding stays ~1e-7 relative in
# float32 (tests/test_kernels.py). It pays where the GEMMs are large next to the transforms'
# memory traffic (many channels, small maps: VGG16's conv4 and conv5 at 500x500).

_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def winograd_weight(w: torch.Tensor) -> torch.Tensor:
    """(O, C, 3, 3) -> U (16, C, O) = G g G^T per (o, c), the 4x4 components flattened."""
    G = torch.tensor(_G, dtype=torch.float64, device=w.device)
    U = torch.einsum("ai,ocij,bj->abco", G, w.double(), G)  # (4, 4, C, O)
    return U.reshape(16, w.shape[1], w.shape[0]).to(w.dtype).contiguous()


def winograd_tiles(out_h: int, out_w: int) -> tuple[int, int]:
    """Tile rows and columns for an output of out_h x out_w: the input must be 2t+2 each way."""
    return (out_h + 1) // 2, (out_w + 1) // 2


def winograd_plan(
    n: int, th: int, tw: int, c: int, o: int, budget: int = 1 << 22
) -> dict[str, int | tuple]:
    """How a layer's tiles are processed: in bands of `band` tile rows, so that the transformed
    input and the GEMMs' results (16 values a tile and channel) stay under `budget` elements
    (16 MB in float32) however large the image; and the elements each work arena needs.

    Arena "a" holds a band's input rows after B^T, then its GEMM results; "b" the band's
    B^T d B, then A^T applied along H; "y" the whole output (N, th, 2, tw, 2, O).
    """
    band = max(1, min(th, budget // (16 * n * tw * max(c, o))))
    return {
        "shape": (n, th, tw, c, o),
        "band": band,
        "a": max(4 * n * band * (2 * tw + 2) * c, 16 * n * band * tw * o),
        "b": max(16 * n * band * tw * c, 8 * n * band * tw * o),
        "y": n * th * tw * 4 * o,
    }


def winograd_conv(
    x: torch.Tensor,
    U: torch.Tensor,
    b: torch.Tensor | None,
    plan: dict,
    arenas: dict[str, torch.Tensor],
    out_hw: tuple[int, int],
    *,
    relu: bool,
) -> torch.Tensor:
    """relu(conv2d(x, w, b)) for a 3x3 kernel, stride 1, no padding, by F(2x2, 3x3).

    x: (N, C, 2*th+2, 2*tw+2) channels_last (zeros past the real input); U: winograd_weight(w);
    plan: winograd_plan(...); arenas: flat tensors "a", "b", "y" of at least the plan's sizes,
    kept by the caller across calls (re-faulting ~100 MB a call costs more than the work) and
    shared by layers (a layer's buffers are dead once its output has been read). Returns the
    (N, O, out_h, out_w) output as a channels_last view into arenas["y"].
    """
    n, th, tw, c, o = plan["shape"]
    A, B = arenas["a"], arenas["b"]
    Y = arenas["y"][: n * th * tw * 4 * o].view(n, th, 2, tw, 2, o)  # output blocks, interleaved
    xh = x.permute(0, 2, 3, 1)  # (N, H, W, C), contiguous
    for t0 in range(0, th, plan["band"]):
        tb = min(plan["band"], th - t0)
        rows = A[: 4 * n * tb * (2 * tw + 2) * c].view(4, n, tb, 2 * tw + 2, c)
        d = [xh[:, 2 * t0 + k : 2 * t0 + k + 2 * tb : 2] for k in range(4)]  # (N, tb, W, C)
        torch.sub(d[0], d[2], out=rows[0])  # B^T = [[1,0,-1,0], [0,1,1,0], [0,-1,1,0], [0,1,0,-1]]
        torch.add(d[1], d[2], out=rows[1])
        torch.sub(d[2], d[1], out=rows[2])
        torch.sub(d[1], d[3], out=rows[3])
        V = B[: 16 * n * tb * tw * c].view(4, 4, n, tb, tw, c)  # B^T d B
        e = [rows[:, :, :, k : k + 2 * tw : 2] for k in range(4)]  # (4, N, tb, tw, C)
        torch.sub(e[0], e[2], out=V[:, 0])
        torch.add(e[1], e[2], out=V[:, 1])
        torch.sub(e[2], e[1], out=V[:, 2])
        torch.sub(e[1], e[3], out=V[:, 3])
        M = A[: 16 * n * tb * tw * o].view(16, n * tb * tw, o)  # `rows` is dead
        torch.bmm(V.view(16, -1, c), U, out=M)  # (16, tiles, C) @ (16, C, O)
        m = M.view(4, 4, n, tb, tw, o)
        if b is not None:
            m[1, 1] += b  # A^T's column 1 is all ones: component (1, 1) reaches all 4 outputs
        S = B[: 8 * n * tb * tw * o].view(2, 4, n, tb, tw, o)  # `V` is dead
        torch.add(m[0], m[1], out=S[0])  # A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
        S[0] += m[2]
        torch.sub(m[1], m[2], out=S[1])
        S[1] -= m[3]
        Yb = Y[:, t0 : t0 + tb]
        Yp = Yb.permute(2, 4, 0, 1, 3, 5)  # (2 rows, 2 cols, N, tb, tw, O)
        torch.add(S[:, 0], S[:, 1], out=Yp[:, 0])
        Yp[:, 0] += S[:, 2]
        torch.sub(S[:, 1], S[:, 2], out=Yp[:, 1])
        Yp[:, 1] -= S[:, 3]
        if relu:
            Yb.relu_()
    oh, ow = out_hw
    return Y.view(n, 2 * th, 2 * tw, o)[:, :oh, :ow].permute(0, 3, 1, 2)
