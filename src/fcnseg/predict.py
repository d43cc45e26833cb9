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

import errno
import glob
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .categories import VOC_CLASSES
from .data.io import ImageError, colorize, read_image, to_rgb, write_mask
from .safety import atomic_write, check_outputs, check_range

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
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
OVERLAY_ALPHA = 0.5

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


# ---------------------------------------------------------------------------- inputs
def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """Files, folders (recursively, by extension) and globs -> [(file, path relative to its
    root)], in order, each file once. A path that does not exist raises FileNotFoundError."""
    found: dict[Path, Path] = {}
    for item in inputs:
        text = str(item)
        p = Path(text)
        if p.is_file():
            found.setdefault(p, Path(p.name))
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and _is_image(f))
            if not files:
                print(f"warning: folder {p} holds no images ({', '.join(IMAGE_EXTENSIONS)})",
                      file=sys.stderr)  # fmt: skip
            for f in files:
                found.setdefault(f, f.relative_to(p))
        elif _has_magic(text):
            parts = Path(text).parts
            root = Path(*[q for q in parts[: next(i for i, q in enumerate(parts) if _has_magic(q))]]
                        or ["."])  # fmt: skip
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            matches = [m for m in matches if m.is_file()]
            if not matches:
                raise FileNotFoundError(f"input pattern '{text}' matches no files")
            for m in matches:
                found.setdefault(m, m.relative_to(root) if m.is_relative_to(root) else Path(m.name))
        else:
            raise FileNotFoundError(
                f"input '{text}' not found: no such file or folder (cwd is {Path.cwd()})"
            )
    return list(found.items())


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


_OUTPUT_SUFFIXES = (".png", "_overlay.png", "_overlay.jpg", "_probs.npz")


def _output_stems(rels: Sequence[Path]) -> list[Path]:
    """Relative output stems mirroring the inputs' folders, such that no two inputs' outputs
    share a name: stems that clash get the extension, then a counter appended (photo.jpg and
    photo.png -> photo_jpg, photo_png; x.png and x_overlay.png -> x, x_overlay_2 since x's
    overlay is x_overlay.png)."""
    stems = [r.with_suffix("") for r in rels]
    counts: dict[Path, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    out, taken = [], set()

    def names(stem: Path) -> list[Path]:
        return [stem.with_name(stem.name + x) for x in _OUTPUT_SUFFIXES]

    for r, s in zip(rels, stems, strict=True):
        if counts[s] > 1:
            s = s.with_name(f"{s.name}_{r.suffix.lstrip('.').lower() or 'file'}")
        base, k = s, 2
        while any(n in taken for n in names(s)):
            s, k = base.with_name(f"{base.name}_{k}"), k + 1
        taken.update(names(s))
        out.append(s)
    return out


def _output_paths(path: Path, base: Path, overlay: bool, probs: bool) -> dict[str, Path]:
    """The files written for input `path` under output stem `base` (labels, overlay, probs)."""
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    out = {"labels": base.with_name(base.name + ".png")}
    if overlay:
        out["overlay"] = base.with_name(base.name + ("_overlay.jpg" if jpeg else "_overlay.png"))
    if probs:
        out["probs"] = base.with_name(base.name + "_probs.npz")
    return out


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".fcnseg-write-test.", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(
            e.errno,
            f"output folder '{out_dir}' is not writable ({e.strerror or e}); choose another -o",
        ) from None


# ---------------------------------------------------------------------------- writing
def blend_overlay(
    image: np.ndarray, labels: np.ndarray, alpha: float = OVERLAY_ALPHA
) -> np.ndarray:
    """Photo blended with the VOC colours of `labels`; class 0 (background) left as is."""
    colours = colorize(labels).astype(np.float32)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colours
    out = np.where((labels > 0)[..., None], blend, image.astype(np.float32))
    return np.rint(out).astype(np.uint8)


def _write_outputs(
    path: Path,
    targets: dict[str, Path],
    rgb: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray | None,
    names: Sequence[str],
) -> dict:
    record = {"input": str(path), "ok": True, "size": tuple(labels.shape)}
    write_mask(targets["labels"], labels)
    record["labels"] = str(targets["labels"])
    if "overlay" in targets:
        jpeg = targets["overlay"].suffix == ".jpg"
        im = Image.fromarray(blend_overlay(rgb, labels))
        atomic_write(targets["overlay"], lambda f: im.save(f, format="JPEG" if jpeg else "PNG",
                                                           quality=90), what="overlay")  # fmt: skip
        record["overlay"] = str(targets["overlay"])
    if probs is not None:
        p16 = probs.astype(np.float16)
        atomic_write(targets["probs"], lambda f: np.savez_compressed(
            f, probs=p16, class_names=list(names)), what="probabilities")  # fmt: skip
        record["probs"] = str(targets["probs"])
    present = np.unique(labels)
    record["classes"] = [names[i] if i < len(names) else str(i) for i in present.tolist()]
    return record


def class_names(model: nn.Module) -> list[str]:
    """The model's class names: its checkpoint's, VOC's for 21 classes, else '0', '1', ..."""
    names = getattr(model, "class_names", None)
    if names and len(names) == model.num_classes:
        return list(names)
    if model.num_classes == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    return [str(i) for i in range(model.num_classes)]


def predict_paths(
    model: nn.Module,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    save_probs: bool = False,
    overlay: bool = True,
    batch_size: int = 4,
    tile: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> list[dict]:
    """Segment every image in `inputs` (files, folders, globs) and write, under `out_dir`
    (mirroring each input's folders below the folder or glob root given):

        <stem>.png          label map, palette PNG (VOC colours): PIL reads back class indices
        <stem>_overlay.jpg  photo blended with the colours (.png for non-JPEG inputs)
        <stem>_probs.npz    with save_probs: probs (C, H, W) float16, class_names

    Returns one dict per input, in order: {"input", "ok": True, "size", "labels", "overlay",
    "probs", "classes", "seconds"} or {"input", "ok": False, "error"}. A file that cannot be
    read or segmented is reported (one line on stderr) and skipped; a full disk stops the run
    with OSError, leaving the outputs written before complete. Every file is written to a
    temporary name and renamed, so none is ever half-written.

    Before any work, the output names are checked: none may be an input, and none may exist
    already unless `overwrite` (outputs of two inputs never share a name: see _output_stems).
    """
    from tqdm.auto import tqdm

    check_photo_model(model)
    check_range("batch_size", batch_size, 1, 1024, integer=True)
    if tile is not None:
        check_range("tile", tile, 0, 65536, integer=True)
    dev = resolve_device(device, model)
    files = expand_inputs(inputs)
    if not files:
        raise FileNotFoundError(
            f"no images in {', '.join(map(str, inputs))} (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    out = Path(out_dir)
    stems = _output_stems([rel for _, rel in files])
    targets = [_output_paths(f, out / s, overlay, save_probs)
               for (f, _), s in zip(files, stems, strict=True)]  # fmt: skip
    check_outputs([(p, f"{kind} of {f}") for (f, _), t in zip(files, targets, strict=True)
                   for kind, p in t.items()], [f for f, _ in files],
                  overwrite=overwrite)  # fmt: skip
    _check_writable(out)
    names = class_names(model)
    results: list[dict | None] = [None] * len(files)
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress,
               dynamic_ncols=True)  # fmt: skip
    pending: dict[tuple[int, int], list[tuple[int, np.ndarray, float]]] = {}

    def fail(i: int, e: Exception) -> None:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        results[i] = {"input": str(files[i][0]), "ok": False, "error": msg}
        tqdm.write(f"error: {msg}", file=sys.stderr)
        bar.update(1)

    def flush(key: tuple[int, int]) -> None:
        group = pending.pop(key)
        t0 = time.perf_counter()
        images = [rgb for _, rgb, _ in group]
        try:
            plan = _tile_plan(tile, None, *key)
            labels, probs = _run(model, images, dev, plan, probs=save_probs)
        except (RuntimeError, ValueError) as e:  # e.g. out of memory: every image of the group
            for i, _, _ in group:
                fail(i, RuntimeError(f"{files[i][0]}: inference failed: {e}"))
            return
        share = (time.perf_counter() - t0) / len(group)
        for k, (i, rgb, t_read) in enumerate(group):
            try:
                p_k = None if probs is None else probs[k]
                rec = _write_outputs(files[i][0], targets[i], rgb, labels[k], p_k, names)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    bar.close()
                    raise
                fail(i, OSError(f"{files[i][0]}: cannot write its outputs: {e}"))
                continue
            rec["seconds"] = t_read + share
            results[i] = rec
            bar.update(1)

    for i, (path, _) in enumerate(files):
        t0 = time.perf_counter()
        try:
            rgb = read_image(path)
        except (ImageError, OSError) as e:
            fail(i, e)
            continue
        key = rgb.shape[:2]
        pending.setdefault(key, []).append((i, rgb, time.perf_counter() - t0))
        if len(pending[key]) >= batch_size:
            flush(key)
        elif sum(len(g) for g in pending.values()) >= 2 * batch_size:  # bound memory
            flush(max(pending, key=lambda k: len(pending[k])))
    for key in list(pending):
        flush(key)
    bar.close()
    return [r for r in results if r is not None]
