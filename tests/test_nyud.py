"""NYUDv2 reader on fixture trees in the release's exact formats (PNG colour and HHA, 16-bit PNG
depth, MATLAB v5 .mat labels written by scipy.io.savemat)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from fcnseg.data import DatasetError, ImageError, NYUDSegmentation, open_dataset
from fcnseg.data.build import collate_items
from fcnseg.data.nyud import NYUD_CLASSES, log_depth

H, W = 6, 8


def _item(n: int):
    """Distinct colour, HHA, depth (mm) and labels (0..40, every value somewhere) for id n."""
    rng = np.random.default_rng(n)
    color = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    hha = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    depth = rng.integers(400, 10000, (H, W)).astype(np.uint16)
    depth[0, 0] = 0  # a missing reading
    seg = (np.arange(H * W).reshape(H, W) + n) % 41  # 0 (void) .. 40
    return color, hha, depth, seg.astype(np.uint16)


def _nyud(root: Path, ids, split_file: str | None = None) -> Path:
    root = root / "nyud"
    for sub in ("data/images", "data/hha", "data/depth", "segmentation"):
        (root / sub).mkdir(parents=True)
    for i in ids:
        color, hha, depth, seg = _item(int(i))
        Image.fromarray(color).save(root / "data" / "images" / f"img_{i}.png")
        Image.fromarray(hha).save(root / "data" / "hha" / f"img_{i}.png")
        Image.fromarray(depth).save(root / "data" / "depth" / f"img_{i}.png")  # I;16
        scipy.io.savemat(root / "segmentation" / f"img_{i}.mat", {"segmentation": seg})
    if split_file:
        (root / split_file).write_text("".join(f"{i}\n" for i in ids))
    return root


def test_labels_decoded_as_the_release(tmp_path):
    root = _nyud(tmp_path, ["5001", "5002"], "train.txt")
    ds = NYUDSegmentation(root, "train")
    assert len(ds) == 2 and ds.num_classes == 40 and ds.class_names == NYUD_CLASSES
    assert ds.class_names[0] == "wall" and ds.class_names[39] == "otherprop"
    for k, i in enumerate(ds.ids):
        _, _, _, seg = _item(int(i))
        _, target = ds[k]
        assert target.dtype == torch.int64 and target.shape == (H, W)
        t = target.numpy()
        assert (t[seg == 0] == 255).all()  # void -> ignore
        np.testing.assert_array_equal(t[seg > 0], seg[seg > 0].astype(int) - 1)  # 1..40 -> 0..39
        assert set(np.unique(t)) <= set(range(40)) | {255}


def test_every_modality(tmp_path):
    root = _nyud(tmp_path, ["7"], "test.txt")
    color, hha, depth, _ = _item(7)
    items = {m: open_dataset(f"nyud:{root}", "test", {"modality": m})[0][0] for m in
             ("color", "hha", "depth", "color-depth", "color-hha")}  # fmt: skip
    assert items["color"].dtype == torch.uint8
    np.testing.assert_array_equal(items["color"].permute(1, 2, 0).numpy(), color)
    np.testing.assert_array_equal(items["hha"].permute(1, 2, 0).numpy(), hha)
    assert items["depth"].dtype == torch.float32 and items["depth"].shape == (1, H, W)
    np.testing.assert_array_equal(items["depth"][0].numpy(), depth)  # the stored values
    cd = items["color-depth"]
    assert cd.shape == (4, H, W) and cd.dtype == torch.float32
    np.testing.assert_array_equal(cd[:3].permute(1, 2, 0).numpy(), color)
    np.testing.assert_array_equal(cd[3].numpy(), depth)
    two = items["color-hha"]
    assert set(two) == {"color", "hha"}
    assert torch.equal(two["color"], items["color"]) and torch.equal(two["hha"], items["hha"])
    # the release's depth input: log(d) - 7.844, a missing reading taken as d = 1
    ld = log_depth(items["depth"])
    assert torch.isfinite(ld).all()
    np.testing.assert_allclose(ld[0, 1:, 1:].numpy(), np.log(depth[1:, 1:]) - 7.844, rtol=1e-5)


def test_multimodal_items_batch(tmp_path):
    root = _nyud(tmp_path, ["1", "2", "3"], "train.txt")
    ds = open_dataset(f"nyud:{root}", "train", {"modality": "color-hha"})
    images, targets = collate_items(ds, [0, 1, 2])
    assert set(images) == {"color", "hha"} and images["color"].shape == (3, 3, H, W)
    assert targets.shape == (3, H, W) and targets.dtype == torch.int64
    ds4 = open_dataset(f"nyud:{root}", "train", {"modality": "color-depth"})
    images, _ = collate_items(ds4, [0, 2])
    assert images.shape == (2, 4, H, W)


def test_shipped_split_lists_are_used_without_a_split_file(tmp_path):
    root = _nyud(tmp_path, ["5449"])  # the first id of the shipped train list
    with pytest.raises(DatasetError, match=r"380 of 381 ids in the shipped NYUDv2 train list"):
        NYUDSegmentation(root, "train")
    from fcnseg.data.release import reference_lines

    counts = {s: len(reference_lines("nyud", f"{s}.txt")) for s in ("train", "val", "test")}
    assert counts == {"train": 381, "val": 414, "test": 654}  # FCN.md section 9
    with pytest.raises(DatasetError, match=r"794 of 795 ids in the shipped NYUDv2 trainval"):
        NYUDSegmentation(root, "trainval")
    with pytest.raises(DatasetError, match="fcnseg ships only train, val, test, trainval"):
        NYUDSegmentation(root, "seg11")


def test_bad_inputs_name_the_file(tmp_path):
    root = _nyud(tmp_path, ["1", "2", "3"], "train.txt")
    with pytest.raises(DatasetError, match=r"has no data/hha/ \(needed for modality hha\)"):
        (root / "data" / "hha").rename(root / "hha_elsewhere")
        NYUDSegmentation(root, "train", modality="hha")
    (root / "hha_elsewhere").rename(root / "data" / "hha")
    with pytest.raises(DatasetError, match="Did you mean root="):
        NYUDSegmentation(tmp_path, "train")
    (root / "data" / "depth" / "img_2.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of 3 ids .* depth file .*depth/img_<id>\.png: 2\."):
        NYUDSegmentation(root, "train", modality="color-depth")
    assert len(NYUDSegmentation(root, "train", modality="color")) == 3  # depth not needed
    (root / "dup.txt").write_text("1\n1\n")
    with pytest.raises(DatasetError, match="more than once: 1"):
        NYUDSegmentation(root, "dup")
    with pytest.raises(ValueError, match="modality='rgbd' is not one of color, hha, depth"):
        NYUDSegmentation(root, "train", modality="rgbd")
    with pytest.raises(
        ValueError,
        match=r"unknown option\(s\) modalty \(did you mean modality\?\); valid options: modality",
    ):
        open_dataset(f"nyud:{root}", "train", {"modalty": "hha"})
    # a label out of range, a .mat without the variable, a size mismatch, 8-bit depth
    scipy.io.savemat(root / "segmentation" / "img_1.mat", {"segmentation": np.full((H, W), 41)})
    scipy.io.savemat(root / "segmentation" / "img_3.mat", {"labels": np.zeros((H, W))})
    ds = NYUDSegmentation(root, "train")
    with pytest.raises(ImageError, match=r"img_1\.mat: values 41 are outside 0 \(void\) \.\. 40"):
        ds[0]
    with pytest.raises(
        ImageError, match=r"img_3\.mat has no variable 'segmentation' \(it holds: labels\)"
    ):
        ds[2]
    with pytest.raises(DatasetError, match="2 of 3 NYUDv2 items cannot be read"):
        ds.verify()
    Image.new("RGB", (W + 1, H)).save(root / "data" / "images" / "img_2.png")
    with pytest.raises(ImageError, match=r"differ in size: .*img_2\.png is 9 x 6"):
        ds[1]
    Image.new("L", (W, H)).save(root / "data" / "depth" / "img_2.png")
    with pytest.raises(ImageError, match="16-bit single-channel"):
        NYUDSegmentation(root, "train", modality="depth")[1]
