"""Export of every net: the release's 15 (two inputs, a 4-channel input, two heads) and every
fcnseg architecture, to ONNX and TorchScript, with named inputs and outputs, dynamic N, H, W,
and what each input needs written into the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import randomize_
from PIL import Image

import fcnseg.export as export_module
from fcnseg import build_model, list_models, reference_nets
from fcnseg.checkpoint import model_state, save_checkpoint
from fcnseg.cli import main
from fcnseg.export import (
    REL_TOLERANCE,
    ExportError,
    describe,
    export_onnx,
    export_torchscript,
    read_torchscript_metadata,
)
from fcnseg.weights import LogDepth, Preprocessing, prepare

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

SIZES = [(1, 41, 53), (2, 64, 48), (1, 70, 67)]  # none of them the trace size 1 x 160 x 192
INPUTS = {"nyud-fcn32s-color-d": {"image": 4}, "nyud-fcn32s-color-hha": {"color": 3, "hha": 3}}
SIFTFLOW = {"siftflow-fcn32s", "siftflow-fcn16s", "siftflow-fcn8s"}


def _tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_(build_model(name, width=0.0625)).eval()


def _raw(model, n: int, h: int, w: int, seed: int = 5) -> dict[str, torch.Tensor]:
    """What the net's inputs are made of, as read from files: uint8 RGB / HHA (N, 3, H, W),
    uint16 depth in mm (N, 1, H, W)."""
    g = torch.Generator().manual_seed(seed)
    pre = model.preprocessing if isinstance(model.preprocessing, dict) else {"image": None}
    return {k: torch.randint(500, 9000, (n, 1, h, w), generator=g) if isinstance(p, LogDepth)
            else torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)
            for k, p in pre.items()}  # fmt: skip


def _pytorch(model, raw: dict[str, torch.Tensor]) -> tuple[dict[str, np.ndarray], object]:
    """The model fed by fcnseg's own preprocessing: (outputs by their exported names, input)."""
    if model.stream_names:
        x = prepare(model.preprocessing, raw)
    elif isinstance(model.preprocessing, dict):  # early fusion: one 4-channel tensor
        x = prepare(model.preprocessing, torch.cat([v.float() for v in raw.values()], 1))
    else:
        x = model.preprocessing.batch(raw["image"])
    with torch.inference_mode():
        y = model(x)
    y = y if isinstance(y, dict) else {"logits": y}
    return {k: v.numpy() for k, v in y.items()}, x


def _close(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < REL_TOLERANCE * np.abs(ref).max()


@pytest.mark.parametrize("name", reference_nets())
def test_every_release_net_exports_to_onnx_with_names_and_metadata(name, tmp_path):
    model = _tiny(name)
    path = tmp_path / f"{name}.onnx"
    rows = export_onnx(model, path, verify_sizes=SIZES)
    assert len(rows) == 3 and all(r["ok"] and r["max_rel"] < REL_TOLERANCE for r in rows)
    heads = ["sem", "geo"] if name in SIFTFLOW else ["logits"]
    assert all(list(r["outputs"]) == heads and r["max_logit"] > 0 for r in rows)
    proto = onnx.load(str(path))
    inputs = INPUTS.get(name, {"image": 3})
    assert [v.name for v in proto.graph.input] == list(inputs)
    assert [v.name for v in proto.graph.output] == heads
    for v in [*proto.graph.input, *proto.graph.output]:  # N, H, W dynamic on every one
        dims = v.type.tensor_type.shape.dim
        assert [bool(dims[i].dim_param) for i in range(4)] == [True, False, True, True], v.name
        assert dims[1].dim_value == inputs.get(v.name) or v.name in heads
    # what a user needs to feed it, in the file
    meta = {p.key: p.value for p in proto.metadata_props}
    spec = json.loads(meta["fcnseg"])
    assert spec == json.loads(json.dumps(describe(model))) and spec["net"] == name
    parts = [p for i in spec["inputs"] for p in i["parts"]]
    assert [p["source"] for p in parts] == list(model.reference.inputs)
    for p, pre in zip(parts, model.reference.inputs.values(), strict=True):
        assert p["mean"] == (list(pre.mean) if isinstance(pre, Preprocessing) else pre.mean)
        if isinstance(pre, Preprocessing):
            assert p["channel_order"] == pre.channel_order and p["scale"] == pre.scale
    classes = model.num_classes if isinstance(model.num_classes, dict) else {}
    for o in spec["outputs"]:
        assert len(o["class_names"]) == o["classes"] == classes.get(o["name"], model.num_classes)
    if name.startswith("voc"):
        assert meta["fcnseg.image"] == "BGR, 0-255, minus (104.00699, 116.66877, 122.67892)"
    # beyond the verification sizes: onnxruntime on inputs prepared as the metadata says equals
    # PyTorch fed by fcnseg's preprocessing, every output
    if name in INPUTS or name in SIFTFLOW:
        raw = _raw(model, 2, 37, 59)
        ref, x = _pytorch(model, raw)
        feed = x if isinstance(x, dict) else {"image": x}
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(heads, {k: v.numpy() for k, v in feed.items()})
        for k, g in zip(heads, got, strict=True):
            _close(g, ref[k])


@pytest.mark.parametrize("name", sorted(set(list_models()) - set(reference_nets())))
def test_every_fcnseg_architecture_exports(name, tmp_path):
    torch.manual_seed(0)
    width = {} if "googlenet" in name else {"width": 0.0625}  # GoogLeNet has no width option
    model = randomize_(build_model(name, num_classes=5, **width)).eval()
    rows = export_onnx(model, tmp_path / "m.onnx", verify_sizes=SIZES[:2])
    assert all(r["ok"] and r["max_logit"] > 0 for r in rows)
    spec = json.loads(
        {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}["fcnseg"]
    )
    assert spec["inputs"][0]["parts"][0]["channel_order"] == model.preprocessing.channel_order
    assert spec["outputs"] == [
        {"name": "logits", "shape": ["N", 5, "H", "W"], "classes": 5, "class_names": None}
    ]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", ["nyud-fcn32s-color-hha", "siftflow-fcn8s"])
def test_torchscript_two_inputs_and_two_heads(name, tmp_path):
    model = _tiny(name)
    path = tmp_path / "m.pt"
    rows = export_torchscript(model, path, verify_sizes=SIZES[:2])
    assert all(r["ok"] for r in rows)
    loaded = torch.jit.load(str(path))
    raw = _raw(model, 1, 45, 71)
    ref, x = _pytorch(model, raw)
    with torch.inference_mode():  # positional inputs in the metadata's order, a tuple out
        got = loaded(*x.values()) if isinstance(x, dict) else loaded(x)
    heads = list(ref)
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(heads)
    for k, g in zip(heads, got, strict=True):
        _close(g.numpy(), ref[k])
    meta = read_torchscript_metadata(path)
    assert [i["name"] for i in meta["inputs"]] == list(INPUTS.get(name, {"image": 3}))
    assert [o["name"] for o in meta["outputs"]] == heads


def _snippets() -> tuple[str, str]:
    """The module docstring's two onnxruntime examples, as code."""
    blocks, block = [], []
    for line in [*export_module.__doc__.splitlines(), "end"]:
        if line.startswith("    ") or (block and not line.strip()):
            block.append(line[4:])
        elif block:
            blocks.append("\n".join(block))
            block = []
    code = [b for b in blocks if "onnxruntime" in b or "custom_metadata_map" in b]
    assert len(code) == 2, code
    return code[0], code[1]


def test_docstring_snippets_feed_every_kind_of_net_right(tmp_path):
    """The README's snippet: BGR minus the Caffe mean for a release VOC net, and the generic
    one (reading the metadata) for the colour + depth and colour + HHA nets."""
    first, generic = _snippets()
    rgb = np.random.default_rng(0).integers(0, 256, (47, 61, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "cat.jpg", quality=100)
    read = np.asarray(Image.open(tmp_path / "cat.jpg").convert("RGB"))

    model = _tiny("voc-fcn8s")
    export_onnx(model, tmp_path / "voc-fcn8s.onnx", verify_sizes=SIZES[:1])
    ns: dict = {}
    code = (first + "\n" + generic).replace('"cat.jpg"', repr(str(tmp_path / "cat.jpg")))
    exec(code.replace('"voc-fcn8s.onnx"', repr(str(tmp_path / "voc-fcn8s.onnx"))), ns)
    ref, _ = _pytorch(model, {"image": torch.from_numpy(read.copy()).permute(2, 0, 1)[None]})
    _close(ns["logits"], ref["logits"])
    _close(ns["outputs"]["logits"], ref["logits"])
    assert ns["names"][:2] == ["background", "aeroplane"]

    hha = np.random.default_rng(1).integers(0, 256, (47, 61, 3), dtype=np.uint8)
    depth = np.random.default_rng(2).integers(500, 9000, (47, 61)).astype(np.uint16)
    sources = {"color": read, "hha": hha, "depth": depth}
    for name in ["nyud-fcn32s-color-d", "nyud-fcn32s-color-hha"]:
        model = _tiny(name)
        path = tmp_path / f"{name}.onnx"
        export_onnx(model, path, verify_sizes=SIZES[:1])
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ns = {"np": np, "Image": Image, "session": session, "SOURCES": sources}
        exec(generic.replace("sources = {", "sources = SOURCES or {"), ns)
        raw = {k: torch.from_numpy(np.ascontiguousarray(v.transpose(2, 0, 1) if v.ndim == 3
               else v[None]).astype(np.int64 if v.ndim == 2 else np.uint8))[None]
               for k, v in sources.items() if k in model.preprocessing}  # fmt: skip
        ref, _ = _pytorch(model, raw)
        _close(ns["outputs"]["logits"], ref["logits"])


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_with_preprocessing_takes_uint8_rgb(fmt, tmp_path):
    model = _tiny("voc-fcn8s")
    export = export_onnx if fmt == "onnx" else export_torchscript
    rows = export(model, tmp_path / "m", verify_sizes=SIZES[:2], with_preprocessing=True)
    assert [r["size"] for r in rows] == ["1x41x53x3", "2x64x48x3"] and all(r["ok"] for r in rows)
    rgb = torch.randint(0, 256, (2, 39, 57, 3), dtype=torch.uint8)
    ref, _ = _pytorch(model, {"image": rgb.permute(0, 3, 1, 2)})
    if fmt == "onnx":
        session = ort.InferenceSession(str(tmp_path / "m"), providers=["CPUExecutionProvider"])
        (inp,) = session.get_inputs()
        assert inp.name == "image" and inp.type == "tensor(uint8)"
        assert [isinstance(d, str) for d in inp.shape] == [True, True, True, False]
        got = session.run(["logits"], {"image": rgb.numpy()})[0]
        meta = json.loads(session.get_modelmeta().custom_metadata_map["fcnseg"])
    else:
        with torch.inference_mode():
            got = torch.jit.load(str(tmp_path / "m"))(rgb).numpy()
        meta = read_torchscript_metadata(tmp_path / "m")
    _close(got, ref["logits"])
    (spec,) = meta["inputs"]
    assert spec["dtype"] == "uint8" and spec["layout"] == "NHWC"
    assert spec["in_graph"][0]["mean"] == [104.00699, 116.66877, 122.67892]


def test_with_preprocessing_refuses_nets_of_other_inputs(tmp_path):
    for name in ["nyud-fcn32s-color-d", "nyud-fcn32s-color-hha"]:
        with pytest.raises(ValueError, match=rf"--with-preprocessing .* {name} takes"):
            export_onnx(_tiny(name), tmp_path / "m.onnx", with_preprocessing=True)
    assert not list(tmp_path.iterdir())


def test_a_broken_second_head_is_refused_and_named(tmp_path, monkeypatch):
    real = ort.InferenceSession.run

    def geo_off(self, names, feed, *args):
        out = real(self, names, feed, *args)
        return [out[0], out[1] + 1e-3 * np.abs(out[1]).max()]

    monkeypatch.setattr(ort.InferenceSession, "run", geo_off)
    with pytest.raises(ExportError, match=r"1x3x41x53: max rel diff 0\.001 \(output geo\)"):
        export_onnx(_tiny("siftflow-fcn16s"), tmp_path / "m.onnx", verify_sizes=SIZES[:1])
    assert not list(tmp_path.iterdir())


CLI_LINES = {
    "nyud-fcn32s-color-hha": [
        "1x3+3x40x40",
        "color (N, 3, H, W) float32: BGR, 0-255, minus (116.19, 97.203, 92.318)",
        "hha (N, 3, H, W) float32: channels as stored, 0-255, minus (132.431, 94.076, 118.477)",
        "logits (N, 40, H, W) float32 scores of 40 classes: wall, floor",
    ],
    "nyud-fcn32s-color-d": [
        "1x4x40x40",
        "image (N, 4, H, W) float32: channels concatenated in this order",
        "channels 0-2 color: BGR, 0-255, minus (116.19, 97.203, 92.318)",
        "channel 3 depth: log(depth in mm) - 7.844, 0 where depth is 0",
    ],
    "siftflow-fcn8s": [
        "1x3x40x40",
        "image (N, 3, H, W) float32: BGR, 0-255, minus (114.578, 115.294, 108.353)",
        "sem (N, 33, H, W) float32 scores of 33 classes: awning, balcony",
        "geo (N, 3, H, W) float32 scores of 3 classes: sky, horizontal, vertical",
    ],
}


@pytest.mark.parametrize("name", list(CLI_LINES))
def test_cli_exports_a_checkpoint_of_the_release_nets_and_says_what_to_feed(name, tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "last.pt", model_state(_tiny(name)))
    out = tmp_path / "m.onnx"
    assert main(["export", str(ckpt), "--format", "onnx", "-o", str(out), "--sizes", "40x40"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and f"onnx model of {name} written to" in text
    for line in CLI_LINES[name]:
        assert line in text
    if name == "siftflow-fcn8s":
        return
    argv = ["export", str(ckpt), "-o", str(tmp_path / "p.onnx"), "--with-preprocessing"]
    assert main(argv) == 1
    assert "--with-preprocessing needs" in capsys.readouterr().err
    assert not (tmp_path / "p.onnx").exists()


@pytest.mark.slow
def test_cli_exports_a_release_net_by_name(tmp_path, capsys):
    out = tmp_path / "m.pt"
    argv = ["export", "voc-fcn-alexnet", "--untrained", "--format", "torchscript", "-o", str(out)]
    with pytest.warns(UserWarning, match="all zero"):  # fresh score layers are zero
        assert main([*argv, "--sizes", "40x40"]) == 0
    text = capsys.readouterr().out
    assert "image (N, 3, H, W) float32: BGR, 0-255, minus (104.00699, 116.66877, 122.67892)" in text
    assert read_torchscript_metadata(out)["net"] == "voc-fcn-alexnet"
