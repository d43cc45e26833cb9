"""FastTrainFCN's plan: per step, the core's geometry and the background's compact maps.

A big background map (length L, edge zones zl / zr, a constant interior) is held as a compact
map of length S = L - m * stride (the layer's windows meet its bottom edge the same way) with
the same zones and at least one interior position; `_index` maps big positions to compact ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .plan import Geom, Step, geometry, out_len, pair, window_of, zones

__all__ = ["Plan", "index", "plan_steps"]

Interval = tuple[int, int]


def _zones1(s: Step, axis: int, length: int, zin: Interval, uniform: bool) -> tuple[int, Interval]:
    """One step along one axis: output length and edge zones for an input of `length` whose
    zones are `zin` (plan.zones' rule, one step at a time)."""
    k, st, p = window_of(s, axis)  # LRN: a 1x1 window
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
    st = window_of(s, axis)[1]
    for cand in range(big % st or st, big, st):
        out, z = _zones1(s, axis, cand, zin, uniform)
        if cand - sum(zin) >= 1 and out - sum(z) >= 1 and z == zout:
            return cand
    return big


def index(lo: int, hi: int, big: int, small: int, zone: Interval) -> list[int]:
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
class Plan:
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


def plan_steps(steps: list[Step], H: int, W: int) -> list[Plan]:
    geoms = geometry(steps, H, W)
    zs = [zones(steps, L, a) for a, L in enumerate((H, W))]
    plans: list[Plan] = []
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
                ri = index(*rows, L[0], small[0], Z[0])
                ci = index(*cols, L[1], small[1], Z[1])
                rim.append((band, ri, ci))
        padding = None
        whole = g.in_core == ((0, L[0]), (0, L[1]))
        pads = (c0 - h0, d0 - w0)
        if whole and (s.kind == "conv" or pads == (0, 0)) and pads == (h1 - c1, w1 - d1):
            padding = pads
        bands = None if padding is not None or g.direct else _bands(s, g, small, zin)
        plans.append(Plan(g, small, zin, small_out, zout, recut, rim, padding, bands))
        prev_small = small_out
        uniform = uniform and s.kind == "pool"
    return plans


def _bands(s: Step, g: Geom, small, zin):
    """A stride-1 conv whose window is its core + a rim of equal width on opposite sides runs
    on the core with that padding (zeros: no window copy, nothing saved twice), plus the rim's
    contribution to the output's 4 border bands: batch-1 convs of thin strips of the
    background (core zeroed), added in place. Returns [(rows, cols, mask, out rows, out cols)]
    or None where that does not apply (a core smaller than the kernel: bands would overlap)."""
    if s.kind != "conv":
        return None
    (h0, h1), (w0, w1) = g.window
    (c0, c1), (d0, d1) = g.in_core
    k = pair(s.layer.kernel_size)
    t, left = c0 - h0, d0 - w0
    ch, cw = c1 - c0, d1 - d0
    if s.layer.stride != (1, 1) or (t, left) != (h1 - c1, w1 - d1):
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
        rows = index(h0 + r0, h0 + r1, g.in_len[0], small[0], zin[0])
        cols = index(w0 + q0, w0 + q1, g.in_len[1], small[1], zin[1])
        mask = torch.ones(1, 1, r1 - r0, q1 - q0)
        mask[
            :, :, max(t - r0, 0) : max(t + ch - r0, 0), max(left - q0, 0) : max(left + cw - q0, 0)
        ] = 0
        bands.append((rows, cols, None if bool(mask.all()) else mask, orows, ocols))
    return bands


def _recut(big: int, have: int, want: int, zone: Interval) -> list[int]:
    """Indices into a compact map of length `have` (of a big map of length `big`, zones
    `zone`) giving the compact map of length `want` (or the big map itself)."""
    if want == big:
        return index(0, big, big, have, zone)
    zl, zr = zone
    return [*range(zl), *([zl] * (want - zl - zr)), *range(have - zr, have)]
