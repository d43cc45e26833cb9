"""The paper's efficiency claim: a convolutionalized classifier vs the same classifier slid.

Running the classifier on every crop at stride 32 recomputes the overlapping features; the
fully convolutional net computes them once. Both give the same grid of class scores, up to
the crops' own zero padding at their borders (FCN.md section 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .models import convolutionalize
from .timing import median_time

__all__ = ["SlideTiming", "sliding_window_scores", "time_fcn_vs_sliding"]


@torch.no_grad()
def sliding_window_scores(
    classifier: nn.Module, x: torch.Tensor, crop: int, stride: int = 32, batch: int = 1
) -> torch.Tensor:
    """(1, 3, H, W) -> (1, classes, rows, cols): the classifier on every crop x crop window."""
    _, _, H, W = x.shape
    rows, cols = (H - crop) // stride + 1, (W - crop) // stride + 1
    crops = [x[:, :, i * stride : i * stride + crop, j * stride : j * stride + crop]
             for i in range(rows) for j in range(cols)]  # fmt: skip
    out = [classifier(torch.cat(crops[k : k + batch])) for k in range(0, len(crops), batch)]
    return torch.cat(out).T.reshape(1, -1, rows, cols)


@dataclass
class SlideTiming:
    image: int
    crop: int
    grid: tuple[int, int]
    fcn_s: float
    sliding_s: float
    batched_s: float
    max_abs_diff: float  # FCN map vs per-crop scores (crop borders see zero padding)
    scale: float  # max |score|, to read the difference against

    @property
    def speedup(self) -> float:
        return self.sliding_s / self.fcn_s


@torch.no_grad()
def time_fcn_vs_sliding(
    classifier: nn.Module, *, image: int = 500, crop: int = 224, repeats: int = 3, seed: int = 0
) -> SlideTiming:
    """Median seconds of one FCN pass vs all crops one by one vs all crops in one batch."""
    classifier = classifier.eval()
    fcn = convolutionalize(classifier).eval()
    x = torch.randn(1, 3, image, image, generator=torch.Generator().manual_seed(seed))
    dense = fcn(x)
    slid = sliding_window_scores(classifier, x, crop)
    h, w = min(dense.shape[2], slid.shape[2]), min(dense.shape[3], slid.shape[3])
    diff = (dense[:, :, :h, :w] - slid[:, :, :h, :w]).abs().max().item()
    n = slid.shape[2] * slid.shape[3]
    return SlideTiming(
        image=image,
        crop=crop,
        grid=(slid.shape[2], slid.shape[3]),
        fcn_s=median_time(lambda: fcn(x), repeats),
        sliding_s=median_time(lambda: sliding_window_scores(classifier, x, crop), repeats),
        batched_s=median_time(lambda: sliding_window_scores(classifier, x, crop, batch=n), 1),
        max_abs_diff=diff,
        scale=slid.abs().max().item(),
    )
