"""NYUDv2 (Silberman et al. 2012) as the FCN release reads it: 40 classes, colour, depth, HHA.

Layout (the release's "nyud" folder, FCN.md section 9)::

    root/data/images/img_<id>.png      colour, 8-bit RGB
    root/data/depth/img_<id>.png       depth, 16-bit single channel (as stored: millimetres)
    root/data/hha/img_<id>.png         HHA, 8-bit 3 channels (`fcnseg.data.hha` makes them)
    root/segmentation/img_<id>.mat     variable "segmentation": 0 void, 1..40 classes
    root/<split>.txt                   optional; else fcnseg's shipped train (381), val (414),
                                       test (654) lists, trainval = train + val

Labels as the release decodes them: 0 (void) -> 255 (ignore), 1..40 -> 0..39; anything else is
an error naming the file. The paper's numbers use the test split.

Items are (image, target), target int64 (H, W). The image depends on `modality`:

    color        uint8 (3, H, W), RGB
    hha          uint8 (3, H, W), the three HHA channels in file order
    depth        float32 (1, H, W), the stored 16-bit values (0 = no reading)
    color-depth  float32 (4, H, W): R, G, B (0..255) then the stored depth (early fusion)
    color-hha    dict {"color": uint8 (3, H, W), "hha": uint8 (3, H, W)} (late fusion)

Depth is given as stored; the release's net takes log(d) - 7.844 (`log_depth`), and colour and
HHA minus the means in `NYUD_MEANS` (BGR order, as the release's Caffe layers).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .hha import read_depth
from .io import ImageError, read_image
from .release import (
    ReleaseSet,
    check_choice,
    check_prefixed_files,
    check_same_size,
    chw,
    read_mat_labels,
    reference_lines,
    split_ids,
)
from .voc import DatasetError, check_ids

__all__ = ["NYUD_CLASSES", "NYUD_MEANS", "NYUD_MODALITIES", "NYUDSegmentation", "log_depth"]

NYUD_CLASSES: tuple[str, ...] = tuple(reference_lines("nyud", "classes.txt"))
NYUD_MODALITIES = ("color", "hha", "depth", "color-depth", "color-hha")
# the release's means (FCN.md section 8): colour and HHA in BGR channel order, log-depth
NYUD_MEANS = {
    "color": (116.190, 97.203, 92.318),
    "hha": (132.431, 94.076, 118.477),
    "log_depth": 7.844,
}
_SHIPPED = {
    "train": ("train.txt",),
    "val": ("val.txt",),
    "test": ("test.txt",),
    "trainval": ("train.txt", "val.txt"),
}
_LAYOUT = (
    "the NYUDv2 layout is root/data/images/img_<id>.png, root/data/depth/img_<id>.png, "
    "root/data/hha/img_<id>.png, root/segmentation/img_<id>.mat (the release's nyud folder)"
)
# modality -> the folders under root/data it reads
_FOLDERS = {
    "color": ("images",),
    "hha": ("hha",),
    "depth": ("depth",),
    "color-depth": ("images", "depth"),
    "color-hha": ("images", "hha"),
}


def log_depth(depth: torch.Tensor) -> torch.Tensor:
    """The release's depth input: log(d) - 7.844, d as stored; missing depth (0) taken as d = 1."""
    return depth.float().clamp_min(1.0).log() - NYUD_MEANS["log_depth"]


def decode_nyud_labels(seg: np.ndarray, source: str) -> np.ndarray:
    """Release labels (0 void, 1..40) -> uint8 (0..39, 255 ignore); other values raise."""
    bad = (seg < 0) | (seg > len(NYUD_CLASSES))
    if bad.any():
        values = np.unique(seg[bad])
        raise ImageError(
            f"NYUDv2 labels {source}: values {', '.join(map(str, values[:10]))} are outside "
            f"0 (void) .. {len(NYUD_CLASSES)}; is this a 40-class segmentation file (the "
            f"release's segmentation/ folder, not the 894-class raw labels)?"
        )
    out = (seg - 1).astype(np.uint8)  # 0 - 1 wraps to 255 = ignore
    return out


class NYUDSegmentation(ReleaseSet):
    """One split of NYUDv2, 40 classes (NYUD_CLASSES), 255 = ignore; items in the module doc.

    `modality`: one of NYUD_MODALITIES. `ids` (optional) replaces the split list.
    `transforms` gets (image, target); a color-hha item's image is a dict.
    """

    name = "NYUDv2"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        modality: str = "color",
        ids: Sequence[str] | None = None,
        transforms: Callable | None = None,
    ):
        super().__init__(transforms)
        self.modality = check_choice("nyud", "modality", modality, NYUD_MODALITIES)
        self.class_names = NYUD_CLASSES
        self.root, self.split = Path(root), split
        if not self.root.is_dir():
            raise DatasetError(f"NYUDv2 root {self.root} is not a folder: {_LAYOUT}")
        folders = [self.root / "data" / f for f in _FOLDERS[modality]]
        for folder in [*folders, self.root / "segmentation"]:
            if not folder.is_dir():
                hint = ""
                if (self.root / "nyud" / "data").is_dir():
                    hint = f". Did you mean root={self.root / 'nyud'}?"
                raise DatasetError(
                    f"NYUDv2 root {self.root} has no {folder.relative_to(self.root)}/ (needed "
                    f"for modality {modality}): {_LAYOUT}{hint}"
                )
        if ids is None:
            ids, where = split_ids(self.root, "nyud", split, _SHIPPED, "NYUDv2")
        else:
            ids, where = list(ids), f"the {len(ids)} ids given"
        check_ids(ids, where)
        for folder in [*folders, self.root / "segmentation"]:
            what = "label file" if folder.name == "segmentation" else f"{folder.name} file"
            suffix = ".mat" if folder.name == "segmentation" else ".png"
            check_prefixed_files(ids, folder, "img_", suffix, what, where)
        self.ids = ids

    def paths(self, index: int) -> dict[str, Path]:
        """The files of item `index`: {"images" | "depth" | "hha": png, "labels": mat}."""
        f = f"img_{self.ids[index]}"
        out = {k: self.root / "data" / k / f"{f}.png" for k in _FOLDERS[self.modality]}
        out["labels"] = self.root / "segmentation" / f"{f}.mat"
        return out

    def load(self, index: int):
        paths = self.paths(index)
        arrays = {}
        for key, p in paths.items():
            if key == "labels":
                seg = read_mat_labels(p, "segmentation", "NYUDv2 label file")
                arrays[p] = decode_nyud_labels(seg, str(p))
            elif key == "depth":
                arrays[p] = read_depth(p)
            else:
                arrays[p] = read_image(p)
        check_same_size(arrays)
        a = {key: arrays[p] for key, p in paths.items()}
        target = torch.from_numpy(a["labels"].astype(np.int64))
        if self.modality == "color":
            return chw(a["images"]), target
        if self.modality == "hha":
            return chw(a["hha"]), target
        if self.modality == "color-hha":
            return {"color": chw(a["images"]), "hha": chw(a["hha"])}, target
        depth = torch.from_numpy(a["depth"].astype(np.float32))[None]  # (1, H, W)
        if self.modality == "depth":
            return depth, target
        return torch.cat([chw(a["images"]).float(), depth]), target  # color-depth: (4, H, W)
