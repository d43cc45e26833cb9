"""Fully convolutional networks: one trunk, a score layer, and skips described as data.

FCN-32s, FCN-16s, FCN-8s and the at-once FCN-8s differ only in their `Head`: which trunk
features they fuse (pool4 at 1/16, pool3 at 1/8), the names of their score and upsampling
layers, and an optional feature scale. Crop offsets are not written down anywhere: they are
derived from the layers' geometry at construction (see geometry.py), and for the VGG16
reference layout come out as the reference's 19; 5 / 27; 5, 9 / 31.

The same class holds the reference release's other shapes, as data too: several input
streams (whole trunks whose score maps are summed with fixed weights, NYUDv2 colour + HHA)
and several heads on one trunk (SIFT Flow's semantic and geometric outputs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    score: str = "score_fr"  # the 1x1 score layer on the trunk's output
    # the 2x upsamplers' kernel, default 4; 3 for trunks whose stride-s grid sits at s * x
    # (ResNet, MobileNet: centred "same" convs), where 4 would be half a pixel off
    up_kernel: int | None = None

    def suffixed(self, suffix: str) -> Head:
        """The same head with `suffix` on every layer name it owns (SIFT Flow: "_sem", "_geo");
        the trunk features it taps keep their names."""
        skips = tuple(replace(s, score=s.score + suffix, up=s.up + suffix) for s in self.skips)
        return replace(self, skips=skips, final=self.final + suffix, score=self.score + suffix)


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
    # FCN-AlexNet: 63/32 puts the stride-32 grid on an integer crop (18)
    "fcn_alexnet": Head((), "upscore", 32, final_kernel=63),
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

    One stream, one head (every registered model): forward (N, C_in, H, W) float ->
    (N, num_classes, H, W) logits, for any H, W >= 1 (C_in = 3 unless the trunk says so).

    Several streams (`trunk` a dict {stream: Trunk}, each with its own name suffix): forward
    takes a dict {stream: (N, C_s, H, W)} with exactly those keys, runs each trunk, scores
    each trunk's output with its own score layer (``score_fr`` + suffix), and sums the score
    maps with `stream_weights` (NYUDv2 colour + HHA: {"color": 0.5, "hha": 0.5}) before the
    one head's upsampling. Skips are not defined for several streams.

    Several heads (`head` a dict {output: Head}, `num_classes` a dict too): forward returns a
    dict {output: (N, num_classes[output], H, W)} (SIFT Flow: {"sem": 33, "geo": 3}).
    """

    def __init__(
        self,
        trunk: Trunk | Mapping[str, Trunk],
        head: Head | Mapping[str, Head],
        num_classes: int | Mapping[str, int],
        *,
        same_padding: bool = False,
        pad_to: int = 1,
        stream_weights: Mapping[str, float] | None = None,
        learn_2x: bool = True,
    ):
        super().__init__()
        trunks = dict(trunk) if isinstance(trunk, Mapping) else {"": trunk}
        heads = dict(head) if isinstance(head, Mapping) else {"": head}
        classes = (
            dict(num_classes)
            if isinstance(num_classes, Mapping)
            else {k: num_classes for k in heads}
        )
        self.stream_names = None if not isinstance(trunk, Mapping) else tuple(trunks)
        self.head_names = None if not isinstance(head, Mapping) else tuple(heads)
        if set(classes) != set(heads):
            raise ValueError(f"num_classes {classes} must name the heads {list(heads)}")
        for k, c in classes.items():
            if c < 1:
                raise ValueError(f"num_classes must be >= 1, got {c}" + (f" for {k!r}" * bool(k)))
        if len(trunks) > 1:
            if any(h.skips for h in heads.values()):
                raise ValueError("skips are not defined for several streams (late fusion at 1/32)")
            if stream_weights is None or set(stream_weights) != set(trunks):
                raise ValueError(f"stream_weights must give one weight per stream {list(trunks)}")
        self.stream_weights = dict(stream_weights or {})
        self.num_classes = classes[""] if self.head_names is None else classes
        self.heads = heads
        self.head = next(iter(heads.values()))  # the head (of the first output)
        self.pad_to = pad_to  # pad the input (bottom/right, zeros) to a multiple of this
        self.streams = {s: tuple(t.layers) for s, t in trunks.items()}
        self.in_channels = {s: t.in_channels for s, t in trunks.items()}
        self._suffix = {s: t.suffix for s, t in trunks.items()}
        self.trunk_names = tuple(n for names in self.streams.values() for n in names)
        for t in trunks.values():
            for name, layer in t.layers.items():
                self.add_module(name, layer)
        for key, hd in heads.items():
            C = classes[key]
            for t in trunks.values():  # score_fr, score_frcolor, score_fr_sem ...
                score = zero_init_(nn.Conv2d(t.channels[t.out], C, 1))
                self.add_module(hd.score + t.suffix, score)
            t = next(iter(trunks.values()))
            for skip in hd.skips:
                c_tap = t.channels[skip.tap + t.suffix]
                self.add_module(skip.score, zero_init_(nn.Conv2d(c_tap, C, 1)))
                # learned 2x upsampling, initialised bilinear; "same" pads it to keep stride exact
                up = bilinear_upsampler(C, 2, hd.up_kernel, padding=1 if same_padding else 0,
                                        trainable=learn_2x)  # fmt: skip
                self.add_module(skip.up, up)
            f = hd.final_factor
            pad = f // 2 if same_padding else 0
            final = bilinear_upsampler(C, f, hd.final_kernel, padding=pad, trainable=False)
            self.add_module(hd.final, final)  # fixed bilinear, as the paper
        first = next(iter(trunks.values()))
        self._tap_suffix = first.suffix
        self.taps = frozenset(s.tap + first.suffix for h in heads.values() for s in h.skips)
        self._plans = {k: self._plan(hd) for k, hd in heads.items()}
        self.fusions, self.final_offset = next(iter(self._plans.values()))
        self.crop_offsets = {}
        for k, (fusions, final_offset) in self._plans.items():
            self.crop_offsets.update({f.skip.score: f.crop_tap for f in fusions})
            self.crop_offsets[heads[k].final] = final_offset
        self.preprocessing = None  # set by the builder from the weights (see fcnseg.weights)

    # ------------------------------------------------------------------ geometry
    def _trunk_map(self, upto: str, stream: str | None = None) -> CoordMap:
        """Coordinate map from the input to trunk feature `upto` (of `stream`, default first)."""
        names = self.streams[next(iter(self.streams)) if stream is None else stream]
        return compose(getattr(self, n) for n in names[: names.index(upto) + 1])

    def _plan(self, head: Head) -> tuple[tuple[_Fuse, ...], int]:
        tops = {self._trunk_map(names[-1], s) for s, names in self.streams.items()}
        if len(tops) != 1:  # score_fr is 1x1: its frame is the trunk's
            raise ValueError(f"streams {list(self.streams)} end on different grids: cannot sum")
        (frame,) = tops
        suffix = next(iter(self._suffix.values()))
        fusions = []
        for skip in head.skips:
            up = frame.then(coord_map(getattr(self, skip.up)))
            tap = self._trunk_map(skip.tap + suffix)
            offset = crop_offset(tap, up)  # tap pos = up pos + offset
            if offset >= 0:  # reference: the tap's scores are the larger map, crop them
                fusions.append(_Fuse(skip, offset, 0))
                frame = up
            else:
                fusions.append(_Fuse(skip, 0, -offset))
                frame = tap
        out = frame.then(coord_map(getattr(self, head.final)))
        final = crop_offset(out, IDENTITY)
        if final < 0:
            raise ValueError(f"output starts {-final} px inside the input: layout cannot cover it")
        return tuple(fusions), final

    # ------------------------------------------------------------------ forward
    def _inputs(self, x) -> dict[str, torch.Tensor]:
        """The input of every stream, checked: {stream: (N, C_s, H, W)}."""
        if self.stream_names is None:
            xs = {"": x}
        elif not isinstance(x, Mapping) or set(x) != set(self.stream_names):
            got = sorted(x) if isinstance(x, Mapping) else type(x).__name__
            raise ValueError(f"expected a dict of inputs {list(self.stream_names)}, got {got}")
        else:
            xs = dict(x)
        for s, t in xs.items():
            c = self.in_channels[s]
            if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[1] != c:
                what = f"input {s!r}" if s else "input"
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{what}: expected a float tensor (N, {c}, H, W), got {got}")
        sizes = [(t.shape[0], *t.shape[2:]) for t in xs.values()]
        if any(s != sizes[0] for s in sizes[1:]):  # not a set: traced sizes are tensors
            shapes = {s: tuple(t.shape) for s, t in xs.items()}
            raise ValueError(f"inputs differ in batch or size: {shapes}")
        return xs

    def example_input(
        self, n: int = 1, h: int = 64, w: int = 64, *, generator=None, dtype=None, device=None
    ):
        """A random input of the kind `forward` takes: (n, C, h, w) normal noise with the net's
        input channels (3; 4 for NYUDv2's colour + depth), or a dict {stream: (n, C_s, h, w)}
        for several streams (NYUDv2's colour + HHA): for tests, benchmarks and tracing."""
        xs = {s: torch.randn((n, c, h, w), generator=generator, dtype=dtype, device=device)
              for s, c in self.in_channels.items()}  # fmt: skip
        return xs[""] if self.stream_names is None else xs

    def outputs(self, y) -> dict[str, torch.Tensor]:
        """`forward`'s result as {output: scores}: {"": logits} for one head."""
        return {"": y} if self.head_names is None else dict(y)

    def forward(self, x):
        xs = self._inputs(x)
        H, W = next(iter(xs.values())).shape[-2:]
        feats: dict[str, torch.Tensor] = {}
        tops: dict[str, torch.Tensor] = {}
        for s, names in self.streams.items():
            h = xs[s]
            if self.pad_to > 1:
                h = F.pad(h, (0, -W % self.pad_to, 0, -H % self.pad_to))
            for name in names:  # VGG16: pool3 1/8 256ch, pool4 1/16 512ch, fc7 1/32 4096ch
                h = getattr(self, name)(h)
                if name in self.taps:
                    feats[name] = h
            tops[s] = h
        top = tops[""] if self.stream_names is None else tops
        if self.head_names is None:
            return self.forward_head(feats, top, H, W)
        return {k: self.forward_head(feats, top, H, W, output=k) for k in self.head_names}

    def forward_head(
        self,
        taps: dict[str, torch.Tensor],
        top: torch.Tensor | Mapping[str, torch.Tensor],
        H: int,
        W: int,
        upsample: Callable[[nn.ConvTranspose2d, torch.Tensor], torch.Tensor] | None = None,
        output: str = "",
    ) -> torch.Tensor:
        """Scores of head `output` from the trunk's output `top` and its `taps`, fused and
        cropped to H x W (several streams: `top` is a dict {stream: output}).

        `upsample(layer, x)` runs each transposed conv (default: `layer(x)`); FastFCN passes
        an exact faster one.
        """
        up_fn = upsample or (lambda layer, x: layer(x))
        if output not in self.heads:
            raise ValueError(f"no head {output!r}: this FCN's heads are {list(self.heads)}")
        head, (fusions, final_offset) = self.heads[output], self._plans[output]
        if isinstance(top, Mapping):  # streams' 1/32 scores summed with their weights
            parts = [self.stream_weights[s] * getattr(self, head.score + self._suffix[s])(t)
                     for s, t in top.items()]  # fmt: skip
            score = sum(parts[1:], parts[0])
        else:
            score = getattr(self, head.score)(top)  # 1/32, C ch
        for fuse in fusions:
            s = fuse.skip
            up = up_fn(getattr(self, s.up), score)  # 2x the coarser scores
            tap = taps[s.tap + self._tap_suffix]
            tap = tap if s.feature_scale == 1 else tap * s.feature_scale
            tap = getattr(self, s.score)(tap)  # the finer feature's scores
            # crop both to their common extent; slicing clamps at the end, so no Python min()
            # (which a tracer would freeze at the trace size) is needed
            cu, ct = fuse.crop_up, fuse.crop_tap
            up = up[:, :, cu : cu + tap.shape[2] - ct, cu : cu + tap.shape[3] - ct]
            tap = tap[:, :, ct : ct + up.shape[2], ct : ct + up.shape[3]]
            score = up + tap  # sum fusion
        out = up_fn(getattr(self, head.final), score)  # back to the input's scale
        o = final_offset
        if out.shape[-2] < o + H or out.shape[-1] < o + W:
            raise RuntimeError(f"output {tuple(out.shape[-2:])} too small for crop {o} + {H}x{W}")
        return _crop(out, o, H, W).contiguous()  # exactly H x W

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, crop_offsets={self.crop_offsets}"
