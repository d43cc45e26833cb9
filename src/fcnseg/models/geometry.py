"""Coordinate maps between feature maps, and the crop offsets they imply.

This is the reference's crop-layer arithmetic (Caffe ``coord_map``), written for PyTorch
modules. Every spatial layer maps a position in its input to a position in its output as
``out = a * in + b``:

- conv / pool (kernel k, stride s, padding p, dilation d): a = 1/s, b = (p - d(k-1)/2) / s
- transposed conv:                                        a = s,   b = d(k-1)/2 - p
- point-wise layers (ReLU, dropout, LRN, batch norm):     identity

Composing the maps along the path from the input to two feature maps tells how one sits
inside the other; fusing them needs a = 1 and an integer b, the crop offset. For the VGG16
reference layout this gives FCN-32s 19, FCN-16s 5 / 27, FCN-8s 5, 9 / 31 and FCN-AlexNet 18.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from torch import nn

__all__ = ["IDENTITY", "CoordMap", "compose", "coord_map", "crop_offset"]


@dataclass(frozen=True)
class CoordMap:
    """out = scale * in + shift, exact rational arithmetic."""

    scale: Fraction
    shift: Fraction

    def then(self, nxt: CoordMap) -> CoordMap:
        """Apply self, then nxt."""
        return CoordMap(nxt.scale * self.scale, nxt.scale * self.shift + nxt.shift)

    def inverse(self) -> CoordMap:
        return CoordMap(1 / self.scale, -self.shift / self.scale)


IDENTITY = CoordMap(Fraction(1), Fraction(0))


def _pair0(v) -> int:
    if isinstance(v, tuple):
        if len(set(v)) != 1:
            raise ValueError(f"non-square geometry {v} is not supported by the crop arithmetic")
        return int(v[0])
    return int(v)


def coord_map(layer: nn.Module) -> CoordMap:
    """The coordinate map of one module (recursing into nn.Sequential). A module that describes
    itself (a `coord_map()` method or attribute: residual blocks, a timm stage measured by
    fcnseg.models.timm_trunk) is taken at its word, a Sequential one too."""
    geometry = getattr(layer, "coord_map", None)
    if callable(geometry):
        return geometry()
    if isinstance(layer, nn.Sequential):
        return compose(layer)
    if isinstance(layer, nn.ConvTranspose2d):
        k, s, p, d = (
            _pair0(layer.kernel_size),
            _pair0(layer.stride),
            _pair0(layer.padding),
            _pair0(layer.dilation),
        )
        return CoordMap(Fraction(s), Fraction(d * (k - 1), 2) - p)
    if isinstance(layer, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
        k, s, p = _pair0(layer.kernel_size), _pair0(layer.stride), _pair0(layer.padding)
        d = _pair0(getattr(layer, "dilation", 1))
        return CoordMap(Fraction(1, s), (p - Fraction(d * (k - 1), 2)) / s)
    return IDENTITY  # point-wise


def compose(layers: Iterable[nn.Module]) -> CoordMap:
    m = IDENTITY
    for layer in layers:
        m = m.then(coord_map(layer))
    return m


def crop_offset(bigger: CoordMap, smaller: CoordMap) -> int:
    """Offset at which to crop the map `bigger` so that it lines up with `smaller`.

    Both maps are taken from the same origin (the network input). Raises if the two maps
    have different scales or are misaligned by a fraction of a pixel, as the reference did.
    """
    rel = smaller.inverse().then(bigger)  # position in `smaller` -> position in `bigger`
    if rel.scale != 1:
        raise ValueError(f"cannot crop maps at different scales (ratio {rel.scale})")
    if rel.shift.denominator != 1:
        raise ValueError(f"maps are misaligned by a fraction of a pixel ({rel.shift})")
    return int(rel.shift)
