"""FastTrainFCN's CPU kernels with their own backward: Winograd 3x3 convs and fc6/fc7 GEMMs.

Autograd through F.conv2d runs oneDNN's direct kernels three times per conv (output, input
gradient, weight gradient). Two of the three are 3x3 correlations with stride 1 that Winograd
F(2x2, 3x3) computes with 2.25x fewer multiply-adds (fcnseg.kernels):

* forward   y = relu(x * w + b)                      (N, C, h, w)  -> (N, O, h-2, w-2)
* input grad dx = g_pad2 * rot180(w)^T               (N, O, h+2, w+2) -> (N, C, h, w)
  (the "full" correlation of the output gradient with the flipped, transposed kernel)
* weight grad dw, db: oneDNN's own (torch's convolution_backward with only those outputs)

fc6 / fc7 as im2col + GEMM (FastTrainFCN's gemm_fc): the forward by oneDNN's linear with the
ReLU fused, the input gradient g @ W by oneDNN's linear too, the weight gradient g^T @ cols by
torch.mm (oneDNN was no faster there). On AMD Zen 4, 2 threads, FCN-8s at 500x500 (profile):
fc6's forward + input gradient 0.70 s by MKL, fc6 and fc7's together 0.61 s by oneDNN: ~0.1 s
of a ~4.8 s step, within the step's run-to-run noise.

Exactness: the same function; Winograd's transforms add float rounding of the direct convs'
size (~5e-7 relative in float32, measured on every VGG16 conv shape at 500x500; float64 1e-15:
tests/test_fast_train.py). Used only where it applies: CPU, float32 or float64, no autocast,
3x3 stride-1 convs with at least FastTrainFCN's `winograd` input channels (64: conv1_1, with
3, is memory-bound). Elsewhere FastTrainFCN uses F.conv2d / F.linear, CUDA included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import kernels

__all__ = ["Scratch", "fc_gemm", "gemm_applies", "layout_of", "runs_on", "winograd_applies",
           "winograd_conv3x3"]  # fmt: skip


def layout_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last for an NHWC tensor (one that is not also plain contiguous), else NCHW."""
    cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl and not x.is_contiguous() else torch.contiguous_format


def runs_on(x: torch.Tensor) -> bool:
    """Whether these kernels run on tensors like `x`: CPU, float32/64, no autocast."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled("cpu")
    )


def winograd_applies(x: torch.Tensor, w: torch.Tensor, stride, padding, groups: int) -> bool:
    """Whether winograd_conv3x3 computes this conv (input `x`, weight `w`)."""
    p = tuple(padding)
    return (
        runs_on(x)
        and w.dtype == x.dtype
        and tuple(w.shape[2:]) == (3, 3)
        and tuple(stride) == (1, 1)
        and p[0] == p[1] <= 2
        and groups == 1
        and min(x.shape[2:]) + 2 * p[0] >= 3
    )


def gemm_applies(cols: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether fc_gemm runs oneDNN's linear (else it is F.linear)."""
    return cols.dtype == w.dtype == torch.float32 and runs_on(cols) and kernels.available(cols)


def _transform(w: torch.Tensor) -> torch.Tensor:
    """(O, C, 3, 3) -> (16, C, O): G w G^T in w's dtype (kernels.winograd_weight's layout),
    G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]] applied along each axis by
    adds (an einsum ran it as a batch of (3 x 4) GEMMs: ~15 ms for 512 x 512 at every step)."""

    def rows(v):  # (3, ...) -> (4, ...): G @ v
        half = (v[0] + v[2]) * 0.5
        return torch.stack((v[0], half + 0.5 * v[1], half - 0.5 * v[1], v[2]))

    o, c = w.shape[:2]
    u = rows(w.permute(2, 3, 1, 0))  # (4, 3, C, O)
    return rows(u.transpose(0, 1)).transpose(0, 1).reshape(16, c, o)


class Scratch:
    """Work buffers reused from call to call (one per FastTrainFCN: one step at a time): the
    Winograd arenas and the zero-padded inputs are dead once a conv has run, and a fresh
    16-65 MB buffer costs its page faults again on every call (~10 ms each at 500x500)."""

    def __init__(self):
        self._bufs: dict[tuple, torch.Tensor] = {}

    def get(self, key: str, numel: int, like: torch.Tensor) -> torch.Tensor:
        k = (key, like.dtype, like.device)
        buf = self._bufs.get(k)
        if buf is None or buf.numel() < numel:
            buf = self._bufs[k] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buf[:numel]


def _wino(x: torch.Tensor, U: torch.Tensor, b, out_hw, relu: bool, scratch: Scratch):
    """relu(x * w + b) by F(2x2, 3x3) for x already padded to (2t+2, 2t'+2), channels_last."""
    n, c = x.shape[:2]
    th, tw = kernels.winograd_tiles(*out_hw)
    plan = kernels.winograd_plan(n, th, tw, c, U.shape[2])
    arenas = {k: scratch.get(k, plan[k], x) for k in ("a", "b")}
    arenas["y"] = torch.empty(plan["y"], dtype=x.dtype, device=x.device)  # the output: kept
    return kernels.winograd_conv(x, U, b, plan, arenas, out_hw, relu=relu)


def _padded(x: torch.Tensor, out_hw, border: int, scratch: Scratch) -> torch.Tensor:
    """x with `border` zeros on every side, then zeros up to the tiles' 2t+2 rows and
    columns, channels_last (the Winograd kernel reads NHWC). The input gradient is the
    correlation of the output gradient padded by 2 - p with the rotated kernel."""
    th, tw = kernels.winograd_tiles(*out_hw)
    n, c, h, w = x.shape
    if not border and (h, w) == (2 * th + 2, 2 * tw + 2):
        return x.contiguous(memory_format=torch.channels_last)
    size = (n, 2 * th + 2, 2 * tw + 2, c)
    buf = scratch.get("pad", size[0] * size[1] * size[2] * size[3], x).view(size)
    buf.zero_()
    buf[:, border : border + h, border : border + w].copy_(x.permute(0, 2, 3, 1))
    return buf.permute(0, 3, 1, 2)


def _keep(ctx, relu: bool, b, *inputs: torch.Tensor, y: torch.Tensor) -> None:
    """Save what the backward needs: the inputs, and the output when a ReLU was fused."""
    ctx.relu, ctx.has_bias = relu, b is not None
    ctx.save_for_backward(*inputs, y if relu else None)


def _through_relu(ctx, g: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """The output gradient through the fused ReLU: zero where the output was clipped."""
    return g.masked_fill(y <= 0, 0) if ctx.relu else g


class _WinogradConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, pad: int, relu: bool, scratch: Scratch):
        oh, ow = x.shape[2] + 2 * pad - 2, x.shape[3] + 2 * pad - 2
        with torch.no_grad():
            y = _wino(_padded(x, (oh, ow), pad, scratch), _transform(w), b, (oh, ow), relu, scratch)
        ctx.pad, ctx.scratch = pad, scratch
        _keep(ctx, relu, b, x, w, y=y)
        return y

    @staticmethod
    def backward(ctx, g):
        x, w, y = ctx.saved_tensors
        g = _through_relu(ctx, g, y)
        g = g.contiguous(memory_format=layout_of(x))
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            U = _transform(w.flip(2, 3).transpose(0, 1))  # (C, O, 3, 3) rotated: (16, O, C)
            hw = tuple(x.shape[2:])
            gp = _padded(g, hw, 2 - ctx.pad, ctx.scratch)
            dx = _wino(gp, U, None, hw, False, ctx.scratch)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            p = [ctx.pad, ctx.pad]
            _, dw, db = torch.ops.aten.convolution_backward(
                g, x, w, [w.shape[0]] if ctx.has_bias else None, [1, 1], p, [1, 1],
                False, [0, 0], 1, [False, ctx.needs_input_grad[1], ctx.needs_input_grad[2]],
            )  # fmt: skip
        return dx, dw, db, None, None, None


def winograd_conv3x3(x, w, b, padding: int = 0, *, relu: bool, scratch: Scratch | None = None):
    """relu(conv2d(x, w, b, padding=padding)) (3x3, stride 1) with Winograd forward and input
    gradient: (N, C, h, w) -> (N, O, h+2p-2, w+2p-2), a channels_last view. `scratch`: the
    caller's reused work buffers (a new set when None)."""
    return _WinogradConv.apply(x, w, b, padding, relu, scratch or Scratch())


class _GemmFC(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cols, w2, b, relu: bool):
        y = kernels.linear(cols, w2, b, relu=relu)
        _keep(ctx, relu, b, cols, w2, y=y)
        return y

    @staticmethod
    def backward(ctx, g):
        cols, w2, y = ctx.saved_tensors
        g = _through_relu(ctx, g, y)
        dcols = dw = db = None
        if ctx.needs_input_grad[0]:  # (L, O) @ (O, K): oneDNN's linear with W^T as a view
            dcols = kernels.linear(g, w2.t(), None, relu=False)
        if ctx.needs_input_grad[1]:
            dw = g.t().mm(cols)
        if ctx.needs_input_grad[2]:
            db = g.sum(0)
        return dcols, dw, db, None


def fc_gemm(cols: torch.Tensor, w2: torch.Tensor, b, *, relu: bool) -> torch.Tensor:
    """relu(cols @ w2^T + b): (L, K) x (O, K) -> (L, O), oneDNN forward and input gradient
    where gemm_applies, else F.linear."""
    if gemm_applies(cols, w2):
        return _GemmFC.apply(cols, w2, b, relu)
    y = F.linear(cols, w2, b)
    return torch.relu_(y) if relu else y
