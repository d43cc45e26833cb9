"""Segment files, folders and globs: output names that never collide, checks before any work,
atomic writes, several processes, and runs that continue where they stopped.

    predict_paths(model, ["photos/", "*.png"], "out/")        # one process
    fcnseg predict photos/ --model best.pt -o out --nproc 4   # 4 processes (torchrun)
    fcnseg predict photos/ --model best.pt -o out --skip-existing   # after an interruption

Several processes: every process lists the same inputs and output names, then takes every N-th
input (its share); each decodes in its own `workers` processes and batches same-sized images.
The outputs are the files one process would write. `skip_existing`: an input whose outputs
all exist (complete: they are only ever renamed into place) is not segmented again; the other
inputs' outputs are written, replacing what an interrupted run left of them.
"""

from __future__ import annotations

import errno
import glob
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .categories import VOC_CLASSES
from .data.io import ImageError, colorize, read_image, write_mask
from .predict import _run, _tile_plan, check_photo_model, resolve_device
from .safety import atomic_write, check_outputs, check_range

__all__ = ["IMAGE_EXTENSIONS", "blend_overlay", "class_names", "expand_inputs", "predict_paths"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
OVERLAY_ALPHA = 0.5


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


class _Reader(torch.utils.data.Dataset):
    """Item k: (input index, RGB array or None, error message or None, seconds to read)."""

    def __init__(self, files: list[Path], todo: list[int]):
        self.files, self.todo = files, todo

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, k: int):
        i, t0 = self.todo[k], time.perf_counter()
        try:
            return i, read_image(self.files[i]), None, time.perf_counter() - t0
        except (ImageError, OSError) as e:
            return i, None, str(e), 0.0


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
    skip_existing: bool = False,
    workers: int = 0,
    shard: tuple[int, int] = (0, 1),
) -> list[dict]:
    """Segment every image in `inputs` (files, folders, globs) and write, under `out_dir`
    (mirroring each input's folders below the folder or glob root given):

        <stem>.png          label map, palette PNG (VOC colours): PIL reads back class indices
        <stem>_overlay.jpg  photo blended with the colours (.png for non-JPEG inputs)
        <stem>_probs.npz    with save_probs: probs (C, H, W) float16, class_names

    Returns one dict per input of this process's share, in order: {"input", "ok": True,
    "size", "labels", "overlay", "probs", "classes", "seconds"}, {"input", "ok": True,
    "skipped": True} (skip_existing) or {"input", "ok": False, "error"}. A file that cannot be
    read or segmented is reported (one line on stderr) and skipped; a full disk stops the run
    with OSError, leaving the outputs written before complete. Every file is written to a
    temporary name and renamed, so none is ever half-written.

    Before any work, the output names are checked: none may be an input, and none may exist
    already unless `overwrite` (outputs of two inputs never share a name: see _output_stems).
    `workers`: processes that decode the images; `shard` = (rank, processes): this process
    segments inputs rank, rank + processes, ... (see the module doc).
    """
    from tqdm.auto import tqdm

    check_photo_model(model)
    check_range("batch_size", batch_size, 1, 1024, integer=True)
    check_range("workers", workers, 0, 256, integer=True)
    rank, world = shard
    if tile is not None:
        check_range("tile", tile, 0, 65536, integer=True)
    dev = resolve_device(device, model)
    files = expand_inputs(inputs)
    if not files:
        raise FileNotFoundError(
            f"no images in {', '.join(map(str, inputs))} (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    out = Path(out_dir)
    stems = _output_stems([rel for _, rel in files])  # from every input: the same in each process
    targets = [_output_paths(f, out / s, overlay, save_probs)
               for (f, _), s in zip(files, stems, strict=True)]  # fmt: skip
    mine = list(range(rank, len(files), world))
    done = {i for i in mine if skip_existing and all(p.exists() for p in targets[i].values())}
    todo = [i for i in mine if i not in done]
    check_outputs([(p, f"{kind} of {files[i][0]}") for i in todo for kind, p in
                   targets[i].items()], [f for f, _ in files],
                  overwrite=overwrite or skip_existing)  # fmt: skip
    _check_writable(out)
    names = class_names(model)
    results: dict[int, dict] = {i: {"input": str(files[i][0]), "ok": True, "skipped": True}
                                for i in done}  # fmt: skip
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress,
               dynamic_ncols=True)  # fmt: skip
    bar.update(len(done) * world)  # rank 0's bar: its own share times the processes
    pending: dict[tuple[int, int], list[tuple[int, np.ndarray, float]]] = {}

    def fail(i: int, msg: str) -> None:
        results[i] = {"input": str(files[i][0]), "ok": False, "error": msg.splitlines()[0]}
        tqdm.write(f"error: {results[i]['error']}", file=sys.stderr)
        bar.update(world)

    def flush(key: tuple[int, int]) -> None:
        group = pending.pop(key)
        t0 = time.perf_counter()
        images = [rgb for _, rgb, _ in group]
        try:
            plan = _tile_plan(tile, None, *key)
            labels, probs = _run(model, images, dev, plan, probs=save_probs)
        except (RuntimeError, ValueError) as e:  # e.g. out of memory: every image of the group
            for i, _, _ in group:
                fail(i, f"{files[i][0]}: inference failed: {e}")
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
                fail(i, f"{files[i][0]}: cannot write its outputs: {e}")
                continue
            rec["seconds"] = t_read + share
            results[i] = rec
            bar.update(world)

    reader = torch.utils.data.DataLoader(
        _Reader([f for f, _ in files], todo), batch_size=None, num_workers=workers,
        prefetch_factor=2 * batch_size if workers else None,
    )  # fmt: skip
    for i, rgb, error, t_read in reader:
        if error is not None:
            fail(i, error)
            continue
        rgb = np.asarray(rgb)
        key = rgb.shape[:2]
        pending.setdefault(key, []).append((i, rgb, t_read))
        if len(pending[key]) >= batch_size:
            flush(key)
        elif sum(len(g) for g in pending.values()) >= 2 * batch_size:  # bound memory
            flush(max(pending, key=lambda k: len(pending[k])))
    for key in list(pending):
        flush(key)
    bar.close()
    return [results[i] for i in mine if i in results]
