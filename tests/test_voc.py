"""VOCSegmentation on real VOC2011 photos (Debian's labelme-examples) and on masks we write."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.categories import VOC_CLASSES, voc_palette
from fcnseg.data import (
    DatasetError,
    ImageError,
    RandomCrop,
    VOCSegmentation,
    read_split,
    seg11valid_ids,
    write_mask,
    write_split,
)

EXAMPLES = Path("/usr/share/doc/labelme-examples/examples/semantic_segmentation/data_dataset_voc")
REAL_IDS = ("2011_000003", "2011_000006", "2011_000025")


@pytest.fixture
def real_voc(tmp_path) -> Path:
    """A VOC-layout tree holding the three real photos and their palette masks."""
    if not (EXAMPLES / "JPEGImages").is_dir():
        pytest.fail(
            f"{EXAMPLES} is missing: apt-get install labelme-examples (3 real VOC2011 photos "
            f"with their segmentation masks)"
        )
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    for i in REAL_IDS:
        shutil.copy(EXAMPLES / "JPEGImages" / f"{i}.jpg", root / "JPEGImages")
        shutil.copy(EXAMPLES / "SegmentationClassPNG" / f"{i}.png", root / "SegmentationClass")
    write_split(root / "ImageSets" / "Segmentation" / "train.txt", REAL_IDS)
    return root


def test_real_photos_read_with_their_classes(real_voc):
    ds = VOCSegmentation(real_voc, "train")
    assert len(ds) == 3 and ds.class_names == VOC_CLASSES and ds.num_classes == 21
    palette = voc_palette(256)
    for k, i in enumerate(REAL_IDS):
        image, target = ds[k]
        assert image.dtype == torch.uint8 and target.dtype == torch.int64
        assert image.shape[0] == 3 and image.shape[1:] == target.shape
        # independently: the P-mode PNG's indices, and its palette is VOC's
        png = Image.open(real_voc / "SegmentationClass" / f"{i}.png")
        assert png.mode == "P"
        expected = np.array(png)
        np.testing.assert_array_equal(target.numpy(), expected)
        pal = np.array(png.getpalette()[: 3 * 256], np.uint8).reshape(-1, 3)
        used = np.unique(expected)
        np.testing.assert_array_equal(pal[used], palette[used])  # colour c <-> class c
        jpeg = Image.open(real_voc / "JPEGImages" / f"{i}.jpg")
        assert target.shape == (jpeg.height, jpeg.width)
        found = set(np.unique(target.numpy()).tolist())
        assert found and found <= set(range(21)) | {255}
        assert found - {0, 255}, f"{i}: no object class"
        ignored = int((target == 255).sum())
        names = [VOC_CLASSES[c] for c in sorted(found - {255})]
        print(f"{i}: {jpeg.width} x {jpeg.height}, classes {names}, {ignored} ignore pixels")


def test_real_photos_labels_match_labelme_npy(real_voc):
    # labelme also saved the labels as int32 .npy with -1 for "ignore"
    ds = VOCSegmentation(real_voc, "train")
    for k, i in enumerate(REAL_IDS):
        npy = np.load(EXAMPLES / "SegmentationClass" / f"{i}.npy")
        np.testing.assert_array_equal(ds[k][1].numpy(), np.where(npy == -1, 255, npy))


def test_transforms_are_applied(real_voc):
    ds = VOCSegmentation(real_voc, "train", transforms=RandomCrop(64))
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and target.shape == (64, 64)


def test_ids_replace_the_split_file(real_voc):
    ds = VOCSegmentation(real_voc, "whatever", ids=["2011_000025"])
    assert ds.ids == ["2011_000025"] and len(ds) == 1


# --------------------------------------------------------------------------- synthetic trees


def _tree(root: Path, ids, size=(6, 8), split="train") -> Path:
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(exist_ok=True)
    for n, i in enumerate(ids):
        Image.new("RGB", size[::-1], (n, 0, 0)).save(root / "JPEGImages" / f"{i}.jpg")
        m = np.full(size, n % 21, np.uint8)
        m[0] = m[-1] = 255
        write_mask(root / "SegmentationClass" / f"{i}.png", m)
    write_split(root / "ImageSets" / "Segmentation" / f"{split}.txt", ids)
    return root


def test_ignore_border_and_all_ignore_mask(tmp_path):
    root = _tree(tmp_path, ["a", "b"])
    write_mask(root / "SegmentationClass" / "b.png", np.full((6, 8), 255, np.uint8))
    ds = VOCSegmentation(root, "train")
    t = ds[0][1]
    assert (t[0] == 255).all() and (t[1:-1] == 0).all()
    assert (ds[1][1] == 255).all()


def test_missing_root_explains_layout(tmp_path):
    with pytest.raises(DatasetError, match="JPEGImages") as e:
        VOCSegmentation(tmp_path / "nowhere")
    assert "nowhere" in str(e.value)


def test_root_one_level_too_high_gets_a_hint(tmp_path):
    _tree(tmp_path / "VOCdevkit" / "VOC2012", ["a"])
    with pytest.raises(DatasetError, match="Did you mean"):
        VOCSegmentation(tmp_path)


def test_missing_split_lists_the_splits_found(tmp_path):
    root = _tree(tmp_path, ["a"], split="train")
    write_split(root / "ImageSets" / "Segmentation" / "val.txt", ["a"])
    with pytest.raises(DatasetError, match=r"test\.txt; splits found: train, val"):
        VOCSegmentation(root, "test")


def test_empty_split(tmp_path):
    root = _tree(tmp_path, ["a"])
    (root / "ImageSets" / "Segmentation" / "empty.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match=r"empty\.txt lists no ids"):
        VOCSegmentation(root, "empty")


def test_duplicate_ids_are_named(tmp_path):
    root = _tree(tmp_path, ["a", "b"])
    write_split(root / "ImageSets" / "Segmentation" / "dup.txt", ["a", "b", "a", "b", "a"])
    with pytest.raises(DatasetError, match=r"2 id\(s\) more than once: a, b"):
        VOCSegmentation(root, "dup")


def test_ids_without_files_are_listed_with_count(tmp_path):
    root = _tree(tmp_path, ["a"])
    ghosts = [f"ghost{n}" for n in range(7)]
    write_split(root / "ImageSets" / "Segmentation" / "ghosts.txt", ["a", *ghosts])
    with pytest.raises(DatasetError) as e:
        VOCSegmentation(root, "ghosts")
    msg = str(e.value)
    assert "7 of 8 ids" in msg and "ghost0, ghost1" in msg and "(7 in all)" in msg
    assert "JPEGImages" in msg


def test_missing_mask_is_reported(tmp_path):
    root = _tree(tmp_path, ["a", "b"])
    (root / "SegmentationClass" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"no mask .*SegmentationClass/<id>\.png: b"):
        VOCSegmentation(root, "train")


def test_size_mismatch_names_both_files(tmp_path):
    root = _tree(tmp_path, ["a"])
    write_mask(root / "SegmentationClass" / "a.png", np.zeros((5, 8), np.uint8))
    ds = VOCSegmentation(root, "train")
    with pytest.raises(ImageError) as e:
        ds[0]
    msg = str(e.value)
    assert "a.jpg is 8 x 6" in msg and "a.png is 8 x 5" in msg
    with pytest.raises(DatasetError, match="1 of 1 items"):
        ds.verify()


def test_out_of_range_values_fail_at_item_time(tmp_path):
    root = _tree(tmp_path, ["a"])
    m = np.zeros((6, 8), np.uint8)
    m[2, 2] = 40
    write_mask(root / "SegmentationClass" / "a.png", m)
    with pytest.raises(ImageError, match=r"a\.png: values 40 \(1 px\)"):
        VOCSegmentation(root, "train")[0]


def test_split_files_and_seg11valid(tmp_path):
    p = tmp_path / "s" / "val.txt"
    write_split(p, ["b", "a", "c"])
    assert p.read_text() == "b\na\nc\n" and not list(p.parent.glob("*.part"))
    assert read_split(p) == ["b", "a", "c"]
    (tmp_path / "cols.txt").write_text("x  1\ny -1\n\n")
    assert read_split(tmp_path / "cols.txt") == ["x", "y"]  # VOC's ImageSets/Main style
    with pytest.raises(DatasetError, match="does not exist"):
        read_split(tmp_path / "none.txt")
    with pytest.raises(DatasetError, match="single words"):
        write_split(p, ["a b"])
    assert read_split(p) == ["b", "a", "c"]  # a failed write leaves the old file
    val = ["2011_000003", "2011_000006", "2011_000025", "2011_000030"]
    assert seg11valid_ids(val, {"2011_000006", "2008_000001"}) == [
        "2011_000003",
        "2011_000025",
        "2011_000030",
    ]


def test_fewer_classes(tmp_path):
    root = _tree(tmp_path, ["a", "b", "c"])
    ds = VOCSegmentation(root, "train", num_classes=2)
    assert ds.class_names == ("background", "aeroplane")
    ds[1]
    with pytest.raises(ImageError, match="values 2"):
        ds[2]


def test_exif_rotated_photo_with_unrotated_mask_gets_a_hint(tmp_path):
    root = _tree(tmp_path, ["a"])
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated: 8 x 6 stored -> 6 x 8 shown
    Image.new("RGB", (8, 6)).save(root / "JPEGImages" / "a.jpg", exif=exif)
    with pytest.raises(ImageError, match="EXIF rotation"):
        VOCSegmentation(root, "train")[0]
