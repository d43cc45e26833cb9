"""The reference release's 15 nets: names, shapes, sizes, and .caffemodel files that load.

Expected layer names and shapes come from tests/caffe_forward.py (written from FCN.md), not
from fcnseg; .caffemodel files are written by its own protobuf writer, and the loaded nets
are compared with its independent functional forward.
"""

import pytest
import torch
import torch.nn.functional as F
from caffe_forward import (
    caffe_forward,
    expected_state_shapes,
    random_blobs,
    release_layers,
    write_caffemodel,
)
from conftest import randomize_
from torch import nn

import fcnseg
from fcnseg.models.reference import state_dict_from_caffe

ISSUE_NAMES = [  # issue 10, spelled as the release spells its folders
    "voc-fcn32s", "voc-fcn16s", "voc-fcn8s", "voc-fcn8s-atonce", "voc-fcn-alexnet",
    "nyud-fcn32s-color", "nyud-fcn32s-hha", "nyud-fcn32s-color-d", "nyud-fcn32s-color-hha",
    "pascalcontext-fcn32s", "pascalcontext-fcn16s", "pascalcontext-fcn8s",
    "siftflow-fcn32s", "siftflow-fcn16s", "siftflow-fcn8s",
]  # fmt: skip
WIDTH = 0.125  # every layer at 1/8 of its channels: same names, layout and geometry


def tiny(name: str) -> nn.Module:
    return randomize_(fcnseg.build_reference(name, width=WIDTH)).eval()


def inputs_for(name: str, n: int, h: int, w: int, dtype=torch.float32):
    """The forward's input convention (fcnseg.models.reference's docstring)."""
    if name == "nyud-fcn32s-color-hha":
        return {"color": torch.randn(n, 3, h, w, dtype=dtype),
                "hha": torch.randn(n, 3, h, w, dtype=dtype)}  # fmt: skip
    return torch.randn(n, 4 if name.endswith("color-d") else 3, h, w, dtype=dtype)


def outputs(name: str) -> dict[str, int]:
    if name.startswith("siftflow"):
        return {"sem": 33, "geo": 3}  # FCN.md 8: 33 semantic + 3 geometric classes
    return {"": {"voc": 21, "nyud": 40, "pascalcontext": 60}[name.split("-")[0]]}


def test_names_and_unknown_name():
    assert fcnseg.reference_nets() == ISSUE_NAMES
    with pytest.raises(ValueError, match="Did you mean 'voc-fcn8s'") as e:
        fcnseg.build_reference("voc-fcn8")
    assert "siftflow-fcn16s" in str(e.value)  # and it lists the valid names
    with pytest.raises(ValueError, match="Did you mean 'nyud-fcn32s-color-hha'"):
        fcnseg.build_reference("nyud-fcn32s-colour-hha")
    assert "fcn8s_vgg16" in fcnseg.list_models()  # the registered names stay


@pytest.mark.parametrize("name", ISSUE_NAMES)
def test_keys_and_shapes_are_the_release(name):
    with torch.device("meta"):  # full size, shapes only
        model = fcnseg.build_reference(name)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_state_shapes(name)
    for layer, kind, _ in release_layers(name):  # deconvolutions carry no bias
        if kind == "Deconvolution":
            assert getattr(model, layer).bias is None


def test_layer_details():
    alex = fcnseg.build_reference("voc-fcn-alexnet", width=WIDTH)
    assert [alex.conv2.groups, alex.conv4.groups, alex.conv5.groups] == [2, 2, 2]
    assert alex.conv1.padding == (100, 100) and alex.conv1.stride == (4, 4)
    names = list(dict(alex.named_children()))
    for norm, pool in (("norm1", "pool1"), ("norm2", "pool2")):  # LRN after the pool
        assert names.index(norm) == names.index(pool) + 1
        lrn = getattr(alex, norm)
        assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 1.0)
    expected_offsets = {  # FCN.md 3: the reference's crops, derived here from geometry
        "voc-fcn-alexnet": {"upscore": 18},
        "voc-fcn8s": {"score_pool4": 5, "score_pool3": 9, "upscore8": 31},
        "nyud-fcn32s-color-hha": {"upscore": 19},
        "nyud-fcn32s-color-d": {"upscore": 19},
        "siftflow-fcn16s": {"score_pool4_sem": 5, "upscore16_sem": 27,
                            "score_pool4_geo": 5, "upscore16_geo": 27},
    }  # fmt: skip
    for name, offsets in expected_offsets.items():
        assert fcnseg.build_reference(name, width=WIDTH).crop_offsets == offsets, name
    # the release keeps every deconvolution fixed (lr 0); everything else learns
    m = fcnseg.build_reference("siftflow-fcn8s", width=WIDTH)
    frozen = {n.split(".")[0] for n, p in m.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _, _ in release_layers("siftflow-fcn8s") if n.startswith("upscore")}


def test_preprocessing_is_the_datasets():
    p = {n: fcnseg.build_reference(n, width=WIDTH).preprocessing for n in ISSUE_NAMES}
    assert p["voc-fcn8s"].mean == pytest.approx((104.00699, 116.66877, 122.67892))
    assert p["pascalcontext-fcn8s"].mean == p["voc-fcn8s"].mean
    assert p["siftflow-fcn8s"].mean == pytest.approx((114.578, 115.294, 108.353))
    assert p["nyud-fcn32s-color"].mean == pytest.approx((116.190, 97.203, 92.318))
    assert p["nyud-fcn32s-hha"].mean == pytest.approx((132.431, 94.076, 118.477))
    assert p["nyud-fcn32s-hha"].channel_order == "RGB"  # HHA as stored, not flipped
    assert all(
        p[n].channel_order == "BGR" and p[n].scale == 1 for n in ("voc-fcn8s", "nyud-fcn32s-color")
    )
    assert set(p["nyud-fcn32s-color-hha"]) == {"color", "hha"}
    assert list(p["nyud-fcn32s-color-d"]) == ["color", "depth"]  # the 4 channels' order
    depth = torch.tensor([[1000.0, 2000.0]]).numpy().astype("uint16")
    d = p["nyud-fcn32s-color-d"]["depth"](depth)
    assert d.shape == (1, 1, 2)
    torch.testing.assert_close(d.float(), (torch.log(torch.tensor([[[1000.0, 2000.0]]])) - 7.844))


# 500 x 375 on every net is slow on 2 cores: the fast run covers one net of each structure
FEW = {"voc-fcn8s", "voc-fcn-alexnet", "nyud-fcn32s-color-d", "nyud-fcn32s-color-hha",
       "siftflow-fcn16s"}  # fmt: skip
SIZES = [
    *[(n, s) for n in ISSUE_NAMES for s in ((1, 1), (31, 45))],
    *[pytest.param(n, (375, 500), marks=() if n in FEW else pytest.mark.slow) for n in ISSUE_NAMES],
]


@pytest.mark.parametrize(("name", "size"), SIZES)
def test_output_size_equals_input_size(name, size):
    model = tiny(name)
    with torch.no_grad():
        y = model(inputs_for(name, 1, *size))
    ys = y if isinstance(y, dict) else {"": y}
    assert {k: v.shape for k, v in ys.items()} == {
        k: (1, c, *size) for k, c in outputs(name).items()
    }
    assert all(torch.isfinite(v).all() for v in ys.values())


@pytest.mark.parametrize("name", ["nyud-fcn32s-color-hha", "siftflow-fcn16s", "voc-fcn-alexnet"])
def test_every_learnable_parameter_gets_a_gradient(name):
    model = tiny(name).train()
    y = model(inputs_for(name, 2, 40, 52))
    ys = y if isinstance(y, dict) else {"": y}
    loss = sum(F.cross_entropy(v, torch.randint(0, outputs(name)[k], (2, 40, 52)))
               for k, v in ys.items())  # fmt: skip  # SIFT Flow: the two losses summed
    loss.backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_inputs_are_checked():
    hha = tiny("nyud-fcn32s-color-hha")
    with pytest.raises(ValueError, match=r"dict of inputs \['color', 'hha'\]"):
        hha(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\['color'\]"):
        hha({"color": torch.randn(1, 3, 8, 8)})
    with pytest.raises(ValueError, match="differ in batch or size"):
        hha({"color": torch.randn(1, 3, 8, 8), "hha": torch.randn(1, 3, 8, 9)})
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\), got \(1, 3, 8, 8\)"):
        tiny("nyud-fcn32s-color-d")(torch.randn(1, 3, 8, 8))


# ---------------------------------------------------------------- .caffemodel files


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _compare(name, blobs, model, size=(37, 53)) -> float:
    x = inputs_for(name, 2, *size)
    with torch.no_grad():
        y = model(x)
        ref = caffe_forward(name, blobs, x)
    ys, refs = (y, ref) if isinstance(y, dict) else ({"": y}, {"": ref})
    assert ys.keys() == refs.keys()
    err = max(_max_rel(ys[k], refs[k]) for k in ys)
    print(f"{name}: max relative error vs the independent forward {err:.2e}")
    return err


CAFFE_CASES = [  # the issue's four nets, in both message forms; V1 with classifier-style fc
    ("voc-fcn8s", "layer", False),
    ("voc-fcn8s", "v1", True),
    ("voc-fcn-alexnet", "layer", False),
    ("voc-fcn-alexnet", "v1", True),
    ("nyud-fcn32s-color-hha", "layer", False),
    ("nyud-fcn32s-color-hha", "v1", True),
    ("siftflow-fcn16s", "layer", True),
    ("siftflow-fcn16s", "v1", False),
]


@pytest.mark.parametrize(("name", "form", "fc_matrix"), CAFFE_CASES)
def test_caffemodel_loads_and_agrees_with_independent_forward(tmp_path, name, form, fc_matrix):
    blobs = random_blobs(name, WIDTH, seed=3, fc_as_matrix=fc_matrix)
    path = tmp_path / f"{name}.caffemodel"
    write_caffemodel(path, name, blobs, form=form, double=form == "v1" and name.startswith("voc"))
    model = fcnseg.build_reference(name, weights=path, width=WIDTH).eval()
    assert _compare(name, blobs, model) < 1e-4
    # the same file through read_caffemodel + state_dict_from_caffe's checks (width 1 only:
    # here it must name every layer whose shape is not the full-size release's)
    with pytest.raises(ValueError, match=r"shape \(\d+\): .*conv1"):
        state_dict_from_caffe(name, fcnseg.weights.read_caffemodel(path))


def test_atonce_scale_blobs_are_checked(tmp_path):
    name = "voc-fcn8s-atonce"
    blobs = random_blobs(name, WIDTH, seed=5)
    assert blobs["scale_pool4"][0].shape == (64,) and blobs["scale_pool3"][0].shape == (32,)
    good = tmp_path / "atonce.caffemodel"
    write_caffemodel(good, name, blobs)
    model = fcnseg.build_reference(name, weights=good, width=WIDTH).eval()
    assert "scale_pool4.weight" not in model.state_dict()  # a constant of the head
    assert _compare(name, blobs, model) < 1e-4
    bad = dict(blobs, scale_pool4=[torch.full((64,), 0.02)])
    write_caffemodel(tmp_path / "bad.caffemodel", name, bad)
    with pytest.raises(ValueError, match=r"scale_pool4 holds 64 values in \[0.02, 0.02\]; .*0.01"):
        fcnseg.build_reference(name, weights=tmp_path / "bad.caffemodel", width=WIDTH)
    del bad["scale_pool4"]
    write_caffemodel(tmp_path / "none.caffemodel", name, bad)
    with pytest.raises(ValueError, match="scale_pool4 is missing"):
        fcnseg.build_reference(name, weights=tmp_path / "none.caffemodel", width=WIDTH)
    # the plain FCN-8s file has the same layers: only the missing Scale blobs tell them apart
    plain = random_blobs("voc-fcn8s", WIDTH, seed=5)
    write_caffemodel(tmp_path / "fcn8s.caffemodel", "voc-fcn8s", plain)
    with pytest.raises(ValueError, match="scale_pool3 is missing"):
        fcnseg.build_reference(name, weights=tmp_path / "fcn8s.caffemodel", width=WIDTH)
    # a PyTorch state dict (ours, or the port's .pth) holds no Scale blobs: the head's constants
    torch.save(model.state_dict(), tmp_path / "atonce.pth")
    again = fcnseg.build_reference(name, weights=tmp_path / "atonce.pth", width=WIDTH).eval()
    assert _compare(name, blobs, again) < 1e-4


def test_file_of_another_net_names_the_layers(tmp_path):
    path = tmp_path / "fcn32s.caffemodel"
    write_caffemodel(path, "voc-fcn32s", random_blobs("voc-fcn32s", WIDTH))
    with pytest.raises(ValueError) as e:
        fcnseg.build_reference("voc-fcn8s", weights=path, width=WIDTH)
    msg = str(e.value)
    assert "fcn32s.caffemodel" in msg and "does not fit voc-fcn8s" in msg
    missing = ("score_pool4.weight", "score_pool4.bias", "upscore2.weight", "score_pool3.weight",
               "score_pool3.bias", "upscore_pool4.weight", "upscore8.weight")  # fmt: skip
    assert "missing (7): " in msg and all(k in msg for k in missing)
    assert "not in this net (1): upscore.weight" in msg
    write_caffemodel(path, "siftflow-fcn32s", random_blobs("siftflow-fcn32s", WIDTH))
    with pytest.raises(ValueError, match=r"not in this net \(6\): score_fr_sem.weight"):
        fcnseg.build_reference("voc-fcn32s", weights=path, width=WIDTH)
    with pytest.raises(ValueError, match="no published weights"):
        fcnseg.build_reference("nyud-fcn32s-color-d", weights="reference")


def test_reference_weights_entries_fit_the_nets(tmp_path, monkeypatch):
    """Every published net has a weights entry with the net's classes and inputs, and
    weights="reference" loads the file the registry's fetch gives."""
    from fcnseg.weights import REFERENCE_WEIGHTS

    assert set(REFERENCE_WEIGHTS) == set(ISSUE_NAMES) - {"nyud-fcn32s-color-d"}
    for name, entry in REFERENCE_WEIGHTS.items():
        model = fcnseg.build_reference(name, width=WIDTH)
        want = outputs(name)
        assert entry.classes == want.get("", want), name
        prep = model.preprocessing if isinstance(model.preprocessing, dict) else None
        assert list(entry.inputs) == list(prep or entry.inputs), name
        if prep is None:
            assert list(entry.inputs.values()) == [model.preprocessing], name
    name = "siftflow-fcn16s"
    blobs = random_blobs(name, WIDTH, seed=11)
    write_caffemodel(tmp_path / "s.caffemodel", name, blobs)
    asked = []
    monkeypatch.setattr(
        fcnseg.weights, "fetch", lambda spec: asked.append(spec) or tmp_path / "s.caffemodel"
    )
    model = fcnseg.build_reference(name, weights="reference", width=WIDTH).eval()
    assert asked == [REFERENCE_WEIGHTS[name]]
    assert _compare(name, blobs, model) < 1e-4


def test_pth_round_trip(tmp_path):
    model = tiny("siftflow-fcn8s")
    torch.save(model.state_dict(), tmp_path / "s.pth")
    again = fcnseg.build_reference("siftflow-fcn8s", weights=tmp_path / "s.pth", width=WIDTH)
    x = inputs_for("siftflow-fcn8s", 1, 20, 30)
    with torch.no_grad():
        a, b = model(x), again.eval()(x)
    assert all(torch.equal(a[k], b[k]) for k in ("sem", "geo"))


@pytest.mark.parametrize("name", ["voc-fcn8s", "voc-fcn-alexnet", "nyud-fcn32s-color-d"])
def test_state_dict_from_caffe_full_size_blob_forms(name):
    """Full-size blobs (meta: no memory) in the files' shape forms map onto the net."""
    blobs = {}
    for layer, _kind, shapes in release_layers(name):
        ts = [torch.empty(s, device="meta") for s in shapes]
        if layer in ("fc6", "fc7"):  # a classifier's InnerProduct, legacy (1, 1, out, in)
            ts[0] = ts[0].reshape(1, 1, shapes[0][0], -1)
        if len(ts) > 1:  # legacy bias (1, 1, 1, n)
            ts[1] = ts[1].reshape(1, 1, 1, -1)
        blobs[layer] = ts
    blobs["relu1_1"], blobs["data"] = [], []  # layers without weights are ignored
    state = state_dict_from_caffe(name, blobs)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_state_shapes(name)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "form"), [("voc-fcn8s", "layer"), ("voc-fcn-alexnet", "v1")])
def test_full_size_caffemodel_agrees(tmp_path, name, form):
    blobs = random_blobs(name, 1.0, seed=7, fc_as_matrix=form == "v1")
    path = tmp_path / f"{name}.caffemodel"
    write_caffemodel(path, name, blobs, form=form)
    model = fcnseg.build_reference(name, weights=path).eval()
    assert _compare(name, blobs, model, size=(24, 30)) < 1e-4
