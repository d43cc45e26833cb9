"""SBDSegmentation (.mat labels in SBD's own struct layout) and FolderSegmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
import torch
from PIL import Image

from fcnseg.data import (
    DatasetError,
    FolderSegmentation,
    ImageError,
    SBDSegmentation,
    read_sbd_mat,
    write_mask,
    write_split,
)

# --------------------------------------------------------------------------- SBD


def _save_gtcls(path: Path, seg: np.ndarray) -> None:
    """A .mat laid out like SBD's dataset/cls/*.mat: GTcls with Boundaries (a 20x1 cell of
    sparse edge maps), Segmentation (uint8 H x W) and CategoriesPresent."""
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = scipy.sparse.csc_matrix(seg == k + 1, dtype=bool)
    present = np.unique(seg[(seg > 0) & (seg < 255)]).astype(np.uint8)
    gtcls = {"Boundaries": boundaries, "Segmentation": seg, "CategoriesPresent": present}
    scipy.io.savemat(path, {"GTcls": gtcls})


def _sbd(root: Path, ids, size=(5, 7), split="train") -> Path:
    base = root / "benchmark_RELEASE" / "dataset"
    (base / "img").mkdir(parents=True)
    (base / "cls").mkdir()
    for n, i in enumerate(ids):
        Image.new("RGB", size[::-1], (10 * n, 0, 0)).save(base / "img" / f"{i}.jpg")
        seg = np.zeros(size, np.uint8)
        seg[1:3, 2:5] = n % 20 + 1
        _save_gtcls(base / "cls" / f"{i}.mat", seg)
    write_split(base / f"{split}.txt", ids)
    return root / "benchmark_RELEASE"


def test_mat_reader_reads_sbd_struct_exactly(tmp_path):
    seg = np.random.default_rng(0).integers(0, 21, (9, 11)).astype(np.uint8)
    _save_gtcls(tmp_path / "x.mat", seg)
    # the access path of the real files, spelled out
    raw = scipy.io.loadmat(tmp_path / "x.mat", squeeze_me=True, struct_as_record=False)
    np.testing.assert_array_equal(raw["GTcls"].Segmentation, seg)
    got = read_sbd_mat(tmp_path / "x.mat")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, seg)


def test_sbd_items(tmp_path):
    root = _sbd(tmp_path, ["2008_000002", "2008_000003"])
    ds = SBDSegmentation(root, "train")
    assert len(ds) == 2 and ds.num_classes == 21
    image, target = ds[1]
    assert image.shape == (3, 5, 7) and image.dtype == torch.uint8
    assert target.dtype == torch.int64 and target.shape == (5, 7)
    assert set(target.unique().tolist()) == {0, 2}
    assert len(SBDSegmentation(root / "dataset", "train")) == 2  # root may be dataset/ itself


def test_sbd_layout_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere.*dataset/img"):
        SBDSegmentation(tmp_path / "nowhere")
    _sbd(tmp_path, ["a"])
    with pytest.raises(DatasetError, match="Did you mean"):
        SBDSegmentation(tmp_path)
    with pytest.raises(DatasetError, match=r"val\.txt; splits found: train"):
        SBDSegmentation(tmp_path / "benchmark_RELEASE", "val")


def test_sbd_split_errors(tmp_path):
    root = _sbd(tmp_path, ["a", "b"])
    base = root / "dataset"
    (base / "empty.txt").write_text("")
    with pytest.raises(DatasetError, match="lists no ids"):
        SBDSegmentation(root, "empty")
    write_split(base / "dup.txt", ["a", "b", "b"])
    with pytest.raises(DatasetError, match=r"more than once: b"):
        SBDSegmentation(root, "dup")
    (base / "cls" / "b.mat").unlink()
    with pytest.raises(DatasetError, match=r"1 of 2 ids .* no label file .*cls/<id>\.mat: b"):
        SBDSegmentation(root, "train")


def test_sbd_bad_mat_files(tmp_path):
    root = _sbd(tmp_path, ["a"])
    cls = root / "dataset" / "cls"
    ds = SBDSegmentation(root, "train")
    (cls / "a.mat").write_text("not a mat file at all")
    with pytest.raises(ImageError, match=r"a\.mat is not a readable \.mat"):
        ds[0]
    scipy.io.savemat(cls / "a.mat", {"GTinst": {"Segmentation": np.zeros((5, 7), np.uint8)}})
    with pytest.raises(ImageError, match=r"a\.mat has no GTcls .*holds: GTinst"):
        ds[0]
    (cls / "a.mat").write_bytes(b"")
    with pytest.raises(ImageError, match=r"a\.mat is empty"):
        ds[0]
    _save_gtcls(cls / "a.mat", np.zeros((6, 7), np.uint8))
    with pytest.raises(ImageError, match=r"a\.jpg is 7 x 5 but its mask .*a\.mat is 7 x 6"):
        ds[0]
    seg = np.zeros((5, 7), np.uint8)
    seg[0, :2] = 21
    _save_gtcls(cls / "a.mat", seg)
    with pytest.raises(ImageError, match=r"a\.mat: values 21 \(2 px\)"):
        ds[0]


# --------------------------------------------------------------------------- folder

CLASSES = "background\nroad\ncar\n"


def _folder(root: Path, stems=("p1", "p2", "p3"), size=(6, 9)) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text(CLASSES)
    for n, s in enumerate(stems):
        suffix = ".png" if n % 2 else ".jpg"
        Image.new("RGB", size[::-1], (n, n, n)).save(root / "images" / f"{s}{suffix}")
        m = np.full(size, n % 3, np.uint8)
        m[:, 0] = 255
        if n % 2:
            write_mask(root / "masks" / f"{s}.png", m)  # palette PNG
        else:
            Image.fromarray(m).save(root / "masks" / f"{s}.png")  # single-channel PNG
    return root


def test_folder_items(tmp_path):
    root = _folder(tmp_path)
    ds = FolderSegmentation(root)
    assert ds.class_names == ("background", "road", "car") and ds.num_classes == 3
    assert ds.ids == ["p1", "p2", "p3"]
    for n in range(3):
        image, target = ds[n]
        assert image.shape == (3, 6, 9) and target.shape == (6, 9)
        assert (target[:, 0] == 255).all() and (target[:, 1:] == n % 3).all()
    ds.verify()


def test_folder_split(tmp_path):
    root = _folder(tmp_path)
    write_split(root / "splits" / "val.txt", ["p3", "p1"])
    assert FolderSegmentation(root, "val").ids == ["p3", "p1"]
    with pytest.raises(DatasetError, match=r"train\.txt; splits found: val"):
        FolderSegmentation(root, "train")
    write_split(root / "splits" / "bad.txt", ["p1", "p9"])
    with pytest.raises(DatasetError, match=r"1 of 2 ids .*bad\.txt have no image .*: p9"):
        FolderSegmentation(root, "bad")


def test_folder_missing_classes_txt(tmp_path):
    root = _folder(tmp_path)
    (root / "classes.txt").unlink()
    with pytest.raises(DatasetError, match=r"classes\.txt is missing: write one class name"):
        FolderSegmentation(root)
    (root / "classes.txt").write_text("background\n\nroad\n")
    with pytest.raises(DatasetError, match=r"lines \[2\] are blank"):
        FolderSegmentation(root)
    (root / "classes.txt").write_text("a\nb\na\n")
    with pytest.raises(DatasetError, match="more than once: a"):
        FolderSegmentation(root)


def test_folder_images_without_masks_are_listed(tmp_path):
    root = _folder(tmp_path, stems=[f"img{n}" for n in range(8)])
    for n in (1, 2, 3, 4, 5, 6):
        (root / "masks" / f"img{n}.png").unlink()
    with pytest.raises(DatasetError) as e:
        FolderSegmentation(root)
    msg = str(e.value)
    assert "6 of 8 images have no mask" in msg and "img1.png, img2.jpg" in msg
    assert "(6 in all)" in msg


def test_folder_masks_without_images(tmp_path):
    root = _folder(tmp_path)
    write_mask(root / "masks" / "stray.png", np.zeros((6, 9), np.uint8))
    with pytest.raises(DatasetError, match=r"1 mask\(s\) .* have no image .*: stray\.png"):
        FolderSegmentation(root)


def test_folder_mask_values_beyond_classes(tmp_path):
    root = _folder(tmp_path)
    m = np.zeros((6, 9), np.uint8)
    m[0, 0], m[1, 1:3] = 3, 7
    write_mask(root / "masks" / "p2.png", m)
    ds = FolderSegmentation(root)
    with pytest.raises(ImageError) as e:
        ds[1]
    msg = str(e.value)
    assert "p2.png" in msg and "3 (1 px), 7 (2 px)" in msg and "classes.txt" in msg
    with pytest.raises(DatasetError, match=r"1 of 3 items cannot be read:\n.*p2\.png"):
        ds.verify()


def test_folder_stray_files_and_clashing_stems(tmp_path):
    root = _folder(tmp_path)
    (root / ".DS_Store").write_text("ignored: hidden")
    (root / "images" / ".hidden").write_text("ignored")
    FolderSegmentation(root)
    (root / "images" / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match=r"not images .*notes\.txt"):
        FolderSegmentation(root)
    (root / "images" / "notes.txt").unlink()
    Image.new("RGB", (9, 6)).save(root / "images" / "p1.png")  # p1.jpg exists too
    with pytest.raises(DatasetError, match=r"p1\.jpg / p1\.png"):
        FolderSegmentation(root)


def test_folder_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=r"nope does not exist: expected root/classes\.txt"):
        FolderSegmentation(tmp_path / "nope")
