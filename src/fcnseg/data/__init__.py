"""Data sets, image/mask IO and paired transforms for semantic segmentation."""

from .io import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    check_labels,
    colorize,
    read_image,
    read_mask,
    write_mask,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageError",
    "check_labels",
    "colorize",
    "read_image",
    "read_mask",
    "write_mask",
]
