"""Fully convolutional networks: one trunk, a score layer, and skips described as data.

FCN-32s, FCN-16s, FCN-8s and the at-once FCN-8s differ only in their `Head`: which trunk
features they fuse (pool4 at 1/16, pool3 at 1/8), the names of their score and upsampling
layers, and an optional feature scale. Crop offsets are not written down anywhere: they are
derived from the layers' geometry at construction (see geometry.py), and for the VGG16
reference layout come out as the reference's 19; 5 / 27; 5, 9 / 31.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Trunk
from .geometry import IDENTITY, CoordMap, compose, coord_map, crop_offset
from .init import bilinear_upsampler, zero_init_

__all__ = ["FCN", "HEADS", "Head", "Skip"]


@dataclass(frozen=True)
class Skip:
    """Fuse a finer trunk feature: upsample the running scores 2x, add the feature's scores."""

    tap: str  # trunk feature, e.g. "pool4" (1/16)
    score: str  # its 1x1 score layer, e.g. "score_pool4"
    up: str  # the 2x transposed conv applied to the coarser scores, e.g. "upscore2"
    feature_scale: float = 1.0  # at-once FCN-8s: pool4 x 0.01, pool3 x 0.0001


@dataclass(frozen=True)
class Head:
    skips: tuple[Skip, ...]
    final: str  # the last, fixed bilinear upsampler
    final_factor: int  # 32, 16 or 8
    final_kernel: int | None = None  # default 2 x factor; AlexNet and GoogLeNet use 63


_POOL4 = Skip("pool4", "score_pool4", "upscore2")
_POOL3 = Skip("pool3", "score_pool3", "upscore_pool4")
HEADS = {
    "fcn32s": Head((), "upscore", 32),
    "fcn16s": Head((_POOL4,), "upscore16", 16),
    "fcn8s": Head((_POOL4, _POOL3), "upscore8", 8),
    # TPAMI: trained in one stage; the skips' features are scaled down before scoring
    "fcn8s_atonce": Head(
        (replace(_POOL4, feature_scale=0.01), replace(_POOL3, feature_scale=0.0001)), "upscore8", 8
    ),
}


@dataclass(frozen=True)
class _Fuse:
    """Static plan for one skip: where to crop each operand (computed from geometry)."""

    skip: Skip
    crop_tap: int  # offset into the tap's scores
    crop_up: int  # offset into the upsampled coarse scores (non-zero only in odd layouts)


def _crop(x: torch.Tensor, offset: int, h: int, w: int) -> torch.Tensor:
    return x[:, :, offset : offset + h, offset : offset + w]


class FCN(nn.Module):
    """Trunk layers (registered under their reference names) + score layers + upsamplers.

    forward: (N, 3, H, W) float -> (N, num_classes, H, W) logits, for any H, W >= 1.
    """

    def __init__(
        self,
        trunk: Trunk,
        head: Head,
        num_classes: int,
        *,
        same_padding: bool = False,
        pad_to: int = 1,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.head = head
        self.pad_to = pad_to  # pad the input (bottom/right, zeros) to a multiple of this
        self.trunk_names = tuple(trunk.layers)
        for name, layer in trunk.layers.items():
            self.add_module(name, layer)
        C = num_classes
        self.score_fr = zero_init_(nn.Conv2d(trunk.channels[trunk.out], C, 1))
        for skip in head.skips:
            self.add_module(skip.score, zero_init_(nn.Conv2d(trunk.channels[skip.tap], C, 1)))
            # learned 2x upsampling, initialised bilinear; "same" pads it to keep stride exact
            self.add_module(skip.up, bilinear_upsampler(C, 2, padding=1 if same_padding else 0))
        f = head.final_factor
        pad = f // 2 if same_padding else 0
        final = bilinear_upsampler(C, f, head.final_kernel, padding=pad, trainable=False)
        self.add_module(head.final, final)  # fixed bilinear, as the paper
        self.taps = frozenset(s.tap for s in head.skips)
        self.fusions, self.final_offset = self._plan()
        self.crop_offsets = {f.skip.score: f.crop_tap for f in self.fusions}
        self.crop_offsets[head.final] = self.final_offset
        self.preprocessing = None  # set by the builder from the weights (see fcnseg.weights)

    # ------------------------------------------------------------------ geometry
    def _trunk_map(self, upto: str) -> CoordMap:
        """Coordinate map from the input to trunk feature `upto`."""
        names = self.trunk_names[: self.trunk_names.index(upto) + 1]
        return compose(getattr(self, n) for n in names)

    def _plan(self) -> tuple[tuple[_Fuse, ...], int]:
        frame = self._trunk_map(self.trunk_names[-1])  # score_fr is 1x1: same frame
        fusions = []
        for skip in self.head.skips:
            up = frame.then(coord_map(getattr(self, skip.up)))
            offset = crop_offset(self._trunk_map(skip.tap), up)  # tap pos = up pos + offset
            if offset >= 0:  # reference: the tap's scores are the larger map, crop them
                fusions.append(_Fuse(skip, offset, 0))
                frame = up
            else:
                fusions.append(_Fuse(skip, 0, -offset))
                frame = self._trunk_map(skip.tap)
        out = frame.then(coord_map(getattr(self, self.head.final)))
        final = crop_offset(out, IDENTITY)
        if final < 0:
            raise ValueError(f"output starts {-final} px inside the input: layout cannot cover it")
        return tuple(fusions), final

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a float tensor (N, 3, H, W), got shape {tuple(x.shape)}")
        H, W = x.shape[-2:]
        if self.pad_to > 1:
            x = F.pad(x, (0, -W % self.pad_to, 0, -H % self.pad_to))
        feats: dict[str, torch.Tensor] = {}
        h = x
        for name in self.trunk_names:  # VGG16: pool3 1/8 256ch, pool4 1/16 512ch, fc7 1/32 4096ch
            h = getattr(self, name)(h)
            if name in self.taps:
                feats[name] = h
        return self.forward_head(feats, h, H, W)

    def forward_head(
        self,
        taps: dict[str, torch.Tensor],
        top: torch.Tensor,
        H: int,
        W: int,
        upsample: Callable[[nn.ConvTranspose2d, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Scores from the trunk's output `top` and its `taps`, fused and cropped to H x W.

        `upsample(layer, x)` runs each transposed conv (default: `layer(x)`); FastFCN passes
        an exact faster one.
        """
        up_fn = upsample or (lambda layer, x: layer(x))
        score = self.score_fr(top)  # 1/32, C ch
        for fuse in self.fusions:
            s = fuse.skip
            up = up_fn(getattr(self, s.up), score)  # 2x the coarser scores
            tap = taps[s.tap] if s.feature_scale == 1 else taps[s.tap] * s.feature_scale
            tap = getattr(self, s.score)(tap)  # the finer feature's scores
            # crop both to their common extent; slicing clamps at the end, so no Python min()
            # (which a tracer would freeze at the trace size) is needed
            cu, ct = fuse.crop_up, fuse.crop_tap
            up = up[:, :, cu : cu + tap.shape[2] - ct, cu : cu + tap.shape[3] - ct]
            tap = tap[:, :, ct : ct + up.shape[2], ct : ct + up.shape[3]]
            score = up + tap  # sum fusion
        out = up_fn(getattr(self, self.head.final), score)  # back to the input's scale
        o = self.final_offset
        if out.shape[-2] < o + H or out.shape[-1] < o + W:
            raise RuntimeError(f"output {tuple(out.shape[-2:])} too small for crop {o} + {H}x{W}")
        return _crop(out, o, H, W).contiguous()  # exactly H x W

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, crop_offsets={self.crop_offsets}"
