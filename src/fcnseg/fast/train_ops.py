"""FastTrainFCN's CPU kernels with their own backward: Winograd 3x3 convs and fc6/fc7 GEMMs.

Autograd through F.conv2d runs oneDNN's direct kernels three times per conv (output, input
gradient, weight gradient). All three are 3x3 correlations that Winograd F(m x m, 3x3)
computes with fewer multiply-adds (fcnseg.winograd; 4x fewer for F(4x4), FastTrainFCN's):

* forward    y = relu(x * w + b)                      (N, C, h, w)  -> (N, O, h-2, w-2)
* input grad dx = g_pad2 * rot180(w)^T                (N, O, h+2, w+2) -> (N, C, h, w)
  (the "full" correlation of the output gradient with the flipped, transposed kernel)
* weight grad dw = G^T [sum over tiles of (B^T d B) * (A g A^T)] G  (winograd_weight_grad:
  the chain rule through the forward's own factorisation; B^T d B is the forward's, kept per
  band), db = g summed; or (wgrad=False) oneDNN's (torch's convolution_backward)

Each family of GEMMs (forward and input gradient: (tiles, C) @ (C, O) per component; weight
gradient: V^T @ z) runs on MKL's batched GEMM or on oneDNN's, per shape whichever measured
faster here (on AMD, oneDNN's at 256-512 channels: MKL runs ~190 GFLOP/s there). The output
gradient goes through the ReLU in the same pass that copies it into the padded buffer the
input gradient reads, and the weight gradient reads the same buffer.

fc6 / fc7 as im2col + GEMM (FastTrainFCN's gemm_fc): the forward by oneDNN's linear with the
ReLU fused, the input gradient g @ W and the weight gradient g^T @ cols by oneDNN's linear too
(the other operand a transposed view). On AMD Zen 4, 2 threads, FCN-8s at 500x500: fc6's
forward + input gradient 0.70 s by MKL, 0.61 s by oneDNN; its weight gradient (4096 x 256 @
256 x 25088) 0.41-0.44 s by oneDNN, 0.55-0.58 by torch.mm (whole step, 7 interleaved repeats:
4.37 vs 4.44 s medians).

Exactness: the same function (float64: 1e-12, tests/test_train_ops.py, test_fast_train.py);
in float32 the transforms round differently: F(2x2) ~2x the direct conv's error, F(4x4) ~12x
for the output and input gradient (its transforms' coefficients reach 5 and 16/15) and ~2x
for the weight gradient. Used only where it applies: CPU, float32 or float64, no autocast, 3x3
stride 1, padding <= 2. Elsewhere FastTrainFCN uses F.conv2d / F.linear, CUDA included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import cachefile, kernels
from . import tuning

__all__ = ["Scratch", "conv_gemm", "direct_conv", "fc_gemm", "gemm_applies", "layout_of",
           "runs_on", "winograd_applies", "winograd_conv3x3"]  # fmt: skip


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

    def arenas(self, plan: dict, like: torch.Tensor, keys: str = "ab") -> dict[str, torch.Tensor]:
        return {k: self.get(k, plan[k], like) for k in keys}


def _wino(x: torch.Tensor, U: torch.Tensor, b, plan: dict, out_hw, relu: bool, scratch: Scratch,
          keep_tiles: list | None = None):  # fmt: skip
    """relu(x * w + b) by F(m x m, 3x3) for x already padded to the plan's (m*t+2, m*t'+2),
    channels_last (keep_tiles: winograd_conv's)."""
    arenas = scratch.arenas(plan, x)
    arenas["y"] = torch.empty(plan["y"], dtype=x.dtype, device=x.device)  # the output: kept
    return kernels.winograd_conv(x, U, b, plan, arenas, out_hw, relu=relu,
                                 products=_products(U, plan), keep_tiles=keep_tiles)  # fmt: skip


def _products(U: torch.Tensor, plan: dict):
    """Winograd's a*a GEMMs for a band of this plan: MKL's batched GEMM (None) or oneDNN's one
    per component (kernels.component_products), whichever measured faster on this machine
    for these shapes (_gemm_choice)."""
    n, _, tw, c, o = plan["shape"]
    tiles = n * plan["band"] * tw

    def trial(name: str):
        v = torch.randn(len(U), tiles, c, dtype=U.dtype)
        u, out = torch.randn_like(U), torch.empty(len(U), tiles, o, dtype=U.dtype)
        if name == "bmm":
            return lambda: torch.bmm(v, u, out=out)
        return lambda: kernels.component_products(u)(v)

    if _gemm_choice("winograd products", U, len(U), tiles, c, o, trial) == "bmm":
        return None
    return kernels.component_products(U)


def _weight_products(x: torch.Tensor, plan: dict, scratch: Scratch):
    """The weight gradient's a*a GEMMs V[k]^T @ z[k] for a band of this plan: MKL's batched
    GEMM on V's transposed view (None) or oneDNN's on a transposed copy of V
    (kernels.weight_products), whichever measured faster here for these shapes."""
    n, _, tw, c, o = plan["shape"]
    tiles, k = n * plan["band"] * tw, (plan["m"] + 2) ** 2

    def trial(name: str):
        v, z = torch.randn(k, tiles, c, dtype=x.dtype), torch.randn(k, tiles, o, dtype=x.dtype)
        out = torch.empty(k, c, o, dtype=x.dtype)
        if name == "bmm":
            return lambda: torch.bmm(v.transpose(1, 2), z, out=out)
        products = kernels.weight_products(torch.empty(v.numel(), dtype=x.dtype))
        return lambda: products(v, z, out, True)

    if _gemm_choice("winograd weight products", x, k, tiles, c, o, trial) == "bmm":
        return None
    return kernels.weight_products(scratch.get("t", k * tiles * c, x))


_chosen: dict[tuple, str] = {}  # choices made on a quiet machine, per process


def _gemm_choice(kind: str, like: torch.Tensor, k: int, tiles: int, c: int, o: int, trial):
    """MKL's ("bmm") or oneDNN's ("onednn") GEMMs for one shape of Winograd's, measured once
    by fcnseg.fast.tuning (cached in its file); a choice made while quiet is kept for the
    process (no key built, no load read on each of a step's ~30 calls)."""
    if not kernels.available(like):
        return "bmm"
    short = (kind, like.dtype, k, tiles, c, o, torch.get_num_threads())
    if short in _chosen:
        return _chosen[short]
    key = tuning.layer_key(kind=kind, dtype=str(like.dtype), components=k, tiles=tiles,
                           in_channels=c, out_channels=o)  # fmt: skip
    choice = tuning.choose(key, ["bmm", "onednn"], trial)
    if not cachefile.busy(cachefile.load_average()):
        _chosen[short] = choice
    return choice


def _padded(x: torch.Tensor, size, border: int, scratch: Scratch | None, key: str,
            relu_out: torch.Tensor | None = None):  # fmt: skip
    """x with `border` zeros on the top and left, then zeros up to `size` (h, w) rows and
    columns, channels_last (the Winograd kernels read NHWC), in scratch buffer `key` (None: a
    new tensor). relu_out: x is an output gradient to pass back through a ReLU whose output
    this is (zero where it was clipped), in the same pass as the copy."""
    n, c, h, w = x.shape
    if not border and (h, w) == tuple(size):
        if relu_out is not None:
            x = torch.ops.aten.threshold_backward(x, relu_out, 0)
        return x.contiguous(memory_format=torch.channels_last)
    shape = (n, *size, c)
    if scratch is None:
        buf = x.new_empty(shape)
    else:
        buf = scratch.get(key, shape[0] * shape[1] * shape[2] * shape[3], x).view(shape)
    bottom, right = border + h, border + w  # zeros around x: four strips
    buf[:, :border].zero_()
    buf[:, bottom:].zero_()
    buf[:, border:bottom, :border].zero_()
    buf[:, border:bottom, right:].zero_()
    inside = buf[:, border:bottom, border:right].permute(0, 3, 1, 2)
    inside.copy_(x)  # (an NCHW x: one transposing copy, fast; an op reading both layouts is not)
    if relu_out is not None:  # in place, one layout: ~20x faster than x's NCHW beside y's NHWC
        torch.ops.aten.threshold_backward.grad_input(inside, relu_out, 0, grad_input=inside)
    return buf.permute(0, 3, 1, 2)


def _bias_grad(g: torch.Tensor) -> torch.Tensor:
    """g (N, O, h, w) summed per channel, over its memory as it lies: an NHWC g as one dense
    (N*h*w, O) sum (its strided sum over (0, 2, 3) ran ~20x slower), NCHW over (0, 2, 3).
    oneDNN's bias gradient in convolution_backward took ~10 ms more for conv1_2 at 500x500."""
    if layout_of(g) == torch.channels_last:
        return g.permute(0, 2, 3, 1).reshape(-1, g.shape[1]).sum(0)
    return g.sum((0, 2, 3))


def _keep(ctx, relu: bool, *inputs: torch.Tensor, y: torch.Tensor) -> None:
    """Save what the backward needs: the inputs, and the output when a ReLU was fused."""
    ctx.relu = relu
    ctx.save_for_backward(*inputs, y if relu else None)


def _through_relu(ctx, g: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """The output gradient through the fused ReLU: zero where the output was clipped (one op,
    torch's own ReLU backward)."""
    return torch.ops.aten.threshold_backward(g, y, 0) if ctx.relu else g


class _WinogradConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, pad: int, relu: bool, m: int, wgrad: bool, scratch: Scratch):
        out_hw = (x.shape[2] + 2 * pad - 2, x.shape[3] + 2 * pad - 2)
        size, plan = kernels.winograd_work(x.shape[0], out_hw, x.shape[1], w.shape[0], m=m)
        # wgrad: the weight gradient reuses the forward's transformed input tiles (V, 2.25x
        # the input's size, kept until the backward: ~150 MB more at 500x500, FCN-8s) instead
        # of transforming the input again (~40 ms a step)
        ctx.tiles = [] if wgrad and ctx.needs_input_grad[1] else None
        with torch.no_grad():
            xp = _padded(x, size, pad, scratch, "pad")
            y = _wino(xp, kernels.kernel_transform(w, m=m), b, plan, out_hw, relu, scratch,
                      ctx.tiles)  # fmt: skip
        ctx.pad, ctx.m, ctx.wgrad, ctx.scratch = pad, m, wgrad, scratch
        ctx.x_shape = x.shape
        _keep(ctx, relu, None if wgrad else x, w, y=y)
        return y

    @staticmethod
    def backward(ctx, g):
        x, w, y = ctx.saved_tensors  # x: None when wgrad (the forward's tiles are kept)
        m, pad, scratch = ctx.m, ctx.pad, ctx.scratch
        relu_out = y if ctx.relu else None
        n, o, oh, ow = g.shape
        dx = dw = db = None
        gp = None  # the output gradient through the ReLU, zero-padded for the input gradient
        if ctx.needs_input_grad[0]:
            U = kernels.kernel_transform_rotated(w, m=m)  # (a*a, O, C)
            hw = tuple(ctx.x_shape[2:])
            size, plan = kernels.winograd_work(n, hw, o, w.shape[1], m=m)
            gp = _padded(g, size, 2 - pad, scratch, "pad", relu_out)
            dx = _wino(gp, U, None, plan, hw, False, scratch)
        if ctx.wgrad and ctx.needs_input_grad[1]:
            (h, wd), plan = kernels.winograd_work(n, (oh, ow), w.shape[1], o, m=m)
            # the tiles' output blocks, zeros past the output: inside the input gradient's
            # padded copy where it reaches that far (the same values), else a copy of their own
            top = 2 - pad
            if gp is not None and min(gp.shape[2] - h, gp.shape[3] - wd) >= top - 2:
                gw = gp[:, :, top : top + h - 2, top : top + wd - 2]
            else:
                gw = gp = _padded(g, (h - 2, wd - 2), 0, scratch, "pad", relu_out)
            dU = kernels.winograd_weight_grad(None, gw, plan, scratch.arenas(plan, g, "abz"),
                                              _weight_products(g, plan, scratch),
                                              ctx.tiles)  # fmt: skip
            dw = kernels.kernel_transform_grad(dU, m=m)
            if ctx.needs_input_grad[2]:  # summed over the whole padded copy, zeros included
                db = _bias_grad(gp)
        elif ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            g = _through_relu(ctx, g, y)
            if not ctx.wgrad and ctx.needs_input_grad[1]:
                g = g.contiguous(memory_format=layout_of(x))
                dw = torch.ops.aten.convolution_backward(
                    g, x, w, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
                    [False, True, False],
                )[1]  # fmt: skip
            if ctx.needs_input_grad[2]:
                db = _bias_grad(g)
        return dx, dw, db, None, None, None, None, None


def winograd_conv3x3(
    x, w, b, padding: int = 0, *, relu: bool, m: int = 4, wgrad: bool = True,
    scratch: Scratch | None = None,
):  # fmt: skip
    """relu(conv2d(x, w, b, padding=padding)) (3x3, stride 1) by Winograd F(m x m, 3x3) for the
    output and the input gradient, and for the weight gradient too when `wgrad` (else oneDNN's):
    (N, C, h, w) -> (N, O, h+2p-2, w+2p-2), a channels_last view. `scratch`: the caller's
    reused work buffers (a new set when None)."""
    return _WinogradConv.apply(x, w, b, padding, relu, m, wgrad, scratch or Scratch())


class _DirectConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, stride, padding, groups: int, relu: bool):
        y = F.conv2d(x, w, b, stride, padding, groups=groups)
        if relu:
            y = torch.relu_(y)
        ctx.conv = (list(stride), list(padding), groups)
        _keep(ctx, relu, x, w, y=y)
        return y

    @staticmethod
    def backward(ctx, g):
        x, w, y = ctx.saved_tensors
        g = _through_relu(ctx, g, y)
        stride, padding, groups = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dx = dw = None
        if need_x or need_w:  # oneDNN's (or torch's) kernels, without the bias gradient
            g = g.contiguous(memory_format=layout_of(x))
            dx, dw, _ = torch.ops.aten.convolution_backward(
                g, x, w, None, stride, padding, [1, 1], False, [0, 0], groups,
                [need_x, need_w, False],
            )  # fmt: skip
        return dx, dw, _bias_grad(g) if need_b else None, None, None, None, None


def direct_conv(x, w, b, stride, padding, *, groups: int = 1, relu: bool):
    """relu(conv2d(x, w, b)) by torch's kernels, its backward with the ReLU's and the bias's
    gradients by _bias_grad (dense) rather than inside oneDNN's convolution_backward (~15 ms a
    FastTrainFCN step at 500x500: conv1_1 - conv2_1). Where runs_on does not hold (CUDA,
    autocast, other dtypes): F.conv2d, autograd's."""
    if not (runs_on(x) and w.dtype == x.dtype and torch.is_grad_enabled()):
        y = F.conv2d(x, w, b, stride, padding, groups=groups)
        return torch.relu_(y) if relu else y
    return _DirectConv.apply(x, w, b, tuple(stride), tuple(padding), groups, relu)


class _GemmFC(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cols, w2, b, relu: bool):
        y = kernels.linear(cols, w2, b, relu=relu)
        _keep(ctx, relu, cols, w2, y=y)
        return y

    @staticmethod
    def backward(ctx, g):
        cols, w2, y = ctx.saved_tensors
        g = _through_relu(ctx, g, y)
        dcols = dw = db = None
        if ctx.needs_input_grad[0]:  # (L, O) @ (O, K): oneDNN's linear with W^T as a view
            dcols = kernels.linear(g, w2.t(), None, relu=False)
        if ctx.needs_input_grad[1]:  # (O, L) @ (L, K): oneDNN's linear, cols^T as the view
            dw = kernels.linear(g.t().contiguous(), cols.t(), None, relu=False)
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


def conv_gemm(x: torch.Tensor, w: torch.Tensor, b, padding, *, relu: bool) -> torch.Tensor:
    """conv2d (stride 1), then ReLU, as im2col + one GEMM (fc_gemm): (n, C, h, w)
    -> (n, O, oh, ow), laid out channels_last (a view of the GEMM's (n * oh * ow, O) output)."""
    n, kh, kw = x.shape[0], w.shape[2], w.shape[3]
    if padding != (0, 0):
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    oh, ow = x.shape[2] - kh + 1, x.shape[3] - kw + 1
    if kh * kw == 1:
        cols = x.permute(0, 2, 3, 1).reshape(n * oh * ow, -1)
        w2 = w.reshape(w.shape[0], -1)
    elif layout_of(w) == torch.channels_last:  # the weight's own order, (kh, kw, C):
        # a view of it, and its gradient laid out as it is (fc6's 411 MB weight in NCHW
        # order was a copy, its gradient another, every step)
        win = x.permute(0, 2, 3, 1).unfold(1, kh, 1).unfold(2, kw, 1)  # (n, oh, ow, C, kh, kw)
        cols = win.permute(0, 1, 2, 4, 5, 3).reshape(n * oh * ow, -1)
        w2 = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)
    else:  # contiguous: from an NHWC map a transposed view, which oneDNN's forward and weight
        # gradient GEMMs read ~24 ms slower a step than this 25 MB copy (fc6 at 500x500)
        cols = F.unfold(x, (kh, kw)).transpose(1, 2).reshape(n * oh * ow, -1).contiguous()
        w2 = w.reshape(w.shape[0], -1)
    y = fc_gemm(cols, w2, b, relu=relu)
    return y.view(n, oh, ow, -1).permute(0, 3, 1, 2)
