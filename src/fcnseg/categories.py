"""Class names and colours: ImageNet-1k (for classifiers and heatmaps) and PASCAL VOC."""

from __future__ import annotations

from functools import cache
from importlib import resources

import numpy as np

__all__ = ["VOC_CLASSES", "imagenet_classes", "voc_palette"]

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


@cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in the standard index order (WordNet lemmas)."""
    text = resources.files("fcnseg").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    names = tuple(line.split("\t", 1)[1] for line in text.splitlines() if line)
    assert len(names) == 1000, len(names)
    return names


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map, (n, 3) uint8: class c's bits spread over R, G, B."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for c in range(n):
        r = g = b = 0
        v = c
        for j in range(8):
            r |= ((v >> 0) & 1) << (7 - j)
            g |= ((v >> 1) & 1) << (7 - j)
            b |= ((v >> 2) & 1) << (7 - j)
            v >>= 3
        palette[c] = (r, g, b)
    return palette
