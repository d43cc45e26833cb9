"""Segment files, folders and globs: output names that never collide, checks before any work,
atomic writes, several processes, and runs that continue where they stopped.

    predict_paths(model, ["photos/", "*.png"], "out/")        # one process
    predict_paths(nyud_color_hha, ["rgb/"], "out/", depth=["depth/"], intrinsics="nyud")
    fcnseg predict photos/ --model best.pt -o out --nproc 4   # 4 processes (torchrun)
    fcnseg predict photos/ --model best.pt -o out --skip-existing   # after an interruption

Depth and HHA: each image is paired with the depth / HHA file of the same name
(`fcnseg.predict_inputs.pair_files`); the rules for which net takes what are
`fcnseg.predict_inputs.input_plan`. Every pair is checked (present, readable, 16-bit depth,
RGB HHA, the image's size) before any image is segmented or any file written.

Outputs per input, under its output stem: `<stem>.png` (labels), `<stem>_overlay.jpg|png`,
`<stem>_probs.npz`; for a two-head net (SIFT Flow) the same per head: `<stem>_sem.png`,
`<stem>_geo.png`, `<stem>_sem_overlay.png`, ..., `<stem>_geo_probs.npz`.

Several processes: every process lists the same inputs and output names, then takes every N-th
input (its share); each decodes in its own `workers` processes and batches same-sized images.
The outputs are the files one process would write. `skip_existing`: an input whose outputs
all exist (complete: they are only ever renamed into place) is not segmented again; the other
inputs' outputs are written, replacing what an interrupted run left of them.
"""

from __future__ import annotations

import errno
import os
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from torch import nn

from .data.io import ImageError, colorize, mask_png, read_image
from .predict import _run, _tile_plan, class_names, resolve_device
from .predict_inputs import (
    IMAGE_EXTENSIONS,
    camera_intrinsics,
    check_pairs,
    expand_inputs,
    head_names,
    input_plan,
    load_sample,
    net_attr,
    pair_files,
)
from .safety import atomic_write, check_outputs, check_range
from .threads import step_threads

__all__ = [
    "IMAGE_EXTENSIONS",
    "blend_overlay",
    "class_names",
    "expand_inputs",
    "predict_paths",
]

OVERLAY_ALPHA = 0.5
UNTRAINED_WARNING = (
    "untrained net (random weights, --untrained): its outputs mean nothing; "
    "do not use them as results"
)
_OUTPUT_SUFFIXES = (".png", "_overlay.png", "_overlay.jpg", "_probs.npz")  # per head


def _suffixes(heads: Sequence[str]) -> list[str]:
    """Every name ending an input's outputs may have: "_sem.png", ... for a two-head net."""
    return [(f"_{h}" if h else "") + x for h in heads for x in _OUTPUT_SUFFIXES]


def _output_stems(rels: Sequence[Path], heads: Sequence[str] = ("",)) -> list[Path]:
    """Relative output stems mirroring the inputs' folders, such that no two inputs' outputs
    share a name: stems that clash get the extension, then a counter appended (photo.jpg and
    photo.png -> photo_jpg, photo_png; x.png and x_overlay.png -> x, x_overlay_2 since x's
    overlay is x_overlay.png). A two-head net's stems are checked against every head's names
    (x_sem.png, x_geo_overlay.png, ...)."""
    stems = [r.with_suffix("") for r in rels]
    counts: dict[Path, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    out, taken = [], set()
    suffixes = _suffixes(heads)

    def names(stem: Path) -> list[Path]:
        return [stem.with_name(stem.name + x) for x in suffixes]

    for r, s in zip(rels, stems, strict=True):
        if counts[s] > 1:
            s = s.with_name(f"{s.name}_{r.suffix.lstrip('.').lower() or 'file'}")
        base, k = s, 2
        while any(n in taken for n in names(s)):
            s, k = base.with_name(f"{base.name}_{k}"), k + 1
        taken.update(names(s))
        out.append(s)
    return out


def _output_paths(
    path: Path, base: Path, overlay: bool, probs: bool, heads: Sequence[str] = ("",)
) -> dict[tuple[str, str], Path]:
    """The files written for input `path` under output stem `base`: {(head, "labels" |
    "overlay" | "probs"): path}, head "" for a one-head net."""
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    out = {}
    for head in heads:
        stem = base.with_name(base.name + (f"_{head}" if head else ""))
        out[head, "labels"] = stem.with_name(stem.name + ".png")
        if overlay:
            out[head, "overlay"] = stem.with_name(
                stem.name + ("_overlay.jpg" if jpeg else "_overlay.png")
            )
        if probs:
            out[head, "probs"] = stem.with_name(stem.name + "_probs.npz")
    return out


def _complete(path: Path) -> bool:
    """An output `--skip-existing` may keep: a plain file that decodes (a 0-byte or damaged
    one, from a crash or a copy cut short, is written again)."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size == 0:
            return False
        if path.suffix == ".npz":
            with np.load(path) as z:
                z["probs"].shape  # noqa: B018  (reads the array's header and data)
        else:
            with Image.open(path) as im:
                im.load()
    except Exception:  # any decoder error means: not a usable output
        return False
    return True


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
    image: np.ndarray,
    labels: np.ndarray,
    alpha: float = OVERLAY_ALPHA,
    *,
    background: int | None = 0,
) -> np.ndarray:
    """Photo blended with the VOC colours of `labels` (256 distinct colours); the class
    `background` (None: none) left as is."""
    colours = colorize(labels).astype(np.float32)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colours
    shown = labels != background if background is not None else np.ones(labels.shape, bool)
    out = np.where(shown[..., None], blend, image.astype(np.float32))
    return np.rint(out).astype(np.uint8)


def png_with_text(png: bytes, text: dict[str, str]) -> bytes:
    """`png` with tEXt chunks (keyword -> Latin-1 text) after its header chunk."""
    chunks = b""
    for key, value in text.items():
        data = key.encode("latin-1") + b"\0" + value.encode("latin-1", "replace")
        body = b"tEXt" + data
        chunks += struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    end = 8 + 4 + 4 + 13 + 4  # signature, then IHDR: length, type, 13 bytes, crc
    return png[:end] + chunks + png[end:]


def _write_head(
    targets: dict[str, Path],
    rgb: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray | None,
    names: Sequence[str],
    warning: str | None = None,
) -> dict:
    """One head's files: labels, overlay, probabilities (those in `targets`). `warning` (an
    untrained net's) is written into each: a PNG text chunk "warning", a JPEG comment, an
    npz array "warning"."""
    record = {}

    def encode(f) -> None:  # write_mask's PNG (+ the warning), encoded inside atomic_write
        png = mask_png(labels, source=f"mask {targets['labels']}")
        f.write(png_with_text(png, {"warning": warning}) if warning else png)

    # the size bound (pixels + palette + headers) is checked against the free space first
    atomic_write(targets["labels"], encode, what="mask", size=labels.size + 4096)
    record["labels"] = str(targets["labels"])
    if "overlay" in targets:
        jpeg = targets["overlay"].suffix == ".jpg"
        background = 0 if names and names[0] == "background" else None
        im = Image.fromarray(blend_overlay(rgb, labels, background=background))
        extra: dict = {}
        if warning and jpeg:
            extra["comment"] = warning.encode()
        elif warning:
            extra["pnginfo"] = PngInfo()
            extra["pnginfo"].add_text("warning", warning)
        atomic_write(targets["overlay"], lambda f: im.save(f, format="JPEG" if jpeg else "PNG",
                                                           quality=90, **extra),
                     what="overlay", size=im.width * im.height * 3)  # fmt: skip
        record["overlay"] = str(targets["overlay"])
    if probs is not None:
        p16 = probs.astype(np.float16)
        marks = {"warning": np.array(warning)} if warning else {}
        atomic_write(targets["probs"], lambda f: np.savez_compressed(
            f, probs=p16, class_names=list(names), **marks), what="probabilities",
            size=p16.nbytes)  # fmt: skip
        record["probs"] = str(targets["probs"])
    present = np.unique(labels)
    record["classes"] = [names[i] if i < len(names) else str(i) for i in present.tolist()]
    return record


def _write_outputs(
    path: Path,
    targets: dict[tuple[str, str], Path],
    rgb: np.ndarray,
    labels: dict[str, np.ndarray],
    probs: dict[str, np.ndarray] | None,
    names: dict[str, Sequence[str]],
    warning: str | None = None,
) -> dict:
    """Every head's files; the record holds "labels", "overlay", "probs", "classes" as for one
    head, or each a dict {head: ...} for a two-head net."""
    heads = list(labels)
    record = {"input": str(path), "ok": True, "size": tuple(labels[heads[0]].shape)}
    if warning:
        record["warning"] = warning
    per = {}
    for head in heads:
        mine = {kind: p for (h, kind), p in targets.items() if h == head}
        p = None if probs is None else probs[head]
        per[head] = _write_head(mine, rgb, labels[head], p, names[head], warning)
    if heads == [""]:
        return {**record, **per[""]}
    return {**record, **{key: {h: per[h][key] for h in heads} for key in per[heads[0]]}}


class _Reader(torch.utils.data.Dataset):
    """Item k: (input index, image (RGB) or None, the net's inputs {kind: array} or None,
    error message or None, seconds to read)."""

    def __init__(
        self,
        files: list[Path],
        todo: list[int],
        plan: dict[str, str],
        pairs: dict[str, list[Path]],
        intrinsics,
    ):
        self.files, self.todo = files, todo
        self.plan, self.pairs, self.intrinsics = plan, pairs, intrinsics

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, k: int):
        i, t0 = self.todo[k], time.perf_counter()
        try:
            rgb = read_image(self.files[i])
        except (ImageError, OSError) as e:
            return i, None, None, str(e), 0.0
        try:
            paired = {kind: files[i] for kind, files in self.pairs.items()}
            rgb, sample = load_sample(self.plan, rgb, paired.get("depth"), paired.get("hha"),
                                      self.intrinsics)  # fmt: skip
        except (ValueError, OSError) as e:
            return i, None, None, f"{self.files[i]}: {e}", 0.0
        return i, rgb, sample, None, time.perf_counter() - t0


def _sources(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str | os.PathLike):
        return [os.fspath(value)]
    return [os.fspath(v) for v in value]


def predict_paths(
    model: nn.Module,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    depth: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    hha: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    intrinsics: str | Sequence[float] | None = None,
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
    check_only: bool = False,
) -> list[dict]:
    """Segment every image in `inputs` (files, folders, globs) and write, under `out_dir`
    (mirroring each input's folders below the folder or glob root given):

        <stem>.png          label map, palette PNG (VOC colours): PIL reads back class indices
        <stem>_overlay.jpg  photo blended with the colours (.png for non-JPEG inputs)
        <stem>_probs.npz    with save_probs: probs (C, H, W) float16, class_names

    and for a two-head net (SIFT Flow) these per head: <stem>_sem.png, <stem>_geo.png,
    <stem>_sem_overlay.jpg, ..., <stem>_geo_probs.npz.

    depth / hha: files, folders or globs of the depth maps (16-bit PNGs, millimetres) or HHA
    images, each paired with the image of the same name, for the nets that take them;
    intrinsics: (fx, fy, cx, cy) or "nyud", to compute HHA from depth (see
    `fcnseg.predict_inputs`). A missing or wrong pair stops the run before any work.

    Returns one dict per input of this process's share, in order: {"input", "ok": True,
    "size", "labels", "overlay", "probs", "classes", "seconds"} (for two heads, "labels" ...
    "classes" are dicts {head: ...}), {"input", "ok": True, "skipped": True} (skip_existing)
    or {"input", "ok": False, "error"}. A file that cannot be read or segmented is reported
    (one line on stderr) and skipped; a full disk stops the run with OSError, leaving the
    outputs written before complete. Every file is written to a temporary name and renamed,
    so none is ever half-written.

    Before any work, the output names are checked: none may be an input, and none may exist
    already unless `overwrite` (outputs of two inputs never share a name: see _output_stems).
    `workers`: processes that decode the images; `shard` = (rank, processes): this process
    segments inputs rank, rank + processes, ... (see the module doc). `check_only`: the checks
    above alone, then [] (fcnseg predict --nproc checks once before any worker starts).
    """
    from tqdm.auto import tqdm

    check_range("batch_size", batch_size, 1, 1024, integer=True)
    check_range("workers", workers, 0, 256, integer=True)
    rank, world = shard
    if tile is not None:
        check_range("tile", tile, 0, 65536, integer=True)
    depth, hha = _sources(depth), _sources(hha)
    camera = camera_intrinsics(intrinsics)
    plan = input_plan(model, depth=" ".join(depth) or None, hha=" ".join(hha) or None,
                      intrinsics=camera is not None)  # fmt: skip
    heads = head_names(model)
    dev = resolve_device(device, model)
    files = expand_inputs(inputs, out_dir=out_dir)  # outputs are never inputs
    if not files:
        raise FileNotFoundError(
            f"no images in {', '.join(map(str, inputs))} (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    pairs = {kind: pair_files(files, sources, f"{kind} file", f"--{kind}")
             for kind, sources in (("depth", depth), ("hha", hha)) if sources}  # fmt: skip
    check_pairs([f for f, _ in files], pairs)
    out = Path(out_dir)
    stems = _output_stems([rel for _, rel in files], heads)  # from every input: in each process
    targets = [_output_paths(f, out / s, overlay, save_probs, heads)
               for (f, _), s in zip(files, stems, strict=True)]  # fmt: skip
    mine = list(range(rank, len(files), world))
    done = {i for i in mine if skip_existing and all(map(_complete, targets[i].values()))}
    todo = [i for i in mine if i not in done]
    what = {"labels": "labels", "overlay": "overlay", "probs": "probabilities"}
    inputs_read = [f for f, _ in files] + [p for ps in pairs.values() for p in ps]
    check_outputs([(p, f"{head + ' ' if head else ''}{what[kind]} of {files[i][0]}")
                   for i in todo for (head, kind), p in targets[i].items()], inputs_read,
                  overwrite=overwrite or skip_existing)  # fmt: skip
    _check_writable(out)
    if check_only:  # --nproc's check run: the checks alone (cli.launch)
        return []
    names = {head: class_names(model, head) for head in heads}
    warning = UNTRAINED_WARNING if net_attr(model, "untrained") else None
    results: dict[int, dict] = {i: {"input": str(files[i][0]), "ok": True, "skipped": True}
                                for i in done}  # fmt: skip
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress,
               dynamic_ncols=True)  # fmt: skip
    bar.update(len(done) * world)  # rank 0's bar: its own share times the processes
    pending: dict[tuple[int, int], list[tuple[int, np.ndarray, dict, float]]] = {}
    # on a CPU other programs share: each group on the faster thread count (FastFCN chooses
    # its own per call)
    threads = step_threads(dev, model)

    def fail(i: int, msg: str) -> None:
        results[i] = {"input": str(files[i][0]), "ok": False, "error": msg.splitlines()[0]}
        tqdm.write(f"error: {results[i]['error']}", file=sys.stderr)
        bar.update(world)

    def flush(key: tuple[int, int]) -> None:
        group = pending.pop(key)
        t0 = time.perf_counter()
        try:
            with threads():
                labels, probs = _run(model, [s for _, _, s, _ in group], dev,
                                     _tile_plan(tile, None, *key), probs=save_probs)  # fmt: skip
        except (RuntimeError, ValueError) as e:  # e.g. out of memory: every image of the group
            for i, _, _, _ in group:
                fail(i, f"{files[i][0]}: inference failed: {e}")
            return
        share = (time.perf_counter() - t0) / len(group)
        for k, (i, rgb, _, t_read) in enumerate(group):
            try:
                p_k = None if probs is None else {h: v[k] for h, v in probs.items()}
                rec = _write_outputs(files[i][0], targets[i], rgb,
                                     {h: v[k] for h, v in labels.items()}, p_k, names,
                                     warning)  # fmt: skip
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
        _Reader([f for f, _ in files], todo, plan, pairs, camera), batch_size=None,
        num_workers=workers, prefetch_factor=2 * batch_size if workers else None,
    )  # fmt: skip
    for i, rgb, sample, error, t_read in reader:
        if error is not None:
            fail(i, error)
            continue
        rgb = np.asarray(rgb)
        sample = {k: np.asarray(v) for k, v in sample.items()}
        key = rgb.shape[:2]
        pending.setdefault(key, []).append((i, rgb, sample, t_read))
        if len(pending[key]) >= batch_size:
            flush(key)
        elif sum(len(g) for g in pending.values()) >= 2 * batch_size:  # bound memory
            flush(max(pending, key=lambda k: len(pending[k])))
    for key in list(pending):
        flush(key)
    bar.close()
    return [results[i] for i in mine if i in results]
