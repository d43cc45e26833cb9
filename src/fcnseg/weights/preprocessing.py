"""How an image (or a depth map) becomes the float tensor a set of weights expects.

One `Preprocessing` per training recipe: torchvision's [0, 1] RGB normalized by ImageNet's
statistics, or Caffe's 0-255 BGR minus a per-dataset mean (FCN.md sections 3 and 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "CAFFE_BGR",
    "EFFICIENTNET_LITE",
    "GOOGLENET_RGB",
    "IMAGENET_RGB",
    "NYUD_BGR",
    "NYUD_HHA",
    "NYUD_LOG_DEPTH",
    "SIFTFLOW_BGR",
    "LogDepth",
    "Preprocessing",
    "prepare",
]


@dataclass(frozen=True)
class Preprocessing:
    """How an 8-bit RGB image becomes the float tensor a set of weights expects.

    x = (image[..., order] * scale - mean) / std, with mean/std given in `channel_order`.
    """

    channel_order: str  # "RGB" or "BGR"
    scale: float  # 1/255 for torchvision's [0, 1] inputs, 1 for Caffe's 0-255
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        """Refuse what cannot give a meaningful input: unknown order, zero scale or std."""
        finite = all(isinstance(v, int | float) and math.isfinite(v)
                     for v in (self.scale, *self.mean, *self.std))  # fmt: skip
        ok = self.channel_order in ("RGB", "BGR") and len(self.mean) == len(self.std) == 3
        if not (ok and finite and self.scale != 0 and 0 not in self.std):
            raise ValueError(
                f"preprocessing {self}: needs channel_order RGB or BGR, a finite non-zero scale, "
                f"3 finite means and 3 finite non-zero stds (a zero std divides by zero)"
            )

    def __call__(self, image) -> torch.Tensor:
        """PIL image or uint8 array (H, W, 3), RGB -> float32 tensor (3, H, W)."""
        a = np.asarray(image)
        if a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got array of shape {a.shape}")
        # np.array copies: a PIL image's buffer is read-only, which torch warns about
        x = torch.from_numpy(np.array(a)).permute(2, 0, 1).float()
        if self.channel_order == "BGR":
            x = x.flip(0)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x * self.scale - mean) / std

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0-255 float) batch (N, 3, H, W), RGB, any device -> normalized float32."""
        x = x.float()
        if self.channel_order == "BGR":
            x = x.flip(1)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x * self.scale - mean) / std

    def invert(self, x: torch.Tensor) -> np.ndarray:
        """float tensor (3, H, W) -> uint8 RGB array (H, W, 3): to show what the net saw."""
        x = x.detach().cpu() * torch.tensor(self.std).view(3, 1, 1) + torch.tensor(self.mean).view(
            3, 1, 1
        )
        x = x / self.scale
        if self.channel_order == "BGR":
            x = x.flip(0)
        return x.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


IMAGENET_RGB = Preprocessing("RGB", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
GOOGLENET_RGB = Preprocessing("RGB", 1 / 255, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # transform_input
CAFFE_BGR = Preprocessing("BGR", 1.0, (104.00699, 116.66877, 122.67892))  # FCN.md section 3
EFFICIENTNET_LITE = Preprocessing("RGB", 1.0, (127.0, 127.0, 127.0), (128.0, 128.0, 128.0))

# The reference release's other datasets (FCN.md section 8; the release's data layers).
NYUD_BGR = Preprocessing("BGR", 1.0, (116.190, 97.203, 92.318))
# HHA images are used in their stored channel order (no flip), minus the HHA mean
NYUD_HHA = Preprocessing("RGB", 1.0, (132.431, 94.076, 118.477))
SIFTFLOW_BGR = Preprocessing("BGR", 1.0, (114.578, 115.294, 108.353))


@dataclass(frozen=True)
class LogDepth:
    """A depth map as stored (NYUDv2's 16-bit PNG) -> log(d) - mean, one channel."""

    mean: float

    def __call__(self, depth) -> torch.Tensor:
        """uint16 / float array (H, W) -> float32 tensor (1, H, W)."""
        d = np.asarray(depth, dtype=np.float32)
        if d.ndim != 2:
            raise ValueError(f"expected a depth map (H, W), got array of shape {d.shape}")
        if (d <= 0).any():
            raise ValueError(
                f"depth map has {int((d <= 0).sum())} values <= 0, whose log is undefined; "
                f"fill the holes first (the NYUDv2 release's depth maps are already filled)"
            )
        return torch.from_numpy(np.log(d) - self.mean).unsqueeze(0)

    def batch(self, d: torch.Tensor) -> torch.Tensor:
        """Depth batch (N, 1, H, W) as stored, any device -> log(d) - mean, float32.

        Pixels without depth (0: holes, or the padding of a batch of unequal sizes) become 0,
        the value of a depth equal to exp(mean): finite, so they cannot poison their neighbours.
        """
        d = d.float()
        return torch.where(d > 0, torch.log(d.clamp_min(1e-12)) - self.mean, 0.0)


NYUD_LOG_DEPTH = LogDepth(7.844)


def prepare(preprocessing, x):
    """A collated batch -> the model's input, by the model's `preprocessing`:

    - `Preprocessing` or `LogDepth`: its `.batch(x)`;
    - a dict of them (one per input) and a dict batch (late fusion, {"color": ..., "hha": ...}):
      each input by its own;
    - a dict of them and one tensor (early fusion, colour + depth in 4 channels): the channels
      split in the dict's order (3 per image, 1 per depth map), each prepared, concatenated.
    """
    if not isinstance(preprocessing, dict):
        return preprocessing.batch(x)
    if isinstance(x, dict):
        if set(x) != set(preprocessing):
            raise ValueError(f"inputs {sorted(x)} do not match the model's {sorted(preprocessing)}")
        return {k: preprocessing[k].batch(v) for k, v in x.items()}
    widths = [1 if isinstance(p, LogDepth) else 3 for p in preprocessing.values()]
    if x.shape[1] != sum(widths):
        raise ValueError(f"a batch of {x.shape[1]} channels for inputs {list(preprocessing)} "
                         f"({sum(widths)} channels)")  # fmt: skip
    parts = torch.split(x, widths, dim=1)
    return torch.cat([p.batch(v) for p, v in zip(preprocessing.values(), parts, strict=True)], 1)
