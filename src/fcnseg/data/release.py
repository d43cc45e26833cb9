"""What the readers of the release's other data sets share (NYUDv2, SIFT Flow, PASCAL-Context).

`read_mat_labels(path, variable, what)` returns one integer (H, W) variable of a .mat file, or
raises ImageError naming the file: missing, empty, unreadable (MATLAB v7.3 files are HDF5, which
scipy.io cannot read: re-save with ``save(..., '-v7')``), no such variable (the message lists the
variables the file holds), or not an integer 2-D array.

`reference_path(dataset, name)`: a list shipped with fcnseg (split lists, class names) under
fcnseg/data/reference/<dataset>/<name>, copied from the reference release.

`split_ids(...)`: ROOT/<split>.txt when present (the release keeps its lists there), else the
shipped list. `check_options(...)`: unknown data options name the valid ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .io import ImageError

__all__ = [
    "ReleaseSet",
    "check_choice",
    "check_options",
    "check_prefixed_files",
    "check_same_size",
    "chw",
    "read_mat_labels",
    "reference_lines",
    "reference_path",
    "split_ids",
]

_REFERENCE = Path(__file__).parent / "reference"


def reference_path(dataset: str, name: str) -> Path:
    """fcnseg/data/reference/<dataset>/<name> (e.g. "nyud", "train.txt")."""
    return _REFERENCE / dataset / name


def reference_lines(dataset: str, name: str) -> list[str]:
    """The non-empty lines of a shipped list, stripped."""
    text = reference_path(dataset, name).read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def split_ids(
    root: Path, dataset: str, split: str, shipped: dict[str, tuple[str, ...]], name: str
) -> tuple[list[str], str]:
    """(ids, where they came from) for `split`: root/<split>.txt if present, else shipped lists.

    `shipped` maps a split name to the shipped files it joins (e.g. trainval: train + val).
    """
    from .voc import DatasetError, read_split

    own = root / f"{split}.txt"
    if own.is_file():
        return read_split(own), str(own)
    if split not in shipped:
        found = sorted(p.stem for p in root.glob("*.txt"))
        raise DatasetError(
            f"{name} split '{split}': no {own}, and fcnseg ships only "
            f"{', '.join(shipped)}; splits in {root}: {', '.join(found) or 'none'}. "
            f"Give a known split, or write {own} (one id per line)"
        )
    ids = [i for f in shipped[split] for i in reference_lines(dataset, f)]
    return ids, f"the shipped {name} {split} list ({' + '.join(shipped[split])})"


def check_prefixed_files(
    ids: list[str], folder: Path, prefix: str, suffix: str, what: str, where: str
) -> None:
    """Raise DatasetError listing the ids with no folder/<prefix><id><suffix>."""
    from .voc import DatasetError, _listing

    present = set(os.listdir(folder)) if folder.is_dir() else set()
    missing = [i for i in ids if f"{prefix}{i}{suffix}" not in present]
    if missing:
        raise DatasetError(
            f"{len(missing)} of {len(ids)} ids in {where} have no {what} "
            f"{folder}/{prefix}<id>{suffix}: {_listing(missing)}. Add the files, or remove "
            f"those ids from the split"
        )


def check_options(name: str, options: dict, valid: dict[str, str]) -> None:
    """Raise ValueError for options not in `valid` ({option: what it does}), listing the valid."""
    import difflib

    unknown = sorted(set(options) - set(valid))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(valid), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        listed = "; ".join(f"{k} ({v})" for k, v in valid.items())
        raise ValueError(
            f"data '{name}': unknown option(s) {', '.join(unknown)}{hint}; valid options: {listed}"
        )


def check_choice(name: str, option: str, value, choices: tuple[str, ...]) -> str:
    """`value` if it is one of `choices`, else ValueError naming the option and the choices."""
    if value not in choices:
        raise ValueError(f"data '{name}': {option}={value!r} is not one of {', '.join(choices)}")
    return value


def read_mat_labels(path: str | os.PathLike, variable: str, what: str) -> np.ndarray:
    """The integer (H, W) array `variable` of the .mat file at `path`; `what` names it in errors.

    Returned as int32 (SIFT Flow's geometric labels hold -1; Context's hold up to 459).
    """
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{what} {p}: no such file")
    if p.stat().st_size == 0:
        raise ImageError(f"{what} {p} is empty (0 bytes): copy or extract it again")
    import scipy.io  # here: importing fcnseg.data should not cost scipy's import time

    try:
        mat = scipy.io.loadmat(p, variable_names=[variable])
    except NotImplementedError as e:  # "Please use HDF reader for matlab v7.3 files"
        raise ImageError(
            f"{what} {p} is a MATLAB v7.3 (HDF5) file, which scipy.io cannot read; re-save it "
            f"in MATLAB with save('{p.name}', '{variable}', '-v7')"
        ) from e
    except Exception as e:  # scipy raises ValueError, TypeError, MatReadError, OSError, ...
        raise ImageError(
            f"{what} {p} is not a readable .mat file ({type(e).__name__}: {e}); "
            f"extract it again from the data set's archive"
        ) from e
    if variable not in mat:
        try:
            names = [name for name, _, _ in scipy.io.whosmat(p)]
        except Exception:  # the listing is only a hint
            names = []
        raise ImageError(
            f"{what} {p} has no variable '{variable}' (it holds: {', '.join(names) or 'nothing'}); "
            f"is it the right file for this data set?"
        )
    a = np.asarray(mat[variable])
    if a.ndim != 2 or a.dtype.kind not in "uif":
        raise ImageError(
            f"{what} {p}: variable '{variable}' should be an integer (H, W) label map, got "
            f"{a.dtype} {a.shape}"
        )
    # MATLAB's default type is double: accept whole numbers only
    if a.dtype.kind == "f" and (not np.isfinite(a).all() or (a != np.round(a)).any()):
        raise ImageError(
            f"{what} {p}: variable '{variable}' holds non-integer values; labels are whole numbers"
        )
    if a.size and (a.min() < -(2**31) or a.max() >= 2**31):
        raise ImageError(f"{what} {p}: labels {a.min()}..{a.max()} are out of range")
    return a.astype(np.int32)


def check_same_size(arrays: dict[Path, np.ndarray]) -> None:
    """Raise ImageError if the (H, W) of the arrays (keyed by their files) differ."""
    sizes = {p: a.shape[:2] for p, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{p} is {w} x {h}" for p, (h, w) in sizes.items())
        raise ImageError(
            f"the files of one item differ in size: {listed}; every file of an item must cover "
            f"the same pixels: re-export the odd one out"
        )


class ReleaseSet(Dataset):
    """Shared behaviour of NYUDSegmentation, SIFTFlowSegmentation, ContextSegmentation.

    Subclasses set `ids`, `class_names`, `name` and implement `load(index) -> (image, target)`.
    """

    name: str
    ids: list[str]
    class_names: tuple[str, ...]
    ignore_index: int = 255

    def __init__(self, transforms):
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int):
        raise NotImplementedError

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        image, target = self.load(index)
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target

    def verify(self) -> None:
        """Read every item now; raise DatasetError listing the ones that fail."""
        from .voc import DatasetError

        problems = []
        for i in range(len(self)):
            try:
                self.load(i)
            except ImageError as e:
                problems.append(str(e))
        if problems:
            shown = "\n  ".join(problems[:5])
            more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise DatasetError(
                f"{len(problems)} of {len(self)} {self.name} items cannot be read:\n  {shown}{more}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} items, {self.num_classes} classes)"


def chw(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) array -> (C, H, W) tensor, dtype kept."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
