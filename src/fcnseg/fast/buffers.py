"""FastFCN's buffers: flat arenas reused by every call, and each step's input rebuilt in one.

A step's input is its window of the previous map: the image-dependent core pasted into the
background's rim (kept as up to four strips) and the zero padding past the map's edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Background", "RimInput", "carve"]


def carve(arena: torch.Tensor, shape, channels_last: bool) -> torch.Tensor:
    """An (N, C, h, w) tensor over the start of a flat arena, dense in its memory format."""
    n, c, h, w = shape
    block = arena[: n * c * h * w]
    return block.view(n, h, w, c).permute(0, 3, 1, 2) if channels_last else block.view(shape)


class Background:
    """A background map of the real input size, held as the map of a smaller black input with
    the same edges. Away from the map's edges every background activation is the same number
    (it sees only the black image and biases), so the large map is the small one with its
    constant interior repeated: row p of the large map is row p of the small one inside the
    top zone, row p - d inside the bottom zone (d = the length difference), and a row of the
    interior in between; columns likewise."""

    def __init__(self, small: torch.Tensor, length: tuple[int, int], zones):
        self.small, self.length, self.zones = small, length, zones
        self.shape = (*small.shape[:2], *length)

    def region(self, a0: int, a1: int, b0: int, b1: int) -> torch.Tensor:
        """Rows a0:a1, columns b0:b1 of the large map (inside it)."""
        x = self.small
        for axis, (lo, hi) in ((2, (a0, a1)), (3, (b0, b1))):
            big, small = self.length[axis - 2], x.shape[axis]
            if big == small:
                x = x.narrow(axis, lo, hi - lo)
                continue
            top, bottom = self.zones[axis - 2]
            p = torch.arange(lo, hi)
            idx = torch.where(p < top, p, torch.where(p >= big - bottom, p - (big - small), top))
            x = x.index_select(axis, idx)
        return x


@dataclass
class RimInput:
    """A step's input window, rebuilt on each call in the shared input arena: its rim (the
    background and the zero padding around the core, up to four strips kept at batch 1),
    then the core pasted in."""

    shape: tuple[int, int, int, int]  # (N, C, h, w)
    core: tuple[slice, slice]
    strips: list[tuple[slice, slice, torch.Tensor]]

    @classmethod
    def of(cls, x: Background, origin, shape, rows, cols, dtype: torch.dtype):
        """The rim of the (N, C, h, w) window at `origin` of the background map x: its values
        around the core rows x cols (buffer coordinates), zeros past the map's edges; in
        `dtype`, the one the buffer has."""
        (r0, r1), (c0, c1) = rows, cols
        h, w = shape[-2:]
        regions = [
            (slice(0, r0), slice(0, w)), (slice(r1, h), slice(0, w)),
            (slice(r0, r1), slice(0, c0)), (slice(r0, r1), slice(c1, w)),
        ]  # fmt: skip
        strips = []
        for rs, cs in regions:
            if rs.stop > rs.start and cs.stop > cs.start:
                size = (rs.stop - rs.start, cs.stop - cs.start)
                strip = torch.zeros(1, x.shape[1], *size, dtype=dtype)
                # the part of the strip inside the map, in map coordinates
                a0, a1 = max(origin[0] + rs.start, 0), min(origin[0] + rs.stop, x.shape[2])
                b0, b1 = max(origin[1] + cs.start, 0), min(origin[1] + cs.stop, x.shape[3])
                if a1 > a0 and b1 > b0:
                    ra, ca = a0 - origin[0] - rs.start, b0 - origin[1] - cs.start
                    strip[:, :, ra : ra + a1 - a0, ca : ca + b1 - b0] = x.region(a0, a1, b0, b1)
                strips.append((rs, cs, strip))
        return cls(shape, (slice(r0, r1), slice(c0, c1)), strips)

    def fill(self, arena: torch.Tensor, core: torch.Tensor, channels_last: bool) -> torch.Tensor:
        buf = carve(arena, self.shape, channels_last)
        for rs, cs, strip in self.strips:
            buf[:, :, rs, cs] = strip
        buf[:, :, self.core[0], self.core[1]] = core
        return buf
