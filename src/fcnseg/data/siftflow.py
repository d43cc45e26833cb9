"""SIFT Flow (Liu, Yuen, Torralba 2009) as the FCN release reads it: 33 semantic + 3 geometric.

Layout (FCN.md section 9; F = spatial_envelope_256x256_static_8outdoorcategories)::

    root/Images/F/<id>.jpg           256 x 256 colour
    root/SemanticLabels/F/<id>.mat   variable "S": 0 void, 1..33 classes
    root/GeoLabels/F/<id>.mat        variable "S": -1 and 0 void, 1..3 (sky, horizontal, vertical)
    root/<split>.txt                 optional; else fcnseg's shipped trainval (2,486) / test (200)

Labels as the release decodes them: semantic 0 -> 255, 1..33 -> 0..32; geometric -1 and 0 ->
255, 1..3 -> 0..2. Other values are an error naming the file.

Items are (image uint8 (3, H, W), target). `task`: "sem" (target int64 (H, W), 33 classes),
"geo" (3 classes) or "both" (the default; target a dict {"sem": ..., "geo": ...}, as the
release's two-headed net). `class_names` is the semantic list for "sem" and "both", the
geometric one for "geo"; `head_classes` maps each head of the task to its class names.

Scoring as the paper (for evaluation code to honour; the dataset itself drops nothing):

- `excluded_classes` = ("cow", "desert", "moon"): semantic classes absent from the test set,
  left out of the mean accuracy / mean IU; `excluded_class_indices` are their indices (8, 10,
  15 in 0..32). With task "geo" both are empty (the geometric classes are all scored).
- `unannotated_ids` = ("highway_bost181", "street_urb506"): images with no annotation, not
  scored. The shipped lists (2,686 of SIFT Flow's 2,688 images) already leave them out; a
  split file of your own may list them, and `scored(index)` says whether an item counts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .io import ImageError, read_image
from .release import (
    ReleaseSet,
    check_choice,
    check_same_size,
    chw,
    read_mat_labels,
    reference_lines,
    split_ids,
)
from .voc import DatasetError, check_files, check_ids

__all__ = [
    "SIFTFLOW_EXCLUDED_CLASSES",
    "SIFTFLOW_GEOMETRIC_CLASSES",
    "SIFTFLOW_SEMANTIC_CLASSES",
    "SIFTFLOW_TASKS",
    "SIFTFLOW_UNANNOTATED",
    "SIFTFlowSegmentation",
    "decode_geometric",
    "decode_semantic",
]

SIFTFLOW_SEMANTIC_CLASSES: tuple[str, ...] = tuple(
    reference_lines("sift-flow", "classes-semantic.txt")
)
SIFTFLOW_GEOMETRIC_CLASSES: tuple[str, ...] = tuple(
    reference_lines("sift-flow", "classes-geometric.txt")
)
SIFTFLOW_EXCLUDED_CLASSES = ("cow", "desert", "moon")
SIFTFLOW_UNANNOTATED = ("highway_bost181", "street_urb506")
SIFTFLOW_TASKS = ("sem", "geo", "both")
_FOLDER = "spatial_envelope_256x256_static_8outdoorcategories"
_SHIPPED = {"trainval": ("trainval.txt",), "test": ("test.txt",)}
_LAYOUT = (
    f"the SIFT Flow layout is root/Images/{_FOLDER}/<id>.jpg, root/SemanticLabels/{_FOLDER}/"
    f"<id>.mat and root/GeoLabels/{_FOLDER}/<id>.mat (the release's siftflow folder)"
)


def _decode(labels: np.ndarray, void: tuple[int, ...], n: int, what: str, source: str):
    bad = ~np.isin(labels, void) & ((labels < 1) | (labels > n))
    if bad.any():
        values = np.unique(labels[bad])
        raise ImageError(
            f"SIFT Flow {what} labels {source}: values {', '.join(map(str, values[:10]))} are "
            f"not void ({' or '.join(map(str, void))}) nor a class (1..{n}); is this the "
            f"{what} label file?"
        )
    out = labels - 1  # 1..n -> 0..n-1
    out[np.isin(labels, void)] = 255
    return out.astype(np.uint8)


def decode_semantic(labels: np.ndarray, source: str = "array") -> np.ndarray:
    """Release semantic labels (0 void, 1..33) -> uint8 0..32, 255 = ignore."""
    return _decode(labels, (0,), len(SIFTFLOW_SEMANTIC_CLASSES), "semantic", source)


def decode_geometric(labels: np.ndarray, source: str = "array") -> np.ndarray:
    """Release geometric labels (-1 and 0 void, 1..3) -> uint8 0..2, 255 = ignore."""
    return _decode(labels, (-1, 0), len(SIFTFLOW_GEOMETRIC_CLASSES), "geometric", source)


class SIFTFlowSegmentation(ReleaseSet):
    """One split ("trainval" or "test", or root/<split>.txt) of SIFT Flow; see the module doc."""

    name = "SIFT Flow"
    excluded_classes = SIFTFLOW_EXCLUDED_CLASSES
    excluded_class_indices = tuple(
        SIFTFLOW_SEMANTIC_CLASSES.index(c) for c in SIFTFLOW_EXCLUDED_CLASSES
    )
    unannotated_ids = SIFTFLOW_UNANNOTATED

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "trainval",
        *,
        task: str = "both",
        ids: Sequence[str] | None = None,
        transforms: Callable | None = None,
    ):
        super().__init__(transforms)
        self.task = check_choice("siftflow", "task", task, SIFTFLOW_TASKS)
        heads = {"sem": SIFTFLOW_SEMANTIC_CLASSES, "geo": SIFTFLOW_GEOMETRIC_CLASSES}
        self.head_classes = heads if task == "both" else {task: heads[task]}
        self.class_names = heads["geo" if task == "geo" else "sem"]
        if task == "geo":  # the exclusions are semantic classes: none of the geometric three
            self.excluded_classes, self.excluded_class_indices = (), ()
        self.root, self.split = Path(root), split
        if not self.root.is_dir():
            raise DatasetError(f"SIFT Flow root {self.root} is not a folder: {_LAYOUT}")
        self.folders = {"image": self.root / "Images" / _FOLDER}
        if task in ("sem", "both"):
            self.folders["sem"] = self.root / "SemanticLabels" / _FOLDER
        if task in ("geo", "both"):
            self.folders["geo"] = self.root / "GeoLabels" / _FOLDER
        for folder in self.folders.values():
            if not folder.is_dir():
                raise DatasetError(
                    f"SIFT Flow root {self.root} has no {folder.relative_to(self.root)}/ (needed "
                    f"for task {task}): {_LAYOUT}"
                )
        if ids is None:
            ids, where = split_ids(self.root, "sift-flow", split, _SHIPPED, "SIFT Flow")
        else:
            ids, where = list(ids), f"the {len(ids)} ids given"
        check_ids(ids, where)
        for key, folder in self.folders.items():
            names = {"image": "image", "sem": "semantic label file", "geo": "geometric label file"}
            suffix = ".jpg" if key == "image" else ".mat"
            what = names[key]
            check_files(ids, folder, suffix, what, where)
        self.ids = ids

    def scored(self, index: int) -> bool:
        """False for the two unannotated images, which the paper does not score."""
        return self.ids[index] not in SIFTFLOW_UNANNOTATED

    def load(self, index: int):
        i = self.ids[index]
        image_path = self.folders["image"] / f"{i}.jpg"
        arrays = {image_path: read_image(image_path)}
        targets = {}
        for head, decode in (("sem", decode_semantic), ("geo", decode_geometric)):
            if head in self.folders:
                p = self.folders[head] / f"{i}.mat"
                what = (
                    "SIFT Flow semantic label file"
                    if head == "sem"
                    else "SIFT Flow geometric label file"
                )
                arrays[p] = decode(read_mat_labels(p, "S", what), str(p))
                targets[head] = torch.from_numpy(arrays[p].astype(np.int64))
        check_same_size(arrays)
        image = chw(arrays[image_path])
        return image, (targets if self.task == "both" else targets[self.task])
