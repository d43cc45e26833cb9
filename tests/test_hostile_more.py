"""Hostile inputs, third round (issue 22): ids kept as written, hostile .caffemodel files,
sizes from files and arguments bounded before allocating, errors from DataLoader workers and
torchrun told once, options inherited per key. docs/errors.md lists each case beside its test.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from caffemodel_writer import _field, _varint, encode_by_hand, write_caffemodel
from PIL import Image

import fcnseg
from fcnseg.cli import main
from fcnseg.data import DatasetError, open_dataset

# --------------------------------------------------------------- 3. ids are strings, as written

IDS = ["2008_000008", "05005", "007"]


def _voc(root: Path, ids) -> Path:
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for n, i in enumerate(ids):
        Image.new("RGB", (6, 5), (n, 9, 9)).save(root / "JPEGImages" / f"{i}.jpg")
        Image.fromarray(np.full((5, 6), n % 3, np.uint8)).save(
            root / "SegmentationClass" / f"{i}.png"
        )
    (root / "ImageSets/Segmentation/val.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def test_data_option_ids_keep_underscores_and_leading_zeros():
    from fcnseg.cli.common import key_values

    got = key_values(["ids=2008_000008", "n_train=3000", "scale=2,3", "tag=05005"])
    assert got == {"ids": "2008_000008", "n_train": 3000, "scale": (2, 3), "tag": "05005"}
    assert key_values(["ids=05005,2008_000008,7"])["ids"] == ("05005", "2008_000008", "7")


def test_voc_ids_from_the_command_line_and_the_split_file(tmp_path):
    root = _voc(tmp_path / "voc", IDS)
    ds = open_dataset(f"voc:{root}", "val")
    assert ds.ids == IDS
    from fcnseg.cli.common import key_values

    for text, want in (("ids=2008_000008", ["2008_000008"]), ("ids=05005,007", ["05005", "007"])):
        one = open_dataset(f"voc:{root}", "val", key_values([text]))
        assert one.ids == want and one.images[0].name == f"{want[0]}.jpg"


@pytest.mark.parametrize("kind", ["voc", "context", "nyud", "siftflow"])
def test_number_ids_are_refused_not_rewritten(tmp_path, kind):
    """An int id (5005, from 05005) would name another file: refused, with the fix."""
    root = _voc(tmp_path / "voc", IDS) if kind == "voc" else tmp_path
    with pytest.raises(DatasetError, match=r"ids must be text.*5005.*leading zeros"):
        open_dataset(f"{kind}:{root}", "val", {"ids": [5005]})


def test_context_ids_as_written(tmp_path):
    from test_context import _context

    root = _context(tmp_path, ["2008_000008", "05005"])
    ds = open_dataset(f"context:{root}", "val", {"ids": "2008_000008"})
    assert ds.ids == ["2008_000008"]
    assert open_dataset(f"context:{root}", "val").ids == ["2008_000008", "05005"]


def test_bom_in_split_and_labels_files(tmp_path):
    """A UTF-8 BOM (Notepad's) is no part of the first id, class name or label."""
    root = _voc(tmp_path / "voc", IDS)
    split = root / "ImageSets/Segmentation/val.txt"
    split.write_bytes(b"\xef\xbb\xbf" + split.read_bytes())
    assert open_dataset(f"voc:{root}", "val").ids == IDS
    from fcnseg.data.context import read_context_labels
    from fcnseg.data.folder import read_classes

    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"\xef\xbb\xbf1: accordion\n2: aeroplane\n")
    assert read_context_labels(labels) == {1: "accordion", 2: "aeroplane"}
    classes = tmp_path / "classes.txt"
    classes.write_bytes("\ufeffbackground\ncat\n".encode())
    assert read_classes(classes) == ("background", "cat")


# ------------------------------------------------------------ 4. and 7. hostile .caffemodel files


def _conv(name="conv1", shape=(2, 3, 1, 1), value=0.5):
    return (
        name,
        "Convolution",
        [np.full(shape, value, np.float32), np.zeros(shape[0], np.float32)],
    )


def _blob(dims: bytes, values: int) -> bytes:
    """A BlobProto with a raw BlobShape payload and `values` float32s."""
    return _field(7, dims) + _field(5, struct.pack(f"<{values}f", *range(values)))


def _file(tmp_path, blob: bytes, name="bad.caffemodel") -> Path:
    body = _field(1, b"conv1") + _field(2, b"Convolution") + _field(7, blob)
    path = tmp_path / name
    path.write_bytes(_field(1, b"net") + _field(100, body))
    return path


def _neg(n: int) -> bytes:
    return _varint(n + (1 << 64) if n < 0 else n)


@pytest.mark.parametrize(
    ("dims", "values", "message"),
    [
        (_field(1, _neg(-2) + _neg(-3)), 6, r"shape \(-2, -3\) has a negative dimension"),
        (_field(1, _neg(-1)), 0, r"negative dimension"),
        (
            _field(1, _varint(1 << 32) + _varint(1 << 32)),
            0,
            r"declares 18446744073709551616 "
            r"values \(more than an int64 holds\) but the file holds 0",
        ),
        (_field(1, _varint(1 << 62) * 4), 0, r"more than an int64"),
        (_field(1, b"\xff\xff"), 1, r"truncated|runs past"),  # a varint cut inside BlobShape
        (b"\x0d\x00\x00\x00\x00", 1, r"dim field has wire type 5"),  # dim as fixed32
        (_field(1, _varint(3)), 1000, r"declares 3 values but the file holds 1000"),
    ],
)
def test_hostile_blob_shapes_name_the_file_and_layer(tmp_path, dims, values, message):
    path = _file(tmp_path, _blob(dims, values))
    for read in (fcnseg.weights.read_caffemodel, fcnseg.weights.caffe_state_dict):
        with pytest.raises(ValueError, match=message) as e:
            read(path)
        assert str(path) in str(e.value) and "layer 'conv1'" in str(e.value)


def test_legacy_negative_dims(tmp_path):
    blob = b"\x08" + _neg(-1) + b"\x10\x01\x18\x01\x20\x01" + _field(5, b"")
    path = _file(tmp_path, blob)
    with pytest.raises(ValueError, match=r"conv1.*negative dimension"):
        fcnseg.weights.read_caffemodel(path)


def test_two_layers_of_one_name_are_refused_by_every_reader(tmp_path):
    path = tmp_path / "twice.caffemodel"
    path.write_bytes(encode_by_hand([_conv("conv1_1"), _conv("conv1_1", value=2.0)]))
    dup = (
        r"twice\.caffemodel: 1 layer name\(s\) hold weights more than once: 'conv1_1' "
        r"\(layers #0, #1\)"
    )
    for read in (fcnseg.weights.read_caffemodel, fcnseg.weights.caffe_state_dict,
                 fcnseg.weights.load_state):  # fmt: skip
        with pytest.raises(ValueError, match=dup):
            read(path)
    with pytest.raises(ValueError, match=dup):
        fcnseg.build_reference("voc-fcn32s", weights=path, width=0.0625)
    with pytest.raises(ValueError, match=dup):
        fcnseg.build_model("fcn32s_vgg16", weights=path, width=0.0625)
    out = tmp_path / "o.pth"
    assert main(["convert", str(path), "--net", "voc-fcn32s", "-o", str(out)]) == 1
    img = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(img)
    assert main(["predict", str(img), "--model", str(path), "-o", str(tmp_path / "o")]) == 1
    assert not out.exists() and not (tmp_path / "o").exists()
    # a weightless layer may share a name (Caffe's in-place ReLUs do): still read
    ok = tmp_path / "ok.caffemodel"
    ok.write_bytes(encode_by_hand([_conv("conv1_1"), ("conv1_1", "ReLU", [])]))
    assert list(fcnseg.weights.read_caffemodel(ok)) == ["conv1_1"]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_convert_refuses_nan_and_inf_naming_the_layer(tmp_path, capsys, bad):
    w = np.zeros((2, 3, 1, 1), np.float32)
    w[1, 2] = bad
    path = write_caffemodel(tmp_path / "nan.caffemodel", [("score_fr", "Convolution", [w])])
    out = tmp_path / "nan.pth"
    assert main(["convert", str(path), "--net", "voc-fcn32s", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "NaN or infinite" in err and "score_fr blob 0 (1 values)" in err and str(path) in err
    assert not out.exists()


def test_caffemodel_under_another_name_is_recognised_by_content(tmp_path):
    path = write_caffemodel(tmp_path / "weights.bin", [_conv()])
    with pytest.raises(ValueError, match=r"weights\.bin is a Caffe \.caffemodel by its content.*"
                       r"rename it to weights\.caffemodel"):  # fmt: skip
        fcnseg.weights.load_state(path)
    torch.save({"a": torch.zeros(1)}, tmp_path / "plain.bin")  # a PyTorch file stays one
    assert list(fcnseg.weights.load_state(tmp_path / "plain.bin")[0]) == ["a"]


# ------------------------------------------------- 8. sizes from files and arguments are bounded


def test_huge_label_number_is_refused_before_allocating(tmp_path):
    """'99999999999: cat' once built a 93 GiB lookup table (MemoryError)."""
    from fcnseg.data.context import context_lookup, read_context_labels

    labels = tmp_path / "labels.txt"
    labels.write_text("1: accordion\n99999999999: aeroplane\n")
    with pytest.raises(DatasetError, match=r"labels\.txt, line 2: label 99999999999 is beyond "
                       r"65535, the largest a LabelMap \(uint16\) holds"):  # fmt: skip
        read_context_labels(labels)
    with pytest.raises(DatasetError, match=r"label 70000 is outside 0\.\.65535"):
        context_lookup({1: "accordion", 70000: "cat"}, "a table")


@pytest.mark.parametrize("width", [float("nan"), float("inf"), 100, 0, -0.5, 1e-9])
@pytest.mark.parametrize("name", ["fcn8s_vgg16", "fcn32s_alexnet", "voc-fcn8s"])
def test_width_out_of_range_is_refused_with_the_range(name, width):
    with pytest.raises(ValueError, match=r"width must be in 0\.015625\.\.8\.0, got"):
        fcnseg.build_model(name, width=width)


def test_width_whose_fc_layers_exceed_memory_is_refused(monkeypatch):
    from fcnseg.models import backbones

    monkeypatch.setattr(backbones, "_physical_memory", lambda: 2 * 2**30)
    with pytest.raises(ValueError, match=r"width=2 makes fc6 and fc7 alone 1\.8 GiB .* half of "
                       r"this machine's 2 GiB"):  # fmt: skip
        fcnseg.build_model("fcn32s_vgg16", width=2.0)
    assert fcnseg.build_model("fcn32s_vgg16", width=0.0625) is not None  # small ones build


# ------------------------------------------- 12. data options inherit per key, same dataset only


def test_data_options_inherit_per_key_and_only_for_the_same_data(tmp_path):
    import argparse

    from fcnseg.cli.common import checkpoint_dataset

    ckpt = {
        "config": {
            "data": "digits",
            "data_options": {"n_val": 2, "size": 48, "scale": (1.0, 1.5), "seed": 5},
        }
    }

    def opened(*options, data=None, split="val"):
        args = argparse.Namespace(data=data, data_option=list(options), split=split)
        return checkpoint_dataset(args, ckpt)[1]

    ds = opened("n_val=3")  # one key overridden; size and seed still the training run's
    assert len(ds) == 3 and ds[0][0].shape[-1] == 48 and ds.seed == 5
    assert ds.scale == (1.0, 1.5)
    folder = tmp_path / "mine"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    (folder / "classes.txt").write_text("background\ncat\n")
    Image.new("RGB", (9, 7)).save(folder / "images" / "a.png")
    Image.fromarray(np.zeros((7, 9), np.uint8)).save(folder / "masks" / "a.png")
    other = opened(
        data=f"folder:{folder}", split="all"
    )  # digits' n_val / size / seed are not folder's
    assert len(other) == 1
    with pytest.raises(ValueError, match=r"unknown option 'size'"):
        opened("size=48", data=f"folder:{folder}", split="all")  # given ones are still checked


# ------------------------------------------------------- 16. SIFT Flow eval: both heads, or none


def test_siftflow_eval_upper_bound_and_confusion_for_both_heads(tmp_path, capsys):
    from test_siftflow import _siftflow

    root = _siftflow(tmp_path, ["coast_a1", "street_b2"], split_file="train.txt")
    (root / "val.txt").write_text("street_b2\n")
    run = tmp_path / "run"
    argv = ["train", "--model", "siftflow-fcn32s", "--width", "0.0625", "--data",
            f"siftflow:{root}", "--steps", "1", "--batch-size", "1", "--recipe", "modern",
            "--out", str(run)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    out = tmp_path / "cm"
    argv = ["eval", str(run / "last.pt"), "--upper-bound", "--save-confusion", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "upper bound (sem)" in text and "upper bound (geo)" in text
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_geo.csv",
        "confusion_geo.png",
        "confusion_sem.csv",
        "confusion_sem.png",
    ]
    geo = (out / "confusion_geo.csv").read_text().splitlines()
    assert len(geo) == 4 and "sky" in geo[0]  # 3 geometric classes and the header
    # an existing output is refused before any work, naming the head's file
    assert main(argv) == 1
    assert "confusion_sem.csv" in capsys.readouterr().err


# ------------------------------------- 10. a file a DataLoader worker cannot read: one clear line


@pytest.mark.parametrize("command", ["eval", "train"])
def test_empty_image_read_by_workers_gives_the_same_error(tmp_path, capsys, command):
    root = _voc(tmp_path / "voc", IDS)
    (root / "JPEGImages" / "05005.jpg").write_bytes(b"")  # 0 bytes
    (root / "ImageSets/Segmentation/train.txt").write_text("".join(f"{i}\n" for i in IDS))
    errors = []
    for workers in ("0", "2"):
        run = tmp_path / f"run{workers}"
        if command == "train":
            argv = ["train", "--model", "fcn32s_vgg16", "--width", "0.0625", "--data",
                    f"voc:{root}", "--steps", "2", "--batch-size", "3", "--recipe", "modern",
                    "--out", str(run), "--workers", workers]  # fmt: skip
        else:
            argv = ["eval", "voc-fcn32s", "--untrained", "--data", f"voc:{root}",
                    "--workers", workers, "--batch-size", "1"]  # fmt: skip
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and "worker" not in err
        errors.append([line for line in err.splitlines() if line.startswith("error:")])
    assert errors[0] == errors[1] and len(errors[0]) == 1, errors
    assert "05005.jpg is empty (0 bytes)" in errors[0][0]
