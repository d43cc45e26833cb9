"""FastTrainFCN: the reference layout's training forward without the padding's waste, exactly.

The reference pads conv1_1 by 100 pixels; at 500x500 ~40% of every early map is "background":
positions whose receptive field misses the image, whose activations are those of a black
(all-zero) image, the same for every image of the batch. FastFCN (inference) computes that
background once per input size and caches it; in training the weights change every step, so
here it is recomputed every step, differentiably, and kept small:

* Background, per step and axis, as a compact map: the big map's top edge zone, a few rows of
  its constant interior, its bottom edge zone (plan.zones gives the zones). A layer run on a
  compact input whose length is the big one's minus a multiple of the layer's stride (so its
  windows meet the bottom edge the same way) gives the big output's compact map; between
  layers it is re-cut (index_select) to the shortest length the next layer allows. The big
  map is `gather(compact)` for every value of the weights, so autograd through the gathers
  gives exactly the big background's gradient. Its cost: a few thousand positions per layer,
  batch 1, whatever the batch (vs FastFCN's one black image of 212x212 for 500x500).
* Core: each layer runs only on the positions whose receptive field touches the image, on a
  window = core + a rim of background (or zeros past the map's edges), written once (maps.Paste).
  ``bands=True`` instead runs a stride-1 conv on the core with zero padding (no window copy:
  ~0.1 GB lower peak at 500x500) and adds the rim's share to the output's four border bands
  (batch-1 convs of thin background strips); measured no faster here, so off by default.
* fc6 / fc7 (``gemm_fc``): im2col + one GEMM, backward two GEMMs (train_ops.fc_gemm: oneDNN's
  linear with the ReLU fused where it runs); oneDNN's backward of the 7x7 conv on a 22x22 map
  was the step's largest item (~15%).
* ``winograd=N`` (default 128): 3x3 convs with at least N input channels on maps of at least
  ``winograd_min_map`` (34) rows and columns, on CPU in float32/64, by Winograd F(4x4, 3x3) for
  the output, the input gradient and the weight gradient (train_ops.winograd_conv3x3; NHWC
  inside), 4x fewer multiply-adds than oneDNN's direct kernels. Measured on AMD Zen 4, 2
  threads, FCN-8s 500x500, forward + backward, 6 interleaved repeats (medians): none 4.94 s;
  N=256 4.37; N=128 4.30; N=64 4.35 (per layer, the 64-channel convs at 500x500 ran faster
  direct). F(2x2) with oneDNN's weight gradient (the previous opt-in) gained nothing: its
  transforms and copies took back what its GEMMs saved. ``winograd=None``: oneDNN throughout.
* Taps (pool3, pool4) and the trunk's output are pasted back into full maps (background
  around the core) before the model's own head (forward_head), so the head, its crops, losses
  and upsamplers are the model's.

Dropout (train mode) draws the same masks as the model: each Dropout runs on a tensor of the
shape the model's own forward gives it, in the same order. Where its map is all core (every
reference VGG16/AlexNet net from 1x1 up: fc6's receptive field is larger than the padding)
that is the core itself; otherwise the full map is pasted first and the remaining layers run
on full maps. Plain PyTorch ops (conv2d, max_pool2d, copies, index_select): CPU and CUDA,
float32/float64, autocast, channels_last (follows the input's memory format; on CPU with
Winograd on, NHWC throughout, the layout its kernels write: an op that reads one layout beside
the other ran 10-20x slower, benchmarks/RESULTS.md; dropout masks still over the input's),
plus the CPU kernels of train_ops where they apply (each with its own backward, tested against
autograd's).

Exactness: the same sums of the same products in another grouping (Winograd F(4x4): another
factorisation, whose float32 rounding per conv is ~12x the direct kernels' for the output and
input gradient, ~2x for the weight gradient: train_ops); tests/test_fast_train.py checks loss
and every parameter gradient against the model's own, float64 and float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.fcn import FCN
from . import maps, train_ops
from .plan import Step, pair, parse_trunk
from .train_plan import Plan, index, plan_steps

__all__ = ["FastTrainFCN", "background_maps"]

# Winograd's transforms are a few dozen torch ops a conv: on maps smaller than this (padded
# input rows / columns, 8 x 8 tiles of F(4x4)), such as the compact backgrounds, the direct
# conv is faster
WINOGRAD_MIN_MAP = 34


class FastTrainFCN(nn.Module):
    """The training (and any-mode) forward of a reference- or "same"-layout FCN with a plain
    conv/ReLU/pool trunk (VGG16, AlexNet; CaffeNet's LRN, per position across channels, and
    grouped convs too): ``FastTrainFCN(model)(x)`` equals ``model(x)``,
    and so do the gradients it gives the model's parameters (up to float rounding).

    Wraps `model` (its parameters are this module's ``model.*``): optimizers, checkpoints and
    DDP can take either. Plans are cached per input size (a few small index lists).
    """

    def __init__(
        self,
        model: FCN,
        *,
        gemm_fc: bool = True,
        bands: bool = False,
        winograd: int | None = 128,
        winograd_min_map: int = WINOGRAD_MIN_MAP,
    ):
        super().__init__()
        if not isinstance(model, FCN):
            raise TypeError(f"FastTrainFCN wraps an fcnseg FCN, got {type(model).__name__}")
        if model.pad_to != 1:
            raise ValueError(
                f"FastTrainFCN does not handle models that pad their input (pad_to={model.pad_to}):"
                " train this model without --fast"
            )
        if model.stream_names is not None:
            raise ValueError(
                f"FastTrainFCN handles one input stream; this FCN has {list(model.stream_names)}:"
                " train it without --fast"
            )
        self.model = model
        self.gemm_fc = gemm_fc
        self.bands = bands
        self.winograd, self.winograd_min_map = winograd, winograd_min_map
        self._scratch = train_ops.Scratch()
        try:
            self.steps = parse_trunk(model, lrn=True, groups=True)  # CaffeNet's too
        except ValueError as e:
            raise ValueError(f"{e}: train this model without --fast") from None
        self._drops = [
            [getattr(model, m) for m in s.modules if isinstance(getattr(model, m), nn.Dropout)]
            for s in self.steps
        ]
        step_of = {m: i for i, s in enumerate(self.steps) for m in s.modules}
        self._taps = {step_of[n]: n for n in (*model.taps, model.trunk_names[-1])}
        self._plans: dict[tuple[int, int], list[Plan]] = {}

    @property
    def num_classes(self):
        return self.model.num_classes

    @property
    def preprocessing(self):
        return self.model.preprocessing

    def plan(self, H: int, W: int) -> list[Plan]:
        key = (H, W)
        if key not in self._plans:
            if len(self._plans) > 64:
                self._plans.clear()
            self._plans[key] = plan_steps(self.steps, H, W)
        return self._plans[key]

    def _last_background(self, plans: list[Plan]) -> int:
        """The last step whose background output is read: by a later step's rim, or pasted
        around a tap's (or a dropout's) core; none past it is computed (fc6's would cost
        ~5 GMAC at 500x500, and its map is all core)."""
        last = -1
        for i, p in enumerate(plans):
            g = p.geom
            if not g.direct and p.padding is None:  # (its own compact input is made in its turn)
                last = max(last, i)
            whole = g.out_core == ((0, g.out_len[0]), (0, g.out_len[1]))
            if not whole and (i in self._taps or self._drops[i]):
                last = i
        return last

    def _gather(self, x: torch.Tensor, rows, cols) -> torch.Tensor:
        """x[:, :, rows][:, :, :, cols] (None: all), as slices and broadcast rows: the
        backward then sums each repeated row with torch's (cascaded) reductions, not one
        long serial index_add (1e-5 off in float32 at 1000x600)."""
        if rows is not None:
            x = maps.take(x, 2, rows)
        if cols is not None:
            x = maps.take(x, 3, cols)
        return x

    def _as_gemm(self, s: Step, x: torch.Tensor, padding) -> bool:
        """fc6 / fc7 (7x7 or 1x1 kernels, stride 1, on a small map): im2col + one GEMM, whose
        backward is two GEMMs (oneDNN's backward of the 7x7 conv on 22x22 runs far slower)."""
        if not self.gemm_fc or s.kind != "conv" or s.layer.stride != (1, 1):
            return False
        kh, kw = pair(s.layer.kernel_size)
        oh = x.shape[2] + 2 * padding[0] - kh + 1
        ow = x.shape[3] + 2 * padding[1] - kw + 1
        return (kh * kw >= 25 or kh * kw == 1) and oh * ow <= 4096 and s.layer.groups == 1

    def _winograd(self, x: torch.Tensor, w: torch.Tensor, layer, padding) -> bool:
        return (
            self.winograd is not None
            and w.shape[1] >= self.winograd
            and min(x.shape[2:]) + 2 * padding[0] >= self.winograd_min_map
            and train_ops.winograd_applies(x, w, layer.stride, padding, layer.groups)
        )

    def _run(self, s: Step, x: torch.Tensor, padding=None) -> torch.Tensor:
        layer = s.layer
        if s.kind == "lrn":  # across channels at each position: the model's own function
            return layer(x)
        p = pair(layer.padding if padding is None else padding)
        if s.kind == "pool":
            return F.max_pool2d(x, layer.kernel_size, layer.stride, p, ceil_mode=layer.ceil_mode)
        w, b = layer.weight, layer.bias
        if self._as_gemm(s, x, p):
            return train_ops.conv_gemm(x, w, b, p, relu=s.relu)
        if self._winograd(x, w, layer, p):
            return train_ops.winograd_conv3x3(
                x, w, b, p[0], relu=s.relu, m=4, wgrad=True, scratch=self._scratch
            )  # fmt: skip
        return train_ops.direct_conv(x, w, b, layer.stride, p, groups=layer.groups, relu=s.relu)

    def _conv_bands(self, s: Step, core, bg, bands) -> torch.Tensor:
        w = s.layer.weight
        bg = F.pad(bg, (0, 1, 0, 1))
        t, left = bands[0][3][1], bands[2][4][1]
        groups = s.layer.groups
        y = F.conv2d(core, w, s.layer.bias, 1, (t, left), groups=groups)
        parts, spans = [], []
        for rows, cols, mask, orows, ocols in bands:
            x = self._gather(bg, rows, cols).to(core.dtype)
            if mask is not None:
                x = x * mask.to(x.device, x.dtype)
            parts.append(F.conv2d(x, w.to(x.dtype), groups=groups))
            spans.append((orows, ocols))
        y = maps.AddBands.apply(y, tuple(spans), *parts)
        return torch.relu_(y) if s.relu else y

    def _full(self, core, bg_out, p: Plan, n: int, fmt) -> torch.Tensor:
        """The big output map: the background (gathered from its compact map) around core."""
        g = p.geom
        (a0, a1), (b0, b1) = g.out_core
        (H, W) = g.out_len
        rows = lambda lo, hi: index(lo, hi, H, p.small_out[0], p.zout[0])  # noqa: E731
        cols = lambda lo, hi: index(lo, hi, W, p.small_out[1], p.zout[1])  # noqa: E731
        strips = {
            "top": (rows(0, a0), cols(0, W)), "bottom": (rows(a1, H), cols(0, W)),
            "left": (rows(a0, a1), cols(0, b0)), "right": (rows(a0, a1), cols(b1, W)),
        }  # fmt: skip
        return self._paste(core, bg_out, strips, n, fmt)

    def _paste(self, core, bg, strips: dict, n: int, fmt) -> torch.Tensor:
        bg = F.pad(bg, (0, 1, 0, 1))  # a zero row and column: the index of "past the edge"

        def strip(band):
            r, c = strips.get(band, ([], []))
            if not r or not c:
                return None
            t = self._gather(bg, r, c).to(core.dtype)
            return t.expand(n, -1, -1, -1)

        left, right, top, bottom = (strip(b) for b in ("left", "right", "top", "bottom"))
        if left is None and right is None and top is None and bottom is None:
            return core.contiguous(memory_format=fmt)
        t0 = 0 if top is None else top.shape[2]
        l0 = 0 if left is None else left.shape[3]
        h1, w1 = t0 + core.shape[2], l0 + core.shape[3]
        H = h1 + (0 if bottom is None else bottom.shape[2])
        W = w1 + (0 if right is None else right.shape[3])
        placed = [(core, (t0, h1), (l0, w1)), (left, (t0, h1), (0, l0)),
                  (right, (t0, h1), (w1, W)), (top, (0, t0), (0, W)),
                  (bottom, (h1, H), (0, W))]  # fmt: skip
        placed = [(t, r, c) for t, r, c in placed if t is not None]
        spans = tuple((r, c) for _, r, c in placed)
        return maps.Paste.apply((n, core.shape[1], H, W), fmt, spans, *(t for t, _, _ in placed))

    def forward(self, x: torch.Tensor):
        m = self.model
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != m.in_channels[""]:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected a float tensor (N, {m.in_channels['']}, H, W), got {got}")
        n, c, H, W = x.shape
        fmt = own = train_ops.layout_of(x)  # `own`: the model's, as it would run on x
        if self.winograd is not None and train_ops.runs_on(x):  # NHWC throughout, as the
            fmt = torch.channels_last  # Winograd kernels write it: no op mixes layouts
            x = x.contiguous(memory_format=fmt)
        plans = self.plan(H, W)
        last_bg = self._last_background(plans)
        bg = x.new_zeros(1, c, *plans[0].small_in)  # the black image, compact
        bg = bg.contiguous(memory_format=fmt)
        cur, full_mode = x, False
        feats: dict[str, torch.Tensor] = {}
        for i, (s, p) in enumerate(zip(self.steps, plans, strict=True)):
            g = p.geom
            if (
                not full_mode and i <= last_bg
            ):  # the background, compact, of this step's input and output
                if p.recut != (None, None):
                    bg = self._gather(bg, *p.recut)
                bg_in, bg = bg, self._run(s, bg)
            if full_mode or g.direct:
                y = self._run(s, cur)
            elif p.padding is not None:  # core = whole map, rim = zeros: the op's padding
                y = self._run(s, cur, p.padding)
            elif (
                p.bands is not None and self.bands
            ):  # the core with zero padding, then the rim's share
                y = self._conv_bands(s, cur, bg_in, p.bands)
            else:  # core + its rim of background (and zeros past the map's edges)
                win = self._paste(cur, bg_in, {b: (r, cc) for b, r, cc in p.rim}, n, fmt)
                y = self._run(s, win, (0, 0))
            whole = g.out_core == ((0, g.out_len[0]), (0, g.out_len[1]))
            dropping = any(d.training and d.p > 0 for d in self._drops[i])
            if dropping and not (full_mode or whole):  # the model's mask shape: the full map
                y, full_mode = self._full(y, bg, p, n, fmt), True
                whole = True
            if dropping:  # the mask is drawn over the model's own layout of the map
                y = y.contiguous(memory_format=own)
            for d in self._drops[i]:
                y = d(y)
            if dropping:
                y = y.contiguous(memory_format=fmt)
            cur = y
            name = self._taps.get(i)
            if name is not None:
                feats[name] = y if (full_mode or whole) else self._full(y, bg, p, n, fmt)
        top = feats[m.trunk_names[-1]]
        if m.head_names is None:
            return m.forward_head(feats, top, H, W)
        return {k: m.forward_head(feats, top, H, W, output=k) for k in m.head_names}


@torch.no_grad()
def background_maps(fast: FastTrainFCN, H: int, W: int) -> list[torch.Tensor]:
    """Each step's big background output map as FastTrainFCN represents it (gathered from the
    compact maps): for tests, to compare with the trunk run on a black image."""
    plans = fast.plan(H, W)
    p0 = fast.model.in_channels[""]
    w = fast.steps[0].layer.weight
    bg = torch.zeros(1, p0, *plans[0].small_in, dtype=w.dtype, device=w.device)
    out = []
    for i, (s, p) in enumerate(zip(fast.steps, plans, strict=True)):
        if i > 0 and p.recut != (None, None):
            bg = fast._gather(bg, *p.recut)
        bg = fast._run(s, bg)
        rows = index(0, p.geom.out_len[0], p.geom.out_len[0], p.small_out[0], p.zout[0])
        cols = index(0, p.geom.out_len[1], p.geom.out_len[1], p.small_out[1], p.zout[1])
        out.append(fast._gather(F.pad(bg, (0, 1, 0, 1)), rows, cols))
    return out
