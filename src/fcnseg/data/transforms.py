"""Paired image/mask transforms that keep every label on the pixel it describes, and batching.

Each transform takes and returns ``(image, target)``: image (3, H, W) uint8 (or float) tensor,
target (H, W) integer tensor. Geometry is applied to both with the same parameters; images are
resampled bilinearly, targets by nearest neighbour on the same pixel-centre grid
(``align_corners=False`` / ``"nearest-exact"``; plain ``"nearest"`` would shift labels by up to
half a pixel).

Randomness: every random transform takes an optional ``generator`` (a ``torch.Generator``) to
make it reproducible on its own; without one it draws from torch's global RNG, which
``torch.manual_seed`` seeds and which DataLoader seeds differently in each worker.

FCN.md section 4: the paper reports no gain from mirroring and jittering; the reference trains
on whole images, batch 1. These transforms are for other data and recipes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F

from ..weights import Preprocessing

__all__ = [
    "Compose",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomScale",
    "ToTensor",
    "pad_collate",
]

Pair = tuple[torch.Tensor, torch.Tensor]


def _check_pair(image: torch.Tensor, target: torch.Tensor, who: str) -> None:
    if not isinstance(image, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(
            f"{who} takes (image, target) tensors, got ({type(image).__name__}, "
            f"{type(target).__name__}); put ToTensor() first"
        )
    if image.ndim != 3 or target.ndim != 2 or image.shape[1:] != target.shape:
        raise ValueError(
            f"{who}: expected image (C, H, W) and target (H, W) of the same H, W; got "
            f"{tuple(image.shape)} and {tuple(target.shape)}"
        )


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * torch.rand((), generator=generator).item()


@dataclass
class Compose:
    """Apply paired transforms in order."""

    transforms: Sequence[Callable[[torch.Tensor, torch.Tensor], Pair]]

    def __call__(self, image, target) -> Pair:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target


@dataclass
class ToTensor:
    """Arrays to tensors: image (H, W, 3) uint8 -> (3, H, W) uint8; target (H, W) -> int64.

    Tensors pass through (the target cast to int64), so it is safe to apply twice.
    """

    def __call__(self, image, target) -> Pair:
        if not isinstance(image, torch.Tensor):
            a = np.asarray(image)
            if a.ndim != 3 or a.shape[2] != 3:
                raise ValueError(f"ToTensor: expected an image (H, W, 3), got shape {a.shape}")
            image = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
        if not isinstance(target, torch.Tensor):
            target = torch.from_numpy(np.array(target))
        return image, target.long()


@dataclass
class RandomHorizontalFlip:
    """Mirror image and target left-right together with probability `p`."""

    p: float = 0.5
    generator: torch.Generator | None = field(default=None, kw_only=True, repr=False)

    def __post_init__(self):
        if not 0 <= self.p <= 1:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {self.p}")

    def __call__(self, image, target) -> Pair:
        _check_pair(image, target, "RandomHorizontalFlip")
        if torch.rand((), generator=self.generator).item() < self.p:
            return image.flip(-1), target.flip(-1)
        return image, target


@dataclass
class RandomScale:
    """Resize both by a factor drawn uniformly from [min_scale, max_scale].

    Output size round(H * s) x round(W * s) (at least 1). Image: bilinear, rounded back to
    uint8 if it was uint8; target: nearest on the same grid, so labels stay aligned.
    """

    min_scale: float = 0.5
    max_scale: float = 2.0
    generator: torch.Generator | None = field(default=None, kw_only=True, repr=False)

    def __post_init__(self):
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(
                f"RandomScale: need 0 < min_scale <= max_scale, got {self.min_scale}, "
                f"{self.max_scale}"
            )

    def __call__(self, image, target) -> Pair:
        _check_pair(image, target, "RandomScale")
        s = _uniform(self.min_scale, self.max_scale, self.generator)
        h, w = target.shape
        size = (max(1, round(h * s)), max(1, round(w * s)))
        if size == (h, w):
            return image, target
        x = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)
        x = x[0]
        if image.dtype == torch.uint8:
            x = x.round().clamp(0, 255).to(torch.uint8)
        # labels <= 255 are exact in float32; nearest-exact samples pixel centres like bilinear
        t = F.interpolate(target[None, None].float(), size=size, mode="nearest-exact")
        return x, t[0, 0].to(target.dtype)


@dataclass
class RandomCrop:
    """Cut a random `size` window (an int or (h, w)) from both at the same place.

    An image smaller than the window is first padded bottom/right: image with `pad_value`,
    target with `ignore_index`, so padding never counts in the loss.
    """

    size: int | tuple[int, int]
    ignore_index: int = 255
    pad_value: float = field(default=0.0, kw_only=True)
    generator: torch.Generator | None = field(default=None, kw_only=True, repr=False)

    def __post_init__(self):
        size = self.size
        hw = (size, size) if isinstance(size, Integral) else tuple(size)
        if len(hw) != 2 or not all(isinstance(v, Integral) and v > 0 for v in hw):
            raise ValueError(f"RandomCrop: size must be a positive int or (h, w), got {size!r}")
        self.size = (int(hw[0]), int(hw[1]))

    def __call__(self, image, target) -> Pair:
        _check_pair(image, target, "RandomCrop")
        ch, cw = self.size  # type: ignore[misc]
        h, w = target.shape
        if h < ch or w < cw:
            pad = (0, max(cw - w, 0), 0, max(ch - h, 0))  # left, right, top, bottom
            image = F.pad(image, pad, value=self.pad_value)
            target = F.pad(target, pad, value=self.ignore_index)
            h, w = target.shape
        top = int(torch.randint(0, h - ch + 1, (), generator=self.generator))
        left = int(torch.randint(0, w - cw + 1, (), generator=self.generator))
        return (
            image[:, top : top + ch, left : left + cw],
            target[top : top + ch, left : left + cw],
        )


@dataclass
class Normalize:
    """uint8 (or 0-255 float) image (3, H, W), RGB -> float32 as `preprocessing` asks.

    x = (image[order] * scale - mean) / std, the arithmetic of `Preprocessing.__call__` done on
    a CHW tensor (BGR weights get the channels reversed). The target is unchanged.
    """

    preprocessing: Preprocessing

    def __post_init__(self):
        if self.preprocessing.channel_order not in ("RGB", "BGR"):
            raise ValueError(
                f"Normalize: channel_order must be 'RGB' or 'BGR', "
                f"got {self.preprocessing.channel_order!r}"
            )

    def __call__(self, image, target) -> Pair:
        _check_pair(image, target, "Normalize")
        if image.shape[0] != 3:
            raise ValueError(f"Normalize: expected 3 channels, got {image.shape[0]}")
        pp = self.preprocessing
        x = image.float()
        if pp.channel_order == "BGR":
            x = x.flip(0)
        mean = torch.tensor(pp.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(pp.std, dtype=torch.float32).view(3, 1, 1)
        return (x * pp.scale - mean) / std, target


def pad_collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    ignore_index: int = 255,
    size_divisor: int = 1,
    pad_value: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch images of different sizes: pad each at the bottom/right to a common size.

    The size is the largest H and W in the batch, each rounded up to a multiple of
    `size_divisor`. Images are padded with `pad_value`, targets with `ignore_index`, so padded
    pixels never count in the loss or the metrics. Returns (images (N, 3, H, W) float32, in the
    images' own value range, targets (N, H, W) int64).

    Padding changes what a fully convolutional net sees near the bottom/right edge. The paper's
    alternative keeps every image whole: batch 1 with gradients accumulated over several images
    per update (FCN.md section 4: the reference trains with batch 1; FCN-AlexNet accumulates 20);
    the trainer implements accumulation, and then no padding is needed.
    """
    if len(batch) == 0:
        raise ValueError("pad_collate: the batch is empty")
    if size_divisor < 1:
        raise ValueError(f"pad_collate: size_divisor must be >= 1, got {size_divisor}")
    images, targets = [], []
    for i, (image, target) in enumerate(batch):
        image, target = torch.as_tensor(image), torch.as_tensor(target)
        if image.ndim != 3 or target.ndim != 2 or image.shape[1:] != target.shape:
            raise ValueError(
                f"pad_collate: item {i} has image {tuple(image.shape)} and target "
                f"{tuple(target.shape)}; expected (C, H, W) and (H, W) of the same H, W"
            )
        images.append(image)
        targets.append(target)
    channels = {x.shape[0] for x in images}
    if len(channels) != 1:
        raise ValueError(f"pad_collate: images have different channel counts {sorted(channels)}")
    h = max(t.shape[0] for t in targets)
    w = max(t.shape[1] for t in targets)
    h, w = math.ceil(h / size_divisor) * size_divisor, math.ceil(w / size_divisor) * size_divisor
    out = torch.full((len(images), channels.pop(), h, w), float(pad_value), dtype=torch.float32)
    lab = torch.full((len(images), h, w), ignore_index, dtype=torch.int64)
    for i, (x, t) in enumerate(zip(images, targets, strict=True)):
        out[i, :, : x.shape[1], : x.shape[2]] = x
        lab[i, : t.shape[0], : t.shape[1]] = t
    return out, lab
