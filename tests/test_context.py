"""PASCAL-Context reader on fixture trees in the exact formats (VOC2010 JPEGImages and
ImageSets/Main, trainval/<id>.mat with "LabelMap" 1..459 written by scipy.io.savemat, labels.txt
of "n: name" lines): the 459 -> 59 mapping by name, its three name differences, background."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from fcnseg.data import ContextSegmentation, DatasetError, ImageError, open_dataset
from fcnseg.data.context import CONTEXT_CLASSES, CONTEXT_RENAMED, read_context_labels
from fcnseg.data.release import reference_path

H, W = 23, 20  # 460 pixels: every label 0..459 once


def _full_labels() -> dict[int, str]:
    return read_context_labels(None)


def _context(root: Path, ids, annotations: Path | None = None, labels_txt=True) -> Path:
    root = root / "VOC2010"
    ann = annotations or root
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (ann / "trainval").mkdir(parents=True, exist_ok=True)
    for n, i in enumerate(ids):
        Image.new("RGB", (W, H), (n, 2 * n, 3)).save(root / "JPEGImages" / f"{i}.jpg")
        label_map = ((np.arange(H * W) + n) % 460).reshape(H, W).astype(np.uint16)  # 0..459
        scipy.io.savemat(ann / "trainval" / f"{i}.mat", {"LabelMap": label_map})
    # VOC2010's Main split files: "<id>" lines (class files add a flag; the first word is read)
    (root / "ImageSets" / "Main" / "val.txt").write_text("".join(f"{i}\n" for i in ids))
    if labels_txt:
        (ann / "labels.txt").write_text(reference_path("pascal-context", "classes-400.txt")
                                        .read_text())  # fmt: skip
    return root


def test_every_label_mapped_by_name_with_the_three_differences(tmp_path):
    root = _context(tmp_path, ["2008_000002"])
    ds = ContextSegmentation(root, "val")
    assert ds.num_classes == 60 and ds.class_names[0] == "background"
    assert len(ds) == 1
    image, target = ds[0]
    assert image.shape == (3, H, W) and image.dtype == torch.uint8
    assert target.dtype == torch.int64 and target.shape == (H, W)
    label_map = np.arange(H * W).reshape(H, W)  # id 0 has label v at pixel v
    t = target.numpy()
    full = _full_labels()
    assert len(full) == 459
    index59 = {name: k for k, name in enumerate(CONTEXT_CLASSES)}
    mapped = 0
    for v, name in full.items():
        got = t[label_map == v]
        key = {b: a for a, b in CONTEXT_RENAMED.items()}.get(name, name.replace(" ", ""))
        want = index59.get(key, 0)
        assert (got == want).all(), (v, name, got, want)
        mapped += want > 0
    assert mapped == 59  # every one of the 59 classes found once
    assert t[label_map == 0].item() == 0  # label 0 (unlabelled) -> background
    assert 255 not in t  # background is scored: no ignore label
    # the three names that differ: full list's table, bedclothes, cloth
    by_name = {name: v for v, name in full.items()}
    assert t[label_map == by_name["table"]].item() == CONTEXT_CLASSES.index("diningtable")
    assert t[label_map == by_name["bedclothes"]].item() == CONTEXT_CLASSES.index("bedcloth")
    assert t[label_map == by_name["cloth"]].item() == CONTEXT_CLASSES.index("clothes")
    for near in ("clothes tree", "pool table", "tableware"):  # similar names stay background
        assert t[label_map == by_name[near]].item() == 0
    assert t[label_map == by_name["aeroplane"]].item() == 1


def test_annotations_elsewhere_and_shipped_labels(tmp_path):
    ann = tmp_path / "trainval_ann"
    root = _context(tmp_path, ["2008_000003", "2008_000004"], annotations=ann, labels_txt=False)
    with pytest.raises(DatasetError, match=r"no folder .*VOC2010/trainval/"):
        ContextSegmentation(root, "val")
    ds = open_dataset(f"context:{root}", "val", {"annotations": str(ann)})
    assert len(ds) == 2 and ds.labels_file is None  # no labels.txt: the shipped copy
    assert ds[1][1].shape == (H, W)
    with pytest.raises(
        ValueError, match=r"unknown option\(s\) annotation \(did you mean annotations\?\); valid"
    ):
        open_dataset(f"context:{root}", "val", {"annotation": str(ann)})


def test_bad_inputs_name_the_file(tmp_path):
    root = _context(tmp_path, ["a", "b"])
    with pytest.raises(DatasetError, match=r"no split file .*Main/train\.txt; splits found: val"):
        ContextSegmentation(root, "train")
    with pytest.raises(DatasetError, match="Did you mean root="):
        ContextSegmentation(tmp_path, "val")
    (root / "ImageSets" / "Main" / "dup.txt").write_text("a\na\n")
    with pytest.raises(DatasetError, match="more than once: a"):
        ContextSegmentation(root, "dup")
    (root / "trainval" / "b.mat").unlink()
    with pytest.raises(DatasetError, match=r"1 of 2 ids .* no label file .*trainval/<id>\.mat: b"):
        ContextSegmentation(root, "val")
    scipy.io.savemat(root / "trainval" / "b.mat", {"LabelMap": np.full((H, W), 460)})
    ds = ContextSegmentation(root, "val")
    with pytest.raises(ImageError, match=r"b\.mat: values 460 are not labels of .*labels\.txt"):
        ds[1]
    scipy.io.savemat(root / "trainval" / "b.mat", {"labelmap": np.zeros((H, W))})
    with pytest.raises(ImageError, match=r"no variable 'LabelMap' \(it holds: labelmap\)"):
        ds[1]
    scipy.io.savemat(root / "trainval" / "b.mat", {"LabelMap": np.zeros((H + 1, W))})
    with pytest.raises(ImageError, match="differ in size"):
        ds[1]
    text = (root / "labels.txt").read_text().replace("397: table\n", "397: desk\n")
    (root / "labels.txt").write_text(text)
    with pytest.raises(DatasetError, match=r"labels\.txt lack 1 of the 59 classes' names: table"):
        ContextSegmentation(root, "val")
    (root / "labels.txt").write_text("1: aeroplane\nbicycle\n")
    with pytest.raises(DatasetError, match=r"line 2: 'bicycle' is not 'n: name'"):
        ContextSegmentation(root, "val")
