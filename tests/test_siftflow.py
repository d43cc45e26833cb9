"""SIFT Flow reader on fixture trees in the release's exact formats (JPEG images, MATLAB v5
.mat label files with variable "S", semantic and geometric)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from fcnseg.data import DatasetError, ImageError, SIFTFlowSegmentation, open_dataset
from fcnseg.data.build import collate_items
from fcnseg.data.siftflow import (
    SIFTFLOW_GEOMETRIC_CLASSES,
    SIFTFLOW_SEMANTIC_CLASSES,
    decode_geometric,
    decode_semantic,
)

F = "spatial_envelope_256x256_static_8outdoorcategories"
H, W = 8, 9


def _labels(n: int):
    sem = ((np.arange(H * W).reshape(H, W) + n) % 34).astype(np.int16)  # 0 void, 1..33
    geo = ((np.arange(H * W).reshape(H, W) + n) % 5 - 1).astype(np.int16)  # -1, 0 void, 1..3
    return sem, geo


def _siftflow(root: Path, ids, split_file: str | None = None) -> Path:
    root = root / "SiftFlow"
    for sub in ("Images", "SemanticLabels", "GeoLabels"):
        (root / sub / F).mkdir(parents=True)
    for n, i in enumerate(ids):
        Image.new("RGB", (W, H), (n * 40, 10, 20)).save(root / "Images" / F / f"{i}.jpg")
        sem, geo = _labels(n)
        scipy.io.savemat(root / "SemanticLabels" / F / f"{i}.mat", {"S": sem})
        scipy.io.savemat(root / "GeoLabels" / F / f"{i}.mat", {"S": geo})
    if split_file:
        (root / split_file).write_text("".join(f"{i}\n" for i in ids))
    return root


def test_every_label_value_decoded_as_the_release():
    sem = np.arange(34).reshape(2, 17)
    want = np.where(sem == 0, 255, sem - 1)
    np.testing.assert_array_equal(decode_semantic(sem), want)
    geo = np.array([[-1, 0, 1, 2, 3]])
    np.testing.assert_array_equal(decode_geometric(geo), [[255, 255, 0, 1, 2]])
    with pytest.raises(ImageError, match=r"semantic labels x\.mat: values 34 are not void"):
        decode_semantic(np.array([[34]]), "x.mat")
    with pytest.raises(ImageError, match=r"geometric labels y\.mat: values -2, 4"):
        decode_geometric(np.array([[-2, 4, 1]]), "y.mat")


def test_tasks_and_targets(tmp_path):
    root = _siftflow(tmp_path, ["coast_a1", "street_b2"], "trainval.txt")
    both = SIFTFlowSegmentation(root, "trainval")  # task both is the default
    assert both.task == "both" and both.class_names == SIFTFLOW_SEMANTIC_CLASSES
    assert both.head_classes == {
        "sem": SIFTFLOW_SEMANTIC_CLASSES,
        "geo": SIFTFLOW_GEOMETRIC_CLASSES,
    }
    assert len(SIFTFLOW_SEMANTIC_CLASSES) == 33 and SIFTFLOW_GEOMETRIC_CLASSES == (
        "sky", "horizontal", "vertical")  # fmt: skip
    image, target = both[1]
    assert image.shape == (3, H, W) and image.dtype == torch.uint8
    sem, geo = _labels(1)
    assert set(target) == {"sem", "geo"}
    assert target["sem"].dtype == torch.int64
    np.testing.assert_array_equal(target["sem"].numpy(), np.where(sem == 0, 255, sem - 1))
    np.testing.assert_array_equal(target["geo"].numpy(), np.where(geo <= 0, 255, geo - 1))
    sem_only = open_dataset(f"siftflow:{root}", "trainval", {"task": "sem"})
    assert torch.equal(sem_only[1][1], target["sem"]) and sem_only.num_classes == 33
    geo_only = open_dataset(f"siftflow:{root}", "trainval", {"task": "geo"})
    assert torch.equal(geo_only[1][1], target["geo"]) and geo_only.num_classes == 3
    assert geo_only.class_names == SIFTFLOW_GEOMETRIC_CLASSES
    # two-task items batch into a dict of targets
    images, targets = collate_items(both, [0, 1])
    assert images.shape == (2, 3, H, W)
    assert set(targets) == {"sem", "geo"} and targets["geo"].shape == (2, H, W)


def test_scoring_exclusions_are_exposed(tmp_path):
    root = _siftflow(tmp_path, ["highway_bost181", "coast_a1", "street_urb506"], "mine.txt")
    ds = SIFTFlowSegmentation(root, "mine", task="sem")
    assert ds.excluded_classes == ("cow", "desert", "moon")
    assert [ds.class_names[i] for i in ds.excluded_class_indices] == ["cow", "desert", "moon"]
    assert ds.excluded_class_indices == (8, 10, 15)
    assert ds.unannotated_ids == ("highway_bost181", "street_urb506")
    assert [ds.scored(i) for i in range(3)] == [False, True, False]
    # the shipped lists: 2,486 + 200 = 2,686 of the 2,688 images, the unannotated two left out
    from fcnseg.data.release import reference_lines

    trainval = reference_lines("sift-flow", "trainval.txt")
    test = reference_lines("sift-flow", "test.txt")
    assert (len(trainval), len(test)) == (2486, 200) and not set(trainval) & set(test)
    assert not set(ds.unannotated_ids) & set(trainval + test)


def test_shipped_split_when_root_has_none(tmp_path):
    root = _siftflow(tmp_path, ["coast_natu975"])  # the first id of the shipped test list
    with pytest.raises(DatasetError, match=r"199 of 200 ids in the shipped SIFT Flow test list"):
        SIFTFlowSegmentation(root, "test")
    ds = SIFTFlowSegmentation(root, "test", ids=["coast_natu975"])
    assert len(ds) == 1


def test_bad_inputs_name_the_file(tmp_path):
    root = _siftflow(tmp_path, ["a", "b"], "trainval.txt")
    with pytest.raises(ValueError, match=r"task='semantic' is not one of sem, geo, both"):
        SIFTFlowSegmentation(root, task="semantic")
    with pytest.raises(ValueError, match=r"unknown option\(s\) modality; valid options: task"):
        open_dataset(f"siftflow:{root}", "trainval", {"modality": "color"})
    with pytest.raises(DatasetError, match=r"no GeoLabels/.* \(needed for task geo\)"):
        (root / "GeoLabels").rename(root / "Geo")
        SIFTFlowSegmentation(root, task="geo")
    assert len(SIFTFlowSegmentation(root, task="sem")) == 2  # geometric files not needed
    (root / "Geo").rename(root / "GeoLabels")
    (root / "SemanticLabels" / F / "b.mat").unlink()
    with pytest.raises(DatasetError, match=r"1 of 2 ids .* no semantic label file .*: b\."):
        SIFTFlowSegmentation(root)
    scipy.io.savemat(root / "SemanticLabels" / F / "b.mat", {"L": np.zeros((H, W))})
    scipy.io.savemat(root / "GeoLabels" / F / "a.mat", {"S": np.full((H, W), 7)})
    ds = SIFTFlowSegmentation(root)
    with pytest.raises(ImageError, match=r"a\.mat: values 7 are not void \(-1 or 0\)"):
        ds[0]
    with pytest.raises(ImageError, match=r"b\.mat has no variable 'S' \(it holds: L\)"):
        ds[1]
    with pytest.raises(ImageError, match="differ in size"):
        scipy.io.savemat(root / "SemanticLabels" / F / "b.mat", {"S": np.zeros((H, W + 1))})
        ds[1]
    (root / "GeoLabels" / F / "a.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(ImageError, match=r"a\.mat is not a readable \.mat file"):
        ds[0]


def test_matlab_v73_file_gets_a_resave_hint(tmp_path):
    # a v7.3 .mat is HDF5 behind MATLAB's 128-byte header (version 0x0200): scipy cannot read it
    from fcnseg.data.release import read_mat_labels

    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116, b" ")
    (tmp_path / "v73.mat").write_bytes(header + b"\0" * 8 + b"\x00\x02IM" + b"\0" * 512)
    with pytest.raises(ImageError, match=r"v7\.3 \(HDF5\) .* save\('v73\.mat', 'S', '-v7'\)"):
        read_mat_labels(tmp_path / "v73.mat", "S", "SIFT Flow semantic label file")
    (tmp_path / "empty.mat").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.mat is empty \(0 bytes\)"):
        read_mat_labels(tmp_path / "empty.mat", "S", "SIFT Flow semantic label file")
    scipy.io.savemat(tmp_path / "f.mat", {"S": np.array([[1.5, 2.0]])})
    with pytest.raises(ImageError, match="non-integer values"):
        read_mat_labels(tmp_path / "f.mat", "S", "SIFT Flow semantic label file")
    scipy.io.savemat(tmp_path / "d.mat", {"S": np.array([[1.0, 2.0]])})  # MATLAB's double
    assert read_mat_labels(tmp_path / "d.mat", "S", "x").tolist() == [[1, 2]]
