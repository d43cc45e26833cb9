"""FastTrainFCN's maps from pieces, differentiably: the core and the background strips
around it written into one map (Paste), a background rim's share added to an output's
border bands (AddBands), and a compact map's rows or columns taken by an index list with
repeats (take).
"""

from __future__ import annotations

import functools

import torch

__all__ = ["AddBands", "Paste", "take"]


class Paste(torch.autograd.Function):
    """A map from its pieces (the core, background strips around it, each already expanded
    to the batch), written once in memory format `fmt`: one pass, where torch.cat and a
    change of layout took two (and an NHWC core beside NCHW strips made cat transpose
    slowly). The backward hands each piece its slice of the gradient (views)."""

    @staticmethod
    def forward(ctx, shape, fmt, spans, *pieces):
        ctx.spans = spans
        out = torch.empty(shape, dtype=pieces[0].dtype, device=pieces[0].device,
                          memory_format=fmt)  # fmt: skip
        for (r, c), t in zip(spans, pieces, strict=True):
            out[:, :, r[0] : r[1], c[0] : c[1]].copy_(t)
        return out

    @staticmethod
    def backward(ctx, g):
        return (None, None, None, *(g[:, :, r[0] : r[1], c[0] : c[1]] for r, c in ctx.spans))


class AddBands(torch.autograd.Function):
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


def take(x: torch.Tensor, dim: int, idx: list[int]) -> torch.Tensor:
    """x's entries `idx` along `dim`, as slices (a run ascending by one) and expanded views (one
    index repeated) joined by one cat: no index_select, so the backward adds each repeated
    entry's gradient with torch's reductions."""
    parts = []
    for start, length, repeated in _runs(tuple(idx)):
        if repeated:
            shape = list(x.shape)
            shape[dim] = length
            parts.append(x.narrow(dim, start, 1).expand(shape))
        else:
            parts.append(x.narrow(dim, start, length))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)
