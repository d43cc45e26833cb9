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
  window = core + a rim of background (or zeros past the map's edges), built with torch.cat.
  ``bands=True`` instead runs a stride-1 conv on the core with zero padding (no window copy:
  ~0.1 GB lower peak at 500x500) and adds the rim's share to the output's four border bands
  (batch-1 convs of thin background strips); measured no faster here, so off by default.
* fc6 / fc7 (``gemm_fc``): im2col + one GEMM (F.unfold + F.linear), backward two GEMMs;
  oneDNN's backward of the 7x7 conv on a 22x22 map was the step's largest item (~15%).
* Taps (pool3, pool4) and the trunk's output are pasted back into full maps (background
  around the core) before the model's own head (forward_head), so the head, its crops, losses
  and upsamplers are the model's.

Dropout (train mode) draws the same masks as the model: each Dropout runs on a tensor of the
shape the model's own forward gives it, in the same order. Where its map is all core (every
reference VGG16/AlexNet net from 1x1 up: fc6's receptive field is larger than the padding)
that is the core itself; otherwise the full map is pasted first and the remaining layers run
on full maps. Plain PyTorch ops only (conv2d, max_pool2d, cat, index_select): CPU and CUDA,
float32/float64, autocast, channels_last (follows the input's memory format).

Exactness: the same sums of the same products in another grouping; tests/test_fast_train.py
checks loss and every parameter gradient against the model's own, float64 and float32.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models.fcn import FCN
from .plan import Geom, Step, geometry, out_len, pair, parse_trunk, zones

__all__ = ["FastTrainFCN", "background_maps"]

Interval = tuple[int, int]


def _zones1(s: Step, axis: int, length: int, zin: Interval, uniform: bool) -> tuple[int, Interval]:
    """One step along one axis: output length and edge zones for an input of `length` whose
    zones are `zin` (plan.zones' rule, one step at a time)."""
    k, st = pair(s.layer.kernel_size)[axis], pair(s.layer.stride)[axis]
    p = pair(s.layer.padding)[axis]
    out = out_len(length, k, st, p, s.kind == "pool" and s.layer.ceil_mode)
    if uniform and s.kind == "conv":  # zeros everywhere, padding included: a constant output
        return out, (0, 0)
    zl, zr = zin
    ol = min(out, -(-(zl + p) // st))
    first = -(-(length - zr + p - k + 1) // st)
    return out, (ol, out - min(out, max(0, first)))


def _compact_length(s: Step, axis: int, big: int, zin: Interval, zout: Interval, uniform) -> int:
    """The shortest input length big - m * stride that keeps both zones and leaves at least one
    interior position in input and output (so the big maps are gathers of the compact ones)."""
    st = pair(s.layer.stride)[axis]
    for cand in range(big % st or st, big, st):
        out, z = _zones1(s, axis, cand, zin, uniform)
        if cand - sum(zin) >= 1 and out - sum(z) >= 1 and z == zout:
            return cand
    return big


def _index(lo: int, hi: int, big: int, small: int, zone: Interval) -> list[int]:
    """Compact indices of the big map's positions lo..hi-1; `small` (one past the compact map:
    the zero row F.pad appends) for positions past the map's edges."""
    zl, zr = zone
    idx = []
    for p in range(lo, hi):
        if p < 0 or p >= big:
            idx.append(small)
        elif small == big or p < zl:
            idx.append(p)
        elif p >= big - zr:
            idx.append(p - (big - small))
        else:
            idx.append(zl)  # the constant interior
    return idx


@dataclass
class _Plan:
    """Per step: geometry of the core, compact background lengths and zones, gather indices."""

    geom: Geom
    small_in: tuple[int, int]
    zin: tuple[Interval, Interval]
    small_out: tuple[int, int]
    zout: tuple[Interval, Interval]
    recut: tuple[list[int] | None, list[int] | None]  # previous compact output -> small_in
    rim: list[tuple[int, int, list[int], list[int]]]  # strips: (band, side, rows, cols)
    padding: tuple[int, int] | None  # the window is the core + zeros: conv/pool padding
    bands: list | None = None  # stride-1 convs: the core's padding and the rim's 4 bands


def plan_steps(steps: list[Step], H: int, W: int) -> list[_Plan]:
    geoms = geometry(steps, H, W)
    zs = [zones(steps, L, a) for a, L in enumerate((H, W))]
    plans: list[_Plan] = []
    prev_small = (H, W)  # the black input: built at its compact size directly
    uniform = True
    for i, (s, g) in enumerate(zip(steps, geoms, strict=True)):
        zin = (zs[0][i][0], zs[1][i][0])
        zout = (zs[0][i][1], zs[1][i][1])
        small = tuple(_compact_length(s, a, g.in_len[a], zin[a], zout[a], uniform) for a in (0, 1))
        small_out = tuple(
            _zones1(s, a, small[a], zin[a], uniform)[0] for a in (0, 1)
        )  # fmt: skip
        recut = (None, None)
        if i > 0:  # re-cut the previous step's compact output (its big length: g.in_len)
            recut = tuple(
                None
                if small[a] == prev_small[a]
                else _recut(g.in_len[a], prev_small[a], small[a], zin[a])
                for a in (0, 1)
            )
        (h0, h1), (w0, w1) = g.window
        (c0, c1), (d0, d1) = g.in_core
        assert h0 <= c0 <= c1 <= h1 and w0 <= d0 <= d1 <= w1, (s.name, g)
        rim = []
        L, Z = g.in_len, zin
        for band, rows, cols in (
            ("top", (h0, c0), (w0, w1)), ("bottom", (c1, h1), (w0, w1)),
            ("left", (c0, c1), (w0, d0)), ("right", (c0, c1), (d1, w1)),
        ):  # fmt: skip
            if rows[1] > rows[0] and cols[1] > cols[0]:
                ri = _index(*rows, L[0], small[0], Z[0])
                ci = _index(*cols, L[1], small[1], Z[1])
                rim.append((band, ri, ci))
        padding = None
        whole = g.in_core == ((0, L[0]), (0, L[1]))
        pads = (c0 - h0, d0 - w0)
        if whole and (s.kind == "conv" or pads == (0, 0)) and pads == (h1 - c1, w1 - d1):
            padding = pads
        bands = None if padding is not None or g.direct else _bands(s, g, small, zin)
        plans.append(_Plan(g, small, zin, small_out, zout, recut, rim, padding, bands))
        prev_small = small_out
        uniform = uniform and s.kind == "pool"
    return plans


def _bands(s: Step, g: Geom, small, zin):
    """A stride-1 conv whose window is its core + a rim of equal width on opposite sides runs
    on the core with that padding (zeros: no window copy, nothing saved twice), plus the rim's
    contribution to the output's 4 border bands: batch-1 convs of thin strips of the
    background (core zeroed), added in place. Returns [(rows, cols, mask, out rows, out cols)]
    or None where that does not apply (a core smaller than the kernel: bands would overlap)."""
    (h0, h1), (w0, w1) = g.window
    (c0, c1), (d0, d1) = g.in_core
    k = pair(s.layer.kernel_size)
    t, left = c0 - h0, d0 - w0
    ch, cw = c1 - c0, d1 - d0
    if s.kind != "conv" or s.layer.stride != (1, 1) or (t, left) != (h1 - c1, w1 - d1):
        return None
    if ch < k[0] or cw < k[1] or min(t, left) < 1:
        return None
    wh, ww = h1 - h0, w1 - w0
    oh, ow = wh - k[0] + 1, ww - k[1] + 1
    th, tw = t + k[0] - 1, left + k[1] - 1  # window rows / columns one band reads
    bands = []
    for (r0, r1), (q0, q1), orows, ocols in (
        ((0, th), (0, ww), (0, t), (0, ow)), ((wh - th, wh), (0, ww), (oh - t, oh), (0, ow)),
        ((t, t + ch), (0, tw), (t, oh - t), (0, left)), ((t, t + ch), (ww - tw, ww), (t, oh - t),
                                                         (ow - left, ow)),
    ):  # fmt: skip
        rows = _index(h0 + r0, h0 + r1, g.in_len[0], small[0], zin[0])
        cols = _index(w0 + q0, w0 + q1, g.in_len[1], small[1], zin[1])
        mask = torch.ones(1, 1, r1 - r0, q1 - q0)
        mask[
            :, :, max(t - r0, 0) : max(t + ch - r0, 0), max(left - q0, 0) : max(left + cw - q0, 0)
        ] = 0
        bands.append((rows, cols, None if bool(mask.all()) else mask, orows, ocols))
    return bands


class _AddBands(torch.autograd.Function):
    """y[:, :, rows, cols] += band (batch 1, broadcast) for each band, in place; the bands'
    gradients are the output gradient's bands summed over the batch."""

    @staticmethod
    def forward(ctx, y, spans, *bands):
        ctx.spans = spans
        ctx.mark_dirty(y)
        for (r, c), b in zip(spans, bands, strict=True):
            y[:, :, r[0] : r[1], c[0] : c[1]] += b
        return y

    @staticmethod
    def backward(ctx, g):
        grads = [g[:, :, r[0] : r[1], c[0] : c[1]].sum(0, keepdim=True) for r, c in ctx.spans]
        return (g, None, *grads)


def _recut(big: int, have: int, want: int, zone: Interval) -> list[int]:
    """Indices into a compact map of length `have` (of a big map of length `big`, zones
    `zone`) giving the compact map of length `want` (or the big map itself)."""
    if want == big:
        return _index(0, big, big, have, zone)
    zl, zr = zone
    return [*range(zl), *([zl] * (want - zl - zr)), *range(have - zr, have)]


class FastTrainFCN(nn.Module):
    """The training (and any-mode) forward of a reference- or "same"-layout FCN with a plain
    conv/ReLU/pool trunk (VGG16, AlexNet): ``FastTrainFCN(model)(x)`` equals ``model(x)``,
    and so do the gradients it gives the model's parameters (autograd, no custom backward).

    Wraps `model` (its parameters are this module's ``model.*``): optimizers, checkpoints and
    DDP can take either. Plans are cached per input size (a few small index lists).
    """

    def __init__(self, model: FCN, *, gemm_fc: bool = True, bands: bool = False):
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
        try:
            self.steps = parse_trunk(model)
        except ValueError as e:
            raise ValueError(f"{e}: train this model without --fast") from None
        self._drops = [
            [getattr(model, m) for m in s.modules if isinstance(getattr(model, m), nn.Dropout)]
            for s in self.steps
        ]
        step_of = {m: i for i, s in enumerate(self.steps) for m in s.modules}
        self._taps = {step_of[n]: n for n in (*model.taps, model.trunk_names[-1])}
        self._plans: dict[tuple[int, int], list[_Plan]] = {}

    @property
    def num_classes(self):
        return self.model.num_classes

    @property
    def preprocessing(self):
        return self.model.preprocessing

    def plan(self, H: int, W: int) -> list[_Plan]:
        key = (H, W)
        if key not in self._plans:
            if len(self._plans) > 64:
                self._plans.clear()
            self._plans[key] = plan_steps(self.steps, H, W)
        return self._plans[key]

    def _last_background(self, plans: list[_Plan]) -> int:
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
            x = _take(x, 2, rows)
        if cols is not None:
            x = _take(x, 3, cols)
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

    def _run(self, s: Step, x: torch.Tensor, padding=None) -> torch.Tensor:
        layer = s.layer
        p = pair(layer.padding if padding is None else padding)
        if s.kind == "pool":
            return F.max_pool2d(x, layer.kernel_size, layer.stride, p, ceil_mode=layer.ceil_mode)
        if self._as_gemm(s, x, p):
            y = _conv_gemm(x, layer.weight, layer.bias, p)
        else:
            y = F.conv2d(x, layer.weight, layer.bias, layer.stride, p)
        return torch.relu_(y) if s.relu else y

    def _conv_bands(self, s: Step, core, bg, bands) -> torch.Tensor:
        w = s.layer.weight
        bg = F.pad(bg, (0, 1, 0, 1))
        t, left = bands[0][3][1], bands[2][4][1]
        y = F.conv2d(core, w, s.layer.bias, 1, (t, left))
        parts, spans = [], []
        for rows, cols, mask, orows, ocols in bands:
            x = self._gather(bg, rows, cols).to(core.dtype)
            if mask is not None:
                x = x * mask.to(x.device, x.dtype)
            parts.append(F.conv2d(x, w.to(x.dtype)))
            spans.append((orows, ocols))
        y = _AddBands.apply(y, tuple(spans), *parts)
        return torch.relu_(y) if s.relu else y

    def _full(self, core, bg_out, p: _Plan, n: int, fmt) -> torch.Tensor:
        """The big output map: the background (gathered from its compact map) around core."""
        g = p.geom
        (a0, a1), (b0, b1) = g.out_core
        (H, W) = g.out_len
        rows = lambda lo, hi: _index(lo, hi, H, p.small_out[0], p.zout[0])  # noqa: E731
        cols = lambda lo, hi: _index(lo, hi, W, p.small_out[1], p.zout[1])  # noqa: E731
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

        mid = [t for t in (strip("left"), core, strip("right")) if t is not None]
        mid = torch.cat(mid, 3) if len(mid) > 1 else core
        parts = [t for t in (strip("top"), mid, strip("bottom")) if t is not None]
        out = torch.cat(parts, 2) if len(parts) > 1 else mid
        return out.contiguous(memory_format=fmt)

    def forward(self, x: torch.Tensor):
        m = self.model
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != m.in_channels[""]:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected a float tensor (N, {m.in_channels['']}, H, W), got {got}")
        n, c, H, W = x.shape
        cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if cl and not x.is_contiguous() else torch.contiguous_format
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
                y = y.contiguous(memory_format=fmt)
            for d in self._drops[i]:
                y = d(y)
            cur = y
            name = self._taps.get(i)
            if name is not None:
                feats[name] = y if (full_mode or whole) else self._full(y, bg, p, n, fmt)
        top = feats[m.trunk_names[-1]]
        if m.head_names is None:
            return m.forward_head(feats, top, H, W)
        return {k: m.forward_head(feats, top, H, W, output=k) for k in m.head_names}


@functools.lru_cache(maxsize=4096)
def _runs(idx: tuple[int, ...]) -> list[tuple[int, int, bool]]:
    """An index list as runs (start, length, repeated): ascending by one, or one index."""
    runs: list[tuple[int, int, bool]] = []
    j = 0
    while j < len(idx):
        k = j + 1
        if k < len(idx) and idx[k] == idx[j]:
            while k < len(idx) and idx[k] == idx[j]:
                k += 1
            runs.append((idx[j], k - j, True))
        else:
            while k < len(idx) and idx[k] == idx[k - 1] + 1:
                k += 1
            runs.append((idx[j], k - j, False))
        j = k
    return runs


def _take(x: torch.Tensor, dim: int, idx: list[int]) -> torch.Tensor:
    parts = []
    for start, length, repeated in _runs(tuple(idx)):
        if repeated:
            shape = list(x.shape)
            shape[dim] = length
            parts.append(x.narrow(dim, start, 1).expand(shape))
        else:
            parts.append(x.narrow(dim, start, length))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def _conv_gemm(x: torch.Tensor, w: torch.Tensor, b, padding) -> torch.Tensor:
    """conv2d (stride 1) as im2col + F.linear: (n, C, h, w) -> (n, O, oh, ow), laid out
    channels_last (a view of the GEMM's (n * oh * ow, O) output)."""
    n, kh, kw = x.shape[0], w.shape[2], w.shape[3]
    if padding != (0, 0):
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    oh, ow = x.shape[2] - kh + 1, x.shape[3] - kw + 1
    if kh * kw == 1:
        cols = x.permute(0, 2, 3, 1).reshape(n * oh * ow, -1)
    else:
        cols = F.unfold(x, (kh, kw)).transpose(1, 2).reshape(n * oh * ow, -1)
    y = F.linear(cols, w.reshape(w.shape[0], -1), b)
    return y.view(n, oh, ow, -1).permute(0, 3, 1, 2)


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
        rows = _index(0, p.geom.out_len[0], p.geom.out_len[0], p.small_out[0], p.zout[0])
        cols = _index(0, p.geom.out_len[1], p.geom.out_len[1], p.small_out[1], p.zout[1])
        out.append(fast._gather(F.pad(bg, (0, 1, 0, 1)), rows, cols))
    return out
