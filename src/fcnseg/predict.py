"""Segment one image with any net: label maps, class probabilities; whole or in tiles.

    model, _ = load_model("runs/fcn/best.pt")          # or a registered name
    labels = predict(model, "cat.jpg")                  # (H, W) int64 class indices
    probs = predict_probs(model, image_array)           # (C, H, W) float32, softmax
    labels = predict(nyud_color_d, "rgb.png", depth="depth.png")         # + 16-bit depth (mm)
    labels = predict(nyud_color_hha, "rgb.png", depth=d, intrinsics="nyud")  # HHA made from d
    out = predict(siftflow_fcn8s, "street.jpg")         # {"sem": (H, W), "geo": (H, W)}

Files, folders and globs (output names, several processes, continuing a run) are
`fcnseg.predict_folder.predict_paths`, built on this module.

Inputs (`input_kinds(model)`): a photo net takes one RGB image; the release's NYUDv2 nets take
"color" and "depth" (nyud-fcn32s-color-d: one 4-channel tensor), "color" and "hha"
(nyud-fcn32s-color-hha: two streams) or "hha" alone (nyud-fcn32s-hha). Depth is the stored
16-bit map in millimetres, as NYUDv2's PNGs (0 = no reading); an HHA image is the 8-bit
3-channel PNG `fcnseg hha` writes. A net that takes HHA and is given depth instead computes
HHA from it (`fcnseg.data.hha.hha`) with the camera's `intrinsics` (fx, fy, cx, cy) or a
camera name ("nyud"). The HHA-only net takes its HHA image as `image`, or, given `hha=` or
`depth=`, treats `image` as the colour photo (checked for size only). Every input must have
the image's size (registered pixel for pixel); a colour-only net refuses depth or HHA rather
than ignore them. `input_plan` states these rules once, for this module and the command line.

Outputs: one score map -> (H, W) labels / (C, H, W) probabilities; a two-head net (SIFT Flow's
"sem" 33 classes and "geo" 3) -> a dict {head: ...}. `class_names(model, head)` names the
classes: the checkpoint's names where they fit, else the net's dataset's (voc-, nyud-,
pascalcontext-, siftflow-), VOC's for 21 classes, else indices.

Tiled inference. `tile=T` runs the net on overlapping T x T windows instead of the whole
image (memory grows with the window, not the image); every input of a net is cut into the
same windows, and every head's scores stitched the same way. Window starts are multiples of 32
(the nets' output stride), so every window sees the pixel grid the whole image does;
neighbouring windows overlap by `overlap` pixels (default T // 4, widened so that the step
T - overlap is a multiple of 32) and each output pixel is taken from the one window whose
border is farthest from it: the seam sits in the middle of the overlap, >= overlap / 2 pixels
from any window edge. Windows are not blended: the label map is stitched from each window's
own region.

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

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .categories import VOC_CLASSES
from .data.io import to_rgb
from .models.reference import release_class_names
from .predict_inputs import (
    DepthLike,
    ImageLike,
    Intrinsics,
    camera_intrinsics,
    describe,
    head_names,
    input_keys,
    input_kind,
    input_plan,
    load_sample,
    net_attr,
    net_name,
)
from .safety import check_range

__all__ = [
    "AUTO_TILE",
    "AUTO_TILE_PIXELS",
    "class_names",
    "head_names",
    "predict",
    "predict_probs",
    "resolve_device",
]

# Above ~2 Mpx (1448 x 1448) the full-width reference VGG16 needs several GB of activations.
AUTO_TILE_PIXELS = 2**21
AUTO_TILE = 1024
STRIDE = 32  # output stride of every registered net: window starts are multiples of it


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


Tensors = torch.Tensor | dict[str, torch.Tensor]


def _crop(x: Tensors, rows: slice, cols: slice) -> Tensors:
    """x[..., rows, cols], for a tensor or each tensor of a dict (two streams, two heads)."""
    if isinstance(x, Mapping):
        return {k: v[..., rows, cols] for k, v in x.items()}
    return x[..., rows, cols]


def _regions(model: nn.Module, x: Tensors, plan: tuple[int, int] | None) -> Iterator[tuple]:
    """(rows, cols, logits) covering x's H x W once, one net pass each; x and logits are
    (N, C, H, W) tensors or dicts of them (every input cut, every head stitched alike)."""
    h, w = (next(iter(x.values())) if isinstance(x, Mapping) else x).shape[-2:]
    if plan is None:
        yield slice(0, h), slice(0, w), model(x)
        return
    window, step = plan
    for r0, r1, o0, o1 in _spans(h, window, step):
        for c0, c1, p0, p1 in _spans(w, window, step):
            logits = model(_crop(x, slice(r0, r1), slice(c0, c1)))
            own = slice(o0 - r0, o1 - r0), slice(p0 - c0, p1 - c0)
            yield slice(o0, o1), slice(p0, p1), _crop(logits, *own)


def _batch(model: nn.Module, samples: Sequence[Mapping[str, np.ndarray]], device) -> Tensors:
    """Same-sized samples ({kind: array}, `load_sample`) -> the net's input on `device`: one
    tensor (a photo; colour + depth in 4 channels) or a dict (two streams), prepared."""
    pre = net_attr(model, "preprocessing")
    if pre is None:
        raise ValueError(f"model {net_name(model)} has no .preprocessing: set one")
    parts = {}
    for key in input_keys(model):
        kind = input_kind(key)
        a = np.stack([s[kind] for s in samples])
        t = (
            torch.from_numpy(a)[:, None]
            if kind == "depth"
            else torch.from_numpy(a).permute(0, 3, 1, 2)
        )
        parts[key] = (pre[key] if isinstance(pre, Mapping) else pre).batch(t).to(device)
    streams = net_attr(model, "stream_names")
    if streams:
        return {k: parts[k] for k in streams}
    return next(iter(parts.values())) if len(parts) == 1 else torch.cat(list(parts.values()), 1)


@torch.inference_mode()
def _run(
    model: nn.Module,
    samples: Sequence[Mapping[str, np.ndarray]],
    device: torch.device,
    plan: tuple[int, int] | None,
    probs: bool,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Same-sized samples -> per head ("" for a one-head net) labels (N, H, W) int64 and, if
    asked, softmax (N, C, H, W) float32."""
    model.eval().to(device)
    x = _batch(model, samples, device)
    n, h, w = len(samples), *samples[0][next(iter(samples[0]))].shape[:2]
    labels: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] | None = {} if probs else None
    for rows, cols, logits in _regions(model, x, plan):
        for head, scores in (logits if isinstance(logits, Mapping) else {"": logits}).items():
            if not torch.isfinite(scores).all():
                raise ValueError(
                    f"model {net_name(model)} gives NaN or infinite scores on this image: its "
                    f"weights or preprocessing are broken (a diverged checkpoint?); nothing "
                    f"was written for it"
                )
            if head not in labels:
                labels[head] = torch.empty((n, h, w), dtype=torch.int64)
                if out is not None:
                    out[head] = torch.empty((n, scores.shape[1], h, w), dtype=torch.float32)
            labels[head][:, rows, cols] = scores.argmax(1).cpu()
            if out is not None:
                out[head][:, :, rows, cols] = scores.float().softmax(1).cpu()
    return (
        {k: v.numpy() for k, v in labels.items()},
        None if out is None else {k: v.numpy() for k, v in out.items()},
    )


def _predict(model, image, depth, hha, intrinsics, device, tile, overlap, probs: bool):
    plan = input_plan(model, depth=None if depth is None else describe(depth, "depth"),
                      hha=None if hha is None else describe(hha, "hha"),
                      intrinsics=intrinsics is not None)  # fmt: skip
    if intrinsics is not None:
        camera_intrinsics(intrinsics)  # a bad camera fails before the reading
    _, sample = load_sample(plan, image, depth, hha, intrinsics)
    h, w = next(iter(sample.values())).shape[:2]
    labels, p = _run(model, [sample], resolve_device(device, model),
                     _tile_plan(tile, overlap, h, w), probs=probs)  # fmt: skip
    result = {k: v[0] for k, v in (p if probs else labels).items()}
    return result[""] if list(result) == [""] else result


def predict(
    model: nn.Module,
    image: ImageLike,
    *,
    depth: DepthLike | None = None,
    hha: ImageLike | None = None,
    intrinsics: Intrinsics | None = None,
    device: str | torch.device | None = None,
    tile: int | None = None,
    overlap: int | None = None,
) -> np.ndarray | dict[str, np.ndarray]:
    """Class index of every pixel, (H, W) int64, for an RGB uint8 array, PIL image or path;
    a dict {head: (H, W)} for a two-head net (SIFT Flow: "sem", "geo").

    depth: the stored depth map (H, W), millimetres (a 16-bit PNG's path or an array), for
    the nets that take it or HHA; hha: an HHA image; intrinsics: (fx, fy, cx, cy) or "nyud",
    to compute HHA from `depth` (module doc). tile: window size for tiled inference (module
    doc); None: only above AUTO_TILE_PIXELS; 0: never. The model is put in eval mode on `device`.
    """
    return _predict(model, image, depth, hha, intrinsics, device, tile, overlap, probs=False)


def predict_probs(
    model: nn.Module,
    image: ImageLike,
    *,
    depth: DepthLike | None = None,
    hha: ImageLike | None = None,
    intrinsics: Intrinsics | None = None,
    device: str | torch.device | None = None,
    tile: int | None = None,
    overlap: int | None = None,
) -> np.ndarray | dict[str, np.ndarray]:
    """Softmax class probabilities, (C, H, W) float32 (a dict per head for a two-head net);
    arguments as `predict`."""
    return _predict(model, image, depth, hha, intrinsics, device, tile, overlap, probs=True)


# ---------------------------------------------------------------------------- class names
def _dataset_names(model: nn.Module, head: str) -> list[tuple[str, ...]]:
    """Class-name lists of the net's dataset (a release net's: `release_class_names`)."""
    known = release_class_names(net_name(model))
    return [known[head]] if head in known else list(known.values())


def class_names(model: nn.Module, head: str = "") -> list[str]:
    """Names of the classes of `head` ("" for a one-head net; "sem" / "geo" for SIFT Flow's):
    the checkpoint's (`model.class_names`, a list or {head: list}) where they fit, else the
    net's dataset's (by its name: voc-, nyud-, pascalcontext-, siftflow-), VOC's for 21
    classes, else '0', '1', ..."""
    heads = head_names(model)
    if head not in heads:
        raise ValueError(f"{net_name(model)} has heads {list(heads)}, not {head!r}")
    count = net_attr(model, "num_classes")
    count = count[head] if isinstance(count, Mapping) else count
    given = net_attr(model, "class_names")
    if isinstance(given, Mapping):
        given = given.get(head)
    elif head != heads[0]:  # a flat list names the first head's classes (a sem checkpoint)
        given = None
    candidates = [given] if given else []
    candidates += [*_dataset_names(model, head), VOC_CLASSES]
    for names in candidates:
        if len(names) == count:
            return list(names)
    return [str(i) for i in range(count)]
