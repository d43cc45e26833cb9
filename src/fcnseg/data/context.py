"""PASCAL-Context (Mottaghi et al. 2014), the 59-class task, as the FCN release reads it.

Layout (FCN.md section 9)::

    root/JPEGImages/<id>.jpg              VOC2010's images
    root/ImageSets/Main/<split>.txt       VOC2010's splits: train (4,998), val (5,105)
    ANN/trainval/<id>.mat                 variable "LabelMap": 1..459, indices into labels.txt
    ANN/labels.txt                        "n: name" lines (459); if absent, fcnseg's shipped copy

ANN is root unless the option `annotations=DIR` says where the dataset's trainval/ and
labels.txt live.

Labels as the release decodes them: each of the 59 classes (CONTEXT_CLASSES[1:], the task's
59_labels list) is found BY NAME among labels.txt's names (spaces removed, as the release does),
except three names that differ between the lists: the 59 list's diningtable, bedcloth and
clothes are labels.txt's table, bedclothes and cloth (`CONTEXT_RENAMED`). Those 59 labels become
1..59 in list order; every other label (and 0) becomes 0, background, which is a scored class:
60 classes, no 255 in the targets. A LabelMap value beyond labels.txt is an error naming the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .io import ImageError, read_image
from .release import ReleaseSet, check_same_size, chw, read_mat_labels, reference_lines
from .voc import DatasetError, check_files, check_ids, read_split

__all__ = [
    "CONTEXT_CLASSES",
    "CONTEXT_RENAMED",
    "ContextSegmentation",
    "context_lookup",
    "read_context_labels",
]

CONTEXT_CLASSES: tuple[str, ...] = tuple(
    line.split(":", 1)[1].strip() for line in reference_lines("pascal-context", "classes-59.txt")
)  # background, then the 59
# the 59 list's name -> the full list's name (the release's "inconsistencies")
CONTEXT_RENAMED = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}
MAX_LABEL = 65535  # LabelMap values are uint16 (the dataset's go to 459)
_LINE = re.compile(r"^\s*(\d+)\s*:\s*(.+?)\s*$")
_LAYOUT = (
    "the PASCAL-Context layout is root/JPEGImages/<id>.jpg and root/ImageSets/Main/<split>.txt "
    "(VOC2010), with the dataset's trainval/<id>.mat and labels.txt in root or in the folder "
    "given by the option annotations=DIR"
)


def read_context_labels(path: str | os.PathLike | None) -> dict[int, str]:
    """labels.txt ("n: name" lines) -> {n: name}; None reads fcnseg's shipped copy."""
    if path is None:
        lines, where = reference_lines("pascal-context", "classes-400.txt"), "shipped labels"
    else:
        p = Path(path)
        try:
            lines, where = p.read_text("utf-8-sig").splitlines(), str(p)
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"cannot read PASCAL-Context labels {p}: {e}") from e
    out: dict[int, str] = {}
    for k, line in enumerate(lines, 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            raise DatasetError(
                f"PASCAL-Context labels {where}, line {k}: {line!r} is not 'n: name'"
            )
        n = int(m.group(1))
        if n > MAX_LABEL:  # the table context_lookup builds has max label + 1 entries
            raise DatasetError(
                f"PASCAL-Context labels {where}, line {k}: label {m.group(1)} is beyond "
                f"{MAX_LABEL}, the largest a LabelMap (uint16) holds; the dataset's labels.txt "
                f"numbers its 459 labels 1..459"
            )
        if n in out:
            raise DatasetError(f"PASCAL-Context labels {where}: label {n} is listed twice")
        out[n] = m.group(2)
    return out


def context_lookup(labels: dict[int, str], where: str = "labels.txt") -> np.ndarray:
    """A table, full label n -> 59-class index (0 background), built by name as the release."""
    by_name = {name.replace(" ", ""): n for n, name in labels.items()}
    if labels and not 0 <= max(labels) <= MAX_LABEL:
        raise DatasetError(f"PASCAL-Context labels {where}: label {max(labels)} is outside "
                           f"0..{MAX_LABEL}, the values a LabelMap (uint16) holds")  # fmt: skip
    lut = np.zeros(max(labels) + 1, dtype=np.uint8)
    missing = []
    for k, name in enumerate(CONTEXT_CLASSES[1:], 1):
        full = CONTEXT_RENAMED.get(name, name)
        if full not in by_name:
            missing.append(full)
            continue
        lut[by_name[full]] = k
    if missing:
        raise DatasetError(
            f"PASCAL-Context labels {where} lack {len(missing)} of the 59 classes' names: "
            f"{', '.join(missing)}; it should be the dataset's labels.txt (459 labels)"
        )
    return lut


class ContextSegmentation(ReleaseSet):
    """One split of PASCAL-Context: 60 classes (CONTEXT_CLASSES: background + 59), no ignore.

    Items: (image uint8 (3, H, W), target int64 (H, W) in 0..59). `annotations`: the folder
    holding trainval/ and labels.txt (default root). `ids` (optional) replaces the split file.
    """

    name = "PASCAL-Context"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        annotations: str | os.PathLike | None = None,
        ids: Sequence[str] | None = None,
        transforms: Callable | None = None,
    ):
        super().__init__(transforms)
        self.class_names = CONTEXT_CLASSES
        self.root, self.split = Path(root), split
        self.annotations = Path(annotations) if annotations is not None else self.root
        if not self.root.is_dir():
            raise DatasetError(f"PASCAL-Context root {self.root} is not a folder: {_LAYOUT}")
        for folder in (self.root / "JPEGImages", self.annotations / "trainval"):
            if not folder.is_dir():
                hint = ""
                for sub in ("VOCdevkit/VOC2010", "VOC2010"):
                    if (self.root / sub / "JPEGImages").is_dir():
                        hint = f". Did you mean root={self.root / sub}?"
                raise DatasetError(f"PASCAL-Context: no folder {folder}/: {_LAYOUT}{hint}")
        labels_txt = self.annotations / "labels.txt"
        self.labels_file = labels_txt if labels_txt.is_file() else None
        labels = read_context_labels(self.labels_file)
        self.lookup = context_lookup(labels, str(self.labels_file or "shipped labels"))
        if ids is None:
            where = self.root / "ImageSets" / "Main" / f"{split}.txt"
            if not where.is_file():
                found = sorted(p.stem for p in where.parent.glob("*.txt"))[:10]
                raise DatasetError(
                    f"no split file {where}; splits found: {', '.join(found) or 'none'}. {_LAYOUT}"
                )
            ids = read_split(where)
        else:
            ids, where = list(ids), f"the {len(ids)} ids given"
        check_ids(ids, str(where))
        check_files(ids, self.root / "JPEGImages", ".jpg", "image", str(where))
        check_files(ids, self.annotations / "trainval", ".mat", "label file", str(where))
        self.ids = ids

    def decode(self, label_map: np.ndarray, source: str = "array") -> np.ndarray:
        """LabelMap (0..459) -> uint8 0..59 (every label not among the 59 -> 0)."""
        bad = (label_map < 0) | (label_map >= len(self.lookup))
        if bad.any():
            values = np.unique(label_map[bad])
            raise ImageError(
                f"PASCAL-Context labels {source}: values {', '.join(map(str, values[:10]))} "
                f"are not labels of {self.labels_file or 'the shipped labels'} (0.."
                f"{len(self.lookup) - 1}); are the .mat files and labels.txt from one release?"
            )
        return self.lookup[label_map]

    def load(self, index: int):
        i = self.ids[index]
        image_path = self.root / "JPEGImages" / f"{i}.jpg"
        mat_path = self.annotations / "trainval" / f"{i}.mat"
        image = read_image(image_path)
        labels = self.decode(
            read_mat_labels(mat_path, "LabelMap", "PASCAL-Context label file"), str(mat_path)
        )
        check_same_size({image_path: image, mat_path: labels})
        return chw(image), torch.from_numpy(labels.astype(np.int64))
