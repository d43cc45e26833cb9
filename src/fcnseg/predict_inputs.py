"""What a net takes and where each input comes from: the rules for photos, depth and HHA, one
sample read and checked, and files paired with the images they belong to.

    input_kinds(model)            ("color",), ("hha",), ("color", "depth"), ("color", "hha")
    input_plan(model, depth=...)  {kind: "image" | "depth" | "hha" | "depth->hha"}, or a
                                  ValueError naming the net and the fix
    load_sample(plan, image, depth=..., hha_image=..., intrinsics=...)   the arrays, checked
    expand_inputs(["photos/", "*.png"])                files, folders, globs -> [(file, rel)]
    pair_files(images, ["depth/"], "depth file", "--depth")   each image's depth file, by name

A depth or HHA file pairs with the image at the same path relative to the folder or glob root
given (photos/a/1.jpg <-> depth/a/1.png), or else with the only file of the same stem
(img_1.jpg <-> img_1.png). `check_pairs` reads the files' headers only: a missing pair, two
candidates, a size mismatch, an 8-bit depth file or a non-RGB HHA file is one error naming
the files, before any image is segmented.
"""

from __future__ import annotations

import glob
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .data.hha import CAMERAS, hha, read_depth
from .data.io import ImageError, to_rgb

__all__ = [
    "DEPTH_SCALE",
    "IMAGE_EXTENSIONS",
    "camera_intrinsics",
    "check_pairs",
    "describe",
    "expand_inputs",
    "head_names",
    "input_keys",
    "input_kind",
    "input_kinds",
    "input_plan",
    "load_sample",
    "net_attr",
    "net_name",
    "pair_files",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
DEPTH_SCALE = 0.001  # metres per stored depth unit: millimetres, as NYUDv2's PNGs
_SIXTEEN = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # read_depth's modes

ImageLike = np.ndarray | Image.Image | str | os.PathLike
DepthLike = np.ndarray | torch.Tensor | str | os.PathLike
Intrinsics = str | Sequence[float]


# ---------------------------------------------------------------------------- what a net takes
def net_attr(model: nn.Module, name: str):
    """`model.name`, or that of the net a wrapper (FastFCN, DistributedDataParallel) holds."""
    value = getattr(model, name, None)
    for inner in ("model", "module"):
        if value is not None:
            break
        held = getattr(model, inner, None)
        value = getattr(held, name, None) if isinstance(held, nn.Module) else None
    return value


def net_name(model: nn.Module) -> str:
    """The release net's name (nyud-fcn32s-color-d), else the model's registered name."""
    ref = net_attr(model, "reference")
    return getattr(ref, "name", None) or net_attr(model, "name") or type(model).__name__


def input_keys(model: nn.Module) -> tuple[str, ...]:
    """The net's inputs as it names them, in order: ("image",), ("hha",), ("color", "depth")."""
    pre = net_attr(model, "preprocessing")
    if isinstance(pre, Mapping):
        return tuple(pre)
    inputs = getattr(net_attr(model, "reference"), "inputs", None)
    return tuple(inputs) if inputs and len(inputs) == 1 else ("image",)


def input_kind(key: str) -> str:
    """An input's name -> what it holds: "image" and "color" are RGB photos ("color")."""
    return "color" if key in ("image", "color") else key


def input_kinds(model: nn.Module) -> tuple[str, ...]:
    """What the net takes, in order: "color" (an RGB photo), "depth", "hha"."""
    kinds = tuple(input_kind(k) for k in input_keys(model))
    unknown = [k for k in kinds if k not in ("color", "depth", "hha")]
    if unknown:
        raise ValueError(f"{net_name(model)} takes inputs {list(input_keys(model))}; fcnseg "
                         f"predict knows RGB photos, depth and HHA only")  # fmt: skip
    return kinds


def head_names(model: nn.Module) -> tuple[str, ...]:
    """The net's outputs: ("",) for one score map, ("sem", "geo") for SIFT Flow's two heads."""
    return tuple(net_attr(model, "head_names") or ("",))


_FLAGS = {"depth": "depth=", "hha": "hha=", "camera": "intrinsics=(fx, fy, cx, cy) or 'nyud'"}


def input_plan(
    model: nn.Module,
    *,
    depth: str | None = None,
    hha: str | None = None,
    intrinsics: bool = False,
    flags: Mapping[str, str] = _FLAGS,
) -> dict[str, str]:
    """Where each input of the net comes from: {kind: "image" | "depth" | "hha" | "depth->hha"}.

    depth / hha: what was given (a description for messages, e.g. the file), or None;
    intrinsics: whether a camera was given; flags: how the user spells these options.
    Raises ValueError naming the net and the fix when an input is missing or one given would
    go unused (a colour-only net with depth, a camera where no HHA is computed).
    """
    kinds, name = input_kinds(model), net_name(model)
    fd, fh, fc = flags["depth"], flags["hha"], flags["camera"]
    unused = [(depth, fd), (hha, fh)]
    if kinds == ("color",):
        given = [f for v, f in unused if v is not None]
        if given:
            raise ValueError(
                f"{name} takes an RGB photo only: it has no use for {' or '.join(given)} "
                f"({depth or hha}); drop it, or use a net that takes depth (nyud-fcn32s-color-d, "
                f"nyud-fcn32s-color-hha, nyud-fcn32s-hha)"
            )
        plan = {"color": "image"}
    elif "depth" in kinds:  # early fusion: colour + log depth
        if hha is not None:
            raise ValueError(f"{name} takes depth, not HHA ({hha}): pass {fd} instead of {fh}")
        if depth is None:
            raise ValueError(f"{name} takes a depth map with each image: pass {fd} (16-bit "
                             f"PNGs in millimetres, as NYUDv2's)")  # fmt: skip
        plan = {"color": "image", "depth": "depth"}
    else:  # HHA: given, computed from depth, or (HHA-only net) the image itself
        if depth is not None and hha is not None:
            raise ValueError(f"{name} takes HHA: give {fh} or {fd} (HHA computed from it), "
                             f"not both")  # fmt: skip
        if hha is not None:
            source = "hha"
        elif depth is not None:
            source = "depth->hha"
            if not intrinsics:
                raise ValueError(
                    f"{name} takes HHA, computed here from the depth maps ({depth}) with the "
                    f"camera's intrinsics: pass {fc}"
                )
        elif kinds == ("hha",):
            source = "image"
        else:
            raise ValueError(
                f"{name} takes an HHA image with each colour image: pass {fh} (HHA PNGs, "
                f"`fcnseg hha` makes them) or {fd} (16-bit, millimetres) with {fc}"
            )
        plan = {"color": "image", "hha": source} if "color" in kinds else {"hha": source}
    if intrinsics and "depth->hha" not in plan.values():
        sources = ", ".join(f"{k} from {v}" for k, v in plan.items())
        raise ValueError(f"{name} computes no HHA here ({sources}): drop the camera ({fc})")
    return plan


def camera_intrinsics(intrinsics: Intrinsics | None) -> tuple[float, float, float, float] | None:
    """(fx, fy, cx, cy) or a camera name of fcnseg.data.hha.CAMERAS -> four numbers, checked."""
    if intrinsics is None:
        return None
    if isinstance(intrinsics, str):
        if intrinsics not in CAMERAS:
            raise ValueError(f"camera {intrinsics!r} unknown: known cameras are "
                             f"{', '.join(CAMERAS)}, or give (fx, fy, cx, cy)")  # fmt: skip
        return CAMERAS[intrinsics]
    try:
        fx, fy, cx, cy = (float(v) for v in intrinsics)
    except (TypeError, ValueError):
        raise ValueError(
            f"intrinsics must be four numbers (fx, fy, cx, cy) in pixels or a "
            f"camera name ({', '.join(CAMERAS)}); got {intrinsics!r}"
        ) from None
    if not (fx > 0 and fy > 0 and np.isfinite([fx, fy, cx, cy]).all()):
        raise ValueError(f"intrinsics fx, fy must be > 0 and all finite; got {intrinsics!r}")
    return fx, fy, cx, cy


def describe(x, what: str) -> str:
    """A path as itself, anything else as "the <what> array" (for messages)."""
    return os.fspath(x) if isinstance(x, str | os.PathLike) else f"the {what} array"


def _as_depth(depth: DepthLike, label: str) -> np.ndarray:
    """A 16-bit depth PNG, or an (H, W) array of stored values (millimetres) -> float32."""
    if isinstance(depth, str | os.PathLike):
        return read_depth(depth).astype(np.float32)
    if isinstance(depth, torch.Tensor):
        depth = depth.detach().cpu().numpy()
    a = np.asarray(depth)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise ValueError(f"{label}: a depth map is (H, W), got shape {a.shape}")
    if a.dtype in (np.uint8, np.int8, np.bool_):
        raise ValueError(
            f"{label} is {a.dtype}: an 8-bit picture of depth has lost the values; give the "
            f"stored 16-bit depth (millimetres, 0 = no reading)"
        )
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise ValueError(f"{label}: depth must hold numbers (millimetres), got {a.dtype}")
    if a.size and not (np.isfinite(a).all() and a.min() >= 0):
        raise ValueError(f"{label}: depth must be finite and >= 0 (millimetres, 0 = no "
                         f"reading); it holds {a.min()}..{a.max()}")  # fmt: skip
    return a.astype(np.float32)


def load_sample(
    plan: Mapping[str, str],
    image: ImageLike,
    depth: DepthLike | None = None,
    hha_image: ImageLike | None = None,
    intrinsics: Intrinsics | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One input's arrays, read and checked by `plan` (see `input_plan`).

    Returns (the image, uint8 RGB (H, W, 3), for overlays; {kind: array}): "color" and "hha"
    uint8 (H, W, 3), "depth" float32 (H, W) millimetres. Every array must have the image's
    size; a mismatch raises naming both.
    """
    rgb = to_rgb(image)
    h, w = rgb.shape[:2]
    sample: dict[str, np.ndarray] = {}
    for kind, source in plan.items():
        if source == "image":
            sample[kind] = rgb
            continue
        label = describe(depth if source.startswith("depth") else hha_image, source.split("-")[0])
        a = to_rgb(hha_image) if source == "hha" else _as_depth(depth, label)
        if a.shape[:2] != (h, w):
            raise ValueError(
                f"{label} is {a.shape[1]} x {a.shape[0]} but its image {describe(image, 'image')} "
                f"is {w} x {h}: depth and HHA must be registered to the image, pixel for pixel"
            )
        if source == "depth->hha":
            cam = camera_intrinsics(intrinsics)
            if not (a > 0).any():
                raise ValueError(f"{label} holds no depth (all 0): HHA cannot be computed")
            a = hha(a.astype(np.float64) * DEPTH_SCALE, cam)
        sample[kind] = a
    return rgb, sample


# ---------------------------------------------------------------------------- files
def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


# the endings of predict's own outputs (predict_folder): never read back as photos
OUTPUT_MARKS = ("_overlay", "_sem", "_geo", "_probs")


def _in(path: Path, folder: Path | None) -> bool:
    """`path` is `folder` or lies below it (both resolved: links and `..` spellings count)."""
    if folder is None:
        return False
    r = path.resolve()
    return r == folder or folder in r.parents


def _looks_like_output(f: Path, siblings: set[str]) -> bool:
    """A file named as predict names its outputs: x_overlay.png, x_sem.png, ..., or x.png (the
    labels) beside a photo x.jpg."""
    stem = f.stem
    if any(stem.endswith(m) or f"{m}_" in stem for m in OUTPUT_MARKS):
        return True
    return f.suffix.lower() == ".png" and any(
        n != f.name and Path(n).stem == stem for n in siblings
    )


def expand_inputs(
    inputs: Sequence[str | os.PathLike], *, out_dir: str | os.PathLike | None = None
) -> list[tuple[Path, Path]]:
    """Files, folders (recursively, by extension) and globs -> [(file, path relative to its
    root)], in order, each file once. A path that does not exist raises FileNotFoundError.

    out_dir: predict's output folder. Outputs are never inputs: a folder or glob skips every
    file under out_dir (a second `predict DIR -o DIR/out` does not read DIR/out's overlays), a
    glob rooted in out_dir skips predict's own output names there, and out_dir equal to an
    input folder is refused (ValueError: the outputs would be mixed with the photos)."""
    out = Path(out_dir).resolve() if out_dir is not None else None
    found: dict[Path, Path] = {}
    skipped = 0
    for item in inputs:
        text = str(item)
        p = Path(text)
        if p.is_file():
            found.setdefault(p, Path(p.name))
        elif p.is_dir():
            if out is not None and p.resolve() == out:
                raise ValueError(f"-o {out_dir} is the input folder {p}: the outputs would sit "
                                 f"among the photos (and a later run would read them as photos)"
                                 f"; choose another -o, e.g. -o {p / 'predictions'}")  # fmt: skip
            files = sorted(f for f in p.rglob("*") if f.is_file() and _is_image(f))
            mine = [f for f in files if not _in(f, out)]
            skipped += len(files) - len(mine)
            if not mine:
                print(f"warning: folder {p} holds no images ({', '.join(IMAGE_EXTENSIONS)})",
                      file=sys.stderr)  # fmt: skip
            for f in mine:
                found.setdefault(f, f.relative_to(p))
        elif _has_magic(text):
            parts = Path(text).parts
            root = Path(*[q for q in parts[: next(i for i, q in enumerate(parts) if _has_magic(q))]]
                        or ["."])  # fmt: skip
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            matches = [m for m in matches if m.is_file()]
            if not matches:
                raise FileNotFoundError(f"input pattern '{text}' matches no files")
            if out is not None and root.resolve() == out:  # photos and outputs share a root
                beside: dict[Path, set[str]] = {}
                for m in matches:
                    beside.setdefault(m.parent, set()).add(m.name)
                mine = [m for m in matches if not _looks_like_output(m, beside[m.parent])]
            else:
                mine = [m for m in matches if not _in(m, out)]
            skipped += len(matches) - len(mine)
            for m in mine:
                found.setdefault(m, m.relative_to(root) if m.is_relative_to(root) else Path(m.name))
        else:
            raise FileNotFoundError(
                f"input '{text}' not found: no such file or folder (cwd is {Path.cwd()})"
            )
    if skipped:
        print(f"note: {skipped} file(s) in the output folder {out_dir} skipped: outputs are "
              f"never read as inputs", file=sys.stderr)  # fmt: skip
    return list(found.items())


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _listed(problems: list[str], limit: int = 5) -> str:
    more = f"; ... (+{len(problems) - limit} more)" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


def pair_files(
    images: Sequence[tuple[Path, Path]],
    sources: Sequence[str | os.PathLike],
    what: str,
    flag: str,
) -> list[Path]:
    """For each (image, relative path) of `images` (`expand_inputs`), its file among `sources`
    (files, folders, globs): the one at the same relative path whatever its extension, else the
    only one with the image's file stem. The images themselves are never their own pair. One
    ValueError names every image without a file (or with two) and where they were looked for."""
    where = " ".join(f"{flag} {s}" for s in sources)
    try:
        found = expand_inputs(sources)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{flag}: {e}") from None
    own = {os.path.abspath(f) for f, _ in images}
    by_rel: dict[Path, list[Path]] = {}
    by_stem: dict[str, list[Path]] = {}
    for f, rel in found:
        if os.path.abspath(f) not in own:
            by_rel.setdefault(rel.with_suffix(""), []).append(f)
            by_stem.setdefault(f.stem, []).append(f)
    pairs, missing, twice = [], [], []
    for f, rel in images:
        hits = by_rel.get(rel.with_suffix("")) or by_stem.get(f.stem, [])
        if len(hits) == 1:
            pairs.append(hits[0])
        elif hits:
            twice.append(f"{f}: {' and '.join(map(str, hits))}")
        else:
            missing.append(str(f))
    if twice:
        raise ValueError(f"{len(twice)} image(s) match several {what}s in {where}: "
                         f"{_listed(twice)}; keep the {what}s in the images' sub-folders, "
                         f"named as the images")  # fmt: skip
    if missing:
        raise ValueError(
            f"no {what} for {len(missing)} of {len(images)} image(s) in {where}: "
            f"{_listed(missing)}. A {what} pairs with the image of the same name "
            f"(images/img_1.jpg <-> depth/img_1.png); nothing was segmented"
        )
    return pairs


def _header(path: Path, what: str) -> tuple[str, tuple[int, int]]:
    """(pixel mode, (width, height) as shown, EXIF rotation applied) without decoding pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if im.getexif().get(0x0112) in (5, 6, 7, 8):  # turned a quarter
                    w, h = h, w
                return im.mode, (w, h)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{what} {path} cannot be read ({type(e).__name__}: {e})") from None


def check_pairs(images: Sequence[Path], pairs: Mapping[str, Sequence[Path]]) -> None:
    """Before any work: every paired file ({"depth" | "hha": one per image}) is readable, of
    its kind (depth: 16-bit single channel; HHA: 8-bit RGB) and of its image's size. One
    ValueError lists the files that are not. An unreadable image is left to be reported with
    the others at its turn."""
    problems = []
    for i, image in enumerate(images):
        try:
            size = _header(image, "image")[1]
        except ImageError:
            size = None
        for kind, files in pairs.items():
            what = "depth image" if kind == "depth" else "HHA image"
            try:
                mode, got = _header(files[i], what)
            except ImageError as e:
                problems.append(str(e))
                continue
            if kind == "depth" and mode not in _SIXTEEN:
                problems.append(
                    f"depth image {files[i]} has pixel mode {mode!r}: depth must be the 16-bit "
                    f"single-channel PNG as stored (millimetres, as NYUDv2); an 8-bit or "
                    f"colour picture of depth has lost the values"
                )
            elif kind == "hha" and mode != "RGB":
                problems.append(f"HHA image {files[i]} has pixel mode {mode!r}, not 8-bit RGB "
                                f"(`fcnseg hha` writes HHA PNGs)")  # fmt: skip
            elif size is not None and got != size:
                problems.append(
                    f"{what} {files[i]} is {got[0]} x {got[1]} but its image {image} is "
                    f"{size[0]} x {size[1]} (must be registered to it, pixel for pixel)"
                )
    if problems:
        raise ValueError(f"{_listed(problems)}; nothing was segmented")
