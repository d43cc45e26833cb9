"""Export round trips: ONNX and TorchScript agree with PyTorch at sizes unlike the traced one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_

from fcnseg import build_model, list_models
from fcnseg.checkpoint import model_state, save_checkpoint
from fcnseg.cli import main
from fcnseg.export import (
    REL_TOLERANCE,
    TRACE_SIZE,
    ExportError,
    export_onnx,
    export_torchscript,
    parse_sizes,
)

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
ROOT = Path(__file__).resolve().parents[1]


def _tiny(name: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_(build_model(name, num_classes=5, width=0.125, **options)).eval()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "layout"),
    [("fcn8s_vgg16", "reference"), ("fcn32s_vgg16", "reference"), ("fcn8s_vgg16", "same")],
)
def test_onnx_round_trip_three_sizes(name, layout, tmp_path):
    model = _tiny(name, layout=layout)
    rows = export_onnx(model, tmp_path / "m.onnx")
    print(name, layout, rows)
    assert [r["size"] for r in rows] == ["1x3x224x224", "2x3x197x311", "1x3x500x375"]
    assert all(r["ok"] and r["max_rel"] < REL_TOLERANCE and r["max_logit"] > 0 for r in rows)
    # crops are graph ops on the input's shape, not constants of the traced size
    ops = {node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert {"Shape", "Slice"} <= ops
    # dynamic axes really dynamic: a size unlike the traced one (1 x 160 x 192), run directly
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 33, 65)
    assert TRACE_SIZE != (3, 33, 65)
    got = session.run(["logits"], {"image": x.numpy()})[0]
    with torch.inference_mode():
        ref = model(x).numpy()
    assert got.shape == (3, 5, 33, 65)
    assert np.abs(got - ref).max() < REL_TOLERANCE * np.abs(ref).max()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_round_trip(tmp_path):
    model = _tiny("fcn8s_vgg16", layout="same")
    rows = export_torchscript(model, tmp_path / "m.pt", verify_sizes=[(1, 64, 96), (2, 33, 65)])
    assert all(r["ok"] for r in rows)
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.randn(1, 3, 71, 45)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-4)


def test_broken_export_fails_loudly_and_writes_nothing(tmp_path, monkeypatch):
    model = _tiny("fcn32s_vgg16")
    real = ort.InferenceSession.run

    def off_by_a_bit(self, names, feed, *args):
        out = real(self, names, feed, *args)
        return [o + 1e-3 * np.abs(o).max() for o in out]

    monkeypatch.setattr(ort.InferenceSession, "run", off_by_a_bit)
    with pytest.raises(ExportError, match=r"disagrees .* 1x3x64x64: max rel diff 0\.001"):
        export_onnx(model, tmp_path / "m.onnx", verify_sizes=[(1, 64, 64)])
    assert not list(tmp_path.iterdir()), "a failed export must leave no file"


def test_same_layout_traces_dynamically_at_odd_sizes(tmp_path):
    """The skip fusion crops by slicing (no Python min() for the tracer to freeze): the "same"
    layout, whose upsampled and tapped scores differ in size at odd inputs, stays exact."""
    model = _tiny("fcn8s_vgg16", layout="same")
    report = export_torchscript(model, tmp_path / "m.pt", verify_sizes=[(1, 33, 65), (2, 197, 311)])
    assert [r["max_rel"] < 1e-4 for r in report] == [True, True]


def test_parse_sizes():
    assert parse_sizes("224x224,2x197x311") == [(1, 224, 224), (2, 197, 311)]
    with pytest.raises(ValueError, match="'224'"):
        parse_sizes("224")


def test_cli_export(tmp_path, capsys):
    model = _tiny("fcn32s_vgg16")
    ckpt = save_checkpoint(tmp_path / "tiny.pt", model_state(model))
    out = tmp_path / "m.onnx"
    argv = ["export", str(ckpt), "--format", "onnx", "-o", str(out), "--sizes", "64x64,2x33x47"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "2x3x33x47" in text and out.is_file()
    assert main(["export", str(ckpt), "-o", str(out), "--sizes", "64"]) == 1
    assert "'64'" in capsys.readouterr().err


@pytest.mark.slow
def test_hubconf_local():
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert all(callable(getattr(hubconf, name, None)) for name in list_models())
    assert "voc-fcn8s" in list_models() and callable(hubconf.voc_fcn8s)
    net = torch.hub.load(str(ROOT), "nyud-fcn32s-color-hha", source="local", width=0.0625)
    assert net.stream_names == ("color", "hha") and net.num_classes == 40
    with pytest.raises(ValueError, match=r"no pretrained VOC weights .* fcn8s_vgg16"):
        hubconf.fcn32s_alexnet(pretrained=True)
    model = torch.hub.load(str(ROOT), "fcn8s_vgg16", source="local", num_classes=3, width=0.125)
    assert model.num_classes == 3 and model(torch.zeros(1, 3, 20, 24)).shape == (1, 3, 20, 24)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_with_bilinear_upsamplers_runs_the_plain_transposed_conv(fmt, tmp_path, capsys):
    """Fresh upsamplers are diagonal (they run per class in PyTorch): the exported graph must
    still be the release's ConvTranspose (ONNX failed on the per-class kernel and dumped IR)."""
    model = build_model("fcn8s_vgg16", num_classes=5, width=0.0625).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("score"):
                p.normal_(0, 0.05)  # scores non-zero, upsamplers left bilinear
    export = export_onnx if fmt == "onnx" else export_torchscript
    rows = export(model, tmp_path / "m.bin", verify_sizes=[(1, 64, 64), (2, 45, 71)])
    assert all(r["ok"] and not r.get("shape_only") for r in rows)
    assert "Torch IR graph" not in capsys.readouterr().err


def test_an_exporter_failure_is_one_line_without_the_ir_graph(tmp_path, monkeypatch):
    def fails(*a, **k):
        raise RuntimeError("Torch IR graph at exception: graph(%x : Float(*))\n  %1 = aten::foo()\n"
                           "Unsupported: ONNX export of operator foo")  # fmt: skip

    monkeypatch.setattr(torch.onnx, "export", fails)
    with pytest.raises(ExportError) as e:
        export_onnx(_tiny("fcn32s_vgg16"), tmp_path / "m.onnx", verify_sizes=[(1, 40, 40)])
    assert str(e.value).count("\n") == 0 and "Unsupported: ONNX export of operator foo" in str(
        e.value
    )
    assert "graph(" not in str(e.value) and not (tmp_path / "m.onnx").exists()
