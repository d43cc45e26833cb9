"""Segment photos: label maps, class probabilities, overlays; whole or in tiles.

    model, _ = load_model("runs/fcn/best.pt")          # or a registered name
    labels = predict(model, "cat.jpg")                  # (H, W) int64 class indices
    probs = predict_probs(model, image_array)           # (C, H, W) float32, softmax
    results = predict_paths(model, ["photos/", "*.png"], "out/")

Tiled inference. `tile=T` runs the net on overlapping T x T windows instead of the whole
image (memory grows with the window, not the image). Window starts are multiples of 32 (the
nets' output stride), so every window sees the pixel grid the whole image does; neighbouring
windows overlap by `overlap` pixels (default T // 4, widened so that the step T - overlap is a
multiple of 32) and each output pixel is taken from the one window whose border is farthest
from it: the seam sits in the middle of the overlap, >= overlap / 2 pixels from any window
edge. Windows are not blended: the label map is stitched from each window's own region.

How close is it to whole-image inference? The nets' receptive field is large (VGG16 reference
layout: 404 px), so a window's border changes the logits of pixels near it: the window sees
zeros where the whole image has content. Measured (tests/test_predict.py) on random-weight
width-0.125 FCN-8s, a 300 x 420 noise image, tile 256 (overlap 64, step 192; seams >= 32 px
from a window edge), as argmax agreement and max |logit diff| / max |logit|:

    pixels at >= d px from a seam    d = 0     32      64      96
    reference layout  agreement      99.86 %   99.97   99.99   100.00
                      max rel diff   0.010     0.0024  0.00039 0.00014
    same layout       agreement      98.41 %   98.87   99.38   99.78
                      max rel diff   0.14      0.082   0.050   0.018

A larger overlap narrows the gap (tile 256, overlap 192: 99.99 % / 99.21 %). Random weights
on noise are a hard case; trained nets were not measured.

`tile=None` tiles automatically, with `AUTO_TILE` x `AUTO_TILE` windows, only when an image
has more than `AUTO_TILE_PIXELS` pixels; `tile=0` never tiles.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .data.io import to_rgb
from .safety import check_range

__all__ = [
    "AUTO_TILE",
    "AUTO_TILE_PIXELS",
    "IMAGE_EXTENSIONS",
    "blend_overlay",
    "class_names",
    "expand_inputs",
    "predict",
    "predict_paths",
    "predict_probs",
    "resolve_device",
]

# Above ~2 Mpx (1448 x 1448) the full-width reference VGG16 needs several GB of activations.
AUTO_TILE_PIXELS = 2**21
AUTO_TILE = 1024
STRIDE = 32  # output stride of every registered net: window starts are multiples of it

ImageLike = np.ndarray | Image.Image | str | os.PathLike


# ---------------------------------------------------------------------------- devices, images
def resolve_device(
    device: str | torch.device | None, model: nn.Module | None = None
) -> torch.device:
    """`device` as a torch.device (None: where the model is, or cpu); clear error for no CUDA."""
    if device is None:
        p = None if model is None else next(model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device {device!r} is not a device name: use cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device '{device}': CUDA is not available on this machine (torch "
            f"{torch.__version__}, built with CUDA {torch.version.cuda}); use --device cpu"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device '{device}': this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s), numbered from 0")  # fmt: skip
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device '{device}': fcnseg runs on cpu or cuda[:N]")
    return dev


def _as_rgb(image: ImageLike) -> np.ndarray:
    """Path, PIL image (any mode), NumPy array or tensor -> uint8 RGB (H, W, 3): one set of
    rules for all (`fcnseg.data.io.to_rgb`), so an image gives one result however passed."""
    return to_rgb(image)


# ---------------------------------------------------------------------------- tiling
def _tile_plan(tile: int | None, overlap: int | None, h: int, w: int) -> tuple[int, int] | None:
    """(window, step) for an h x w image, or None for whole-image inference."""
    if tile is not None:
        check_range("tile", tile, 0, 65536, integer=True)
    if overlap is not None:
        check_range("overlap", overlap, 0, 65536, integer=True)
    if tile is None:
        if h * w <= AUTO_TILE_PIXELS:
            return None
        tile = AUTO_TILE
    if tile == 0 or (h <= tile and w <= tile):
        return None
    if tile < 2 * STRIDE:
        raise ValueError(f"tile {tile} is too small: use at least {2 * STRIDE} (or 0 for none)")
    overlap = tile // 4 if overlap is None else overlap
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} must be in 0..{tile - 1} (tile {tile})")
    step = max(STRIDE, (tile - overlap) // STRIDE * STRIDE)  # overlap only ever grows
    return tile, step


def _spans(n: int, window: int, step: int) -> list[tuple[int, int, int, int]]:
    """Windows along one axis: (start, stop, own_start, own_stop); owned parts partition 0..n."""
    if n <= window:
        return [(0, n, 0, n)]
    starts = [0]
    while starts[-1] + window < n:
        starts.append(starts[-1] + step)
    stops = [min(s + window, n) for s in starts]
    cuts = [0] + [(starts[i + 1] + stops[i]) // 2 for i in range(len(starts) - 1)] + [n]
    return [
        (s, e, cuts[i], cuts[i + 1]) for i, (s, e) in enumerate(zip(starts, stops, strict=True))
    ]


def _regions(
    model: nn.Module, x: torch.Tensor, plan: tuple[int, int] | None
) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """(rows, cols, logits (N, C, rows, cols)) covering x's H x W once; one net pass each."""
    h, w = x.shape[-2:]
    if plan is None:
        yield slice(0, h), slice(0, w), model(x)
        return
    window, step = plan
    for r0, r1, o0, o1 in _spans(h, window, step):
        for c0, c1, p0, p1 in _spans(w, window, step):
            logits = model(x[:, :, r0:r1, c0:c1])
            yield slice(o0, o1), slice(p0, p1), logits[:, :, o0 - r0 : o1 - r0, p0 - c0 : p1 - c0]


def check_photo_model(model: nn.Module, what: str = "predict") -> None:
    """Refuse a model that is not photo in, one score map out (the release's two-input and
    two-head nets), naming what it takes instead."""
    if (
        getattr(model, "stream_names", None)
        or getattr(model, "head_names", None)
        or (getattr(model, "in_channels", 3) not in (3, {"": 3}))
    ):
        raise ValueError(
            f"{what} works on nets that take one RGB photo and give one score map; "
            f"{getattr(model, 'name', 'this model')} takes or gives several (inputs "
            f"{getattr(model, 'stream_names', None) or getattr(model, 'in_channels', '?')}, heads "
            f"{getattr(model, 'head_names', None) or 1}): use fcnseg eval on its data, or call "
            f"the model in Python with a dict of inputs"
        )


def _batch(model: nn.Module, images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    if model.preprocessing is None:
        raise ValueError(f"model {getattr(model, 'name', '?')} has no .preprocessing: set one")
    check_photo_model(model)
    return torch.stack([model.preprocessing(im) for im in images]).to(device)


@torch.inference_mode()
def _run(
    model: nn.Module,
    images: Sequence[np.ndarray],
    device: torch.device,
    plan: tuple[int, int] | None,
    probs: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Same-sized images -> labels (N, H, W) int64 and, if asked, softmax (N, C, H, W)."""
    model.eval().to(device)
    x = _batch(model, images, device)
    n, _, h, w = x.shape
    labels = torch.empty((n, h, w), dtype=torch.int64)
    out = torch.empty((n, model.num_classes, h, w), dtype=torch.float32) if probs else None
    for rows, cols, logits in _regions(model, x, plan):
        if not torch.isfinite(logits).all():
            raise ValueError(
                f"model {getattr(model, 'name', '')} gives NaN or infinite scores on this "
                f"image: its weights or preprocessing are broken (a diverged checkpoint?); "
                f"nothing was written for it"
            )
        labels[:, rows, cols] = logits.argmax(1).cpu()
        if out is not None:
            out[:, :, rows, cols] = logits.float().softmax(1).cpu()
    return labels.numpy(), None if out is None else out.numpy()


def predict(
    model: nn.Module,
    image: ImageLike,
    *,
    device: str | torch.device | None = None,
    tile: int | None = None,
    overlap: int | None = None,
) -> np.ndarray:
    """Class index of every pixel, (H, W) int64, for an RGB uint8 array, PIL image or path.

    tile: window size for tiled inference (module docstring); None: only above
    AUTO_TILE_PIXELS; 0: never. The model is put in eval mode on `device`.
    """
    rgb = _as_rgb(image)
    plan = _tile_plan(tile, overlap, *rgb.shape[:2])
    return _run(model, [rgb], resolve_device(device, model), plan, probs=False)[0][0]


def predict_probs(
    model: nn.Module,
    image: ImageLike,
    *,
    device: str | torch.device | None = None,
    tile: int | None = None,
    overlap: int | None = None,
) -> np.ndarray:
    """Softmax class probabilities, (C, H, W) float32; arguments as `predict`."""
    rgb = _as_rgb(image)
    plan = _tile_plan(tile, overlap, *rgb.shape[:2])
    return _run(model, [rgb], resolve_device(device, model), plan, probs=True)[1][0]


from .predict_folder import (  # noqa: E402  (segmenting files builds on the above)
    IMAGE_EXTENSIONS,
    blend_overlay,
    class_names,
    expand_inputs,
    predict_paths,
)
