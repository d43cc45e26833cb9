"""Every net through every command, by its name: the 15 nets of the release, each trained for a
step on its dataset's fixture tree with no --data-option, then predicted, exported, benchmarked,
evaluated and compared from the run's checkpoint, as a new user would (issue 21's table)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from PIL import Image
from test_context import _context
from test_nyud import _nyud
from test_siftflow import _siftflow
from test_voc import _tree

import fcnseg
from fcnseg.cli import main
from fcnseg.data.io import read_mask

NETS = fcnseg.reference_nets()
WIDTH = "0.125"  # the width
# the data option each net reads, chosen by the net (its inputs, its heads), never passed
DATA_OPTIONS = {"nyud-fcn32s-color": {"modality": "color"}, "nyud-fcn32s-hha": {"modality": "hha"},
                "nyud-fcn32s-color-d": {"modality": "color-depth"},
                "nyud-fcn32s-color-hha": {"modality": "color-hha"},
                **{f"siftflow-fcn{s}": {"task": "both"} for s in ("32s", "16s", "8s")}}  # fmt: skip
# what each data set's eval table must name (a class of each head)
CLASS_NAMES = {"voc": ["background", "aeroplane"], "nyud": ["wall", "floor"],
               "pascalcontext": ["background", "aeroplane"],
               "siftflow": ["awning", "sky", "horizontal"]}  # fmt: skip


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    """One tree per dataset, with train and val splits (ids with underscores and zeros)."""
    tmp = tmp_path_factory.mktemp("every_net")
    voc = _tree(tmp / "voc", ["2007_000032", "2007_000033"], size=(30, 34), split="train")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n")
    context = _context(tmp / "context", ["2008_000002", "2008_000008"])
    (context / "ImageSets" / "Main" / "train.txt").write_text("2008_000002\n2008_000008\n")
    nyud = _nyud(tmp, ["5001", "5002"], split_file="train.txt")
    (nyud / "val.txt").write_text("5002\n")
    sift = _siftflow(tmp, ["coast_arnat59", "highway_bost181"], split_file="train.txt")
    (sift / "val.txt").write_text("highway_bost181\n")
    return {"voc": voc, "pascalcontext": context, "nyud": nyud, "siftflow": sift}


def _predict_args(name: str, root: Path) -> list[str]:
    """The photos of the net's dataset, and beside them what the net needs (depth, HHA)."""
    dataset = name.split("-")[0]
    if dataset == "nyud":
        if name.endswith("-hha") and not name.endswith("color-hha"):
            return [str(root / "data" / "hha")]  # the HHA-only net takes HHA images
        images = [str(root / "data" / "images")]
        depth = ["--depth", str(root / "data" / "depth")]
        if name.endswith("color-hha"):  # HHA computed from the depth: the camera is needed
            return [*images, *depth, "--camera", "nyud"]
        return [*images, *depth] if name.endswith("color-d") else images
    folder = {"voc": "JPEGImages", "pascalcontext": "JPEGImages", "siftflow": "Images"}[dataset]
    return [str(root / folder)]


def _heads(model) -> dict[str, int]:
    c = model.num_classes
    return dict(c) if isinstance(c, dict) else {"": c}


@pytest.mark.slow
@pytest.mark.parametrize("name", NETS)
def test_every_command_takes_the_net(name, trees, tmp_path, capsys):
    dataset = name.split("-")[0]
    root = trees[dataset]
    run = tmp_path / "run"
    # train, by the net's name alone: the modality / task come from the net
    data = f"{'context' if dataset == 'pascalcontext' else dataset}:{root}"
    argv = ["train", "--model", name, "--width", WIDTH, "--data", data,
            "--steps", "1", "--batch-size", "1", "--recipe", "modern", "--out", str(run),
            "--eval-every", "1", "--log-every", "1"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    ckpt = run / "last.pt"
    config = json.loads((run / "config.json").read_text())
    assert config["data_options"] == DATA_OPTIONS.get(name, {})
    model, saved = fcnseg.load_model(ckpt)
    assert saved["model_name"] == name and _heads(model) == _heads(fcnseg.build_reference(
        name, width=0.0625))  # fmt: skip

    # predict: a label PNG per output, classes in range
    out = tmp_path / "pred"
    argv = ["predict", *_predict_args(name, root), "--model", str(ckpt), "-o", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    labels = sorted(p for p in out.rglob("*.png") if "overlay" not in p.name)
    per_output = {"": "", "sem": "_sem", "geo": "_geo"}
    for head, classes in _heads(model).items():
        mine = [p for p in labels if p.stem.endswith(per_output[head]) or not head]
        assert len(mine) >= 1, (head, labels)
        for p in mine:
            assert read_mask(p).max() < classes
    capsys.readouterr()

    # export: ONNX with named inputs and outputs, checked at three sizes
    onnx_file = tmp_path / "net.onnx"
    argv = ["export", str(ckpt), "--format", "onnx", "-o", str(onnx_file),
            "--sizes", "40x44,2x37x51,61x33"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    graph = onnx.load(str(onnx_file)).graph
    inputs = {i.name for i in graph.input}
    outputs = [o.name for o in graph.output]
    want_in = {"nyud-fcn32s-color-hha": {"color", "hha"}}.get(name, {"image"})
    assert want_in <= inputs
    assert outputs == (["sem", "geo"] if dataset == "siftflow" else ["logits"])
    capsys.readouterr()

    # bench: eager against FastFCN on the net's own input kind
    argv = ["bench", "--model", name, "--size", "64", "--width", WIDTH, "--repeats", "1"]
    assert main(argv) == 0, capsys.readouterr().err
    assert name in capsys.readouterr().out

    # eval on the val split, with the dataset's class names
    assert main(["eval", str(ckpt), "--split", "val"]) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "mean IU" in text or "mean_iu" in text
    for cls in CLASS_NAMES[dataset]:
        assert f"| {cls} |" in text, cls

    # compare: the refinement figure from the checkpoint
    figure = tmp_path / "compare.png"
    argv = ["compare", str(ckpt), "--split", "val", "--n", "1", "-o", str(figure)]
    assert main(argv) == 0, capsys.readouterr().err
    assert Image.open(figure).size[0] > 0


@pytest.mark.slow
def test_build_model_builds_every_release_net_at_full_size():
    """`fcnseg.build_model(NAME)`: the release's classes, inputs and preprocessing, untrained."""
    for name in NETS:
        model = fcnseg.build_model(name)
        spec = model.reference
        assert model.name == name and _heads(model) == (
            spec.classes if isinstance(spec.classes, dict) else {"": spec.classes}
        )
        pre = model.preprocessing
        assert (list(pre) if isinstance(pre, dict) else ["one"]) == (
            list(spec.inputs) if len(spec.inputs) > 1 else ["one"]
        )
        fc6 = [v for k, v in model.state_dict().items() if k.startswith("fc6") and v.dim() == 4]
        assert fc6 and all(w.shape[0] == 4096 for w in fc6), name  # full size, every stream
        del model  # its forward, at any size: test_models.py at small widths


def test_release_names_and_fcnseg_names_differ_only_as_stated():
    """voc-fcn8s and fcn8s_vgg16: the same layers, names and shapes; the differences are the
    ones RELEASE_CONVENTIONS states (preprocessing, frozen 2x upsamplers), and no other."""
    from fcnseg.models.registry import RELEASE_CONVENTIONS, SAME_LAYERS

    assert set(RELEASE_CONVENTIONS) == {"preprocessing", "2x upsamplers", "classes"}
    pairs = {k: v for k, v in SAME_LAYERS.items() if k in NETS}
    assert set(pairs) == {"voc-fcn32s", "voc-fcn16s", "voc-fcn8s", "voc-fcn8s-atonce"}
    for release, ours in pairs.items():
        a = fcnseg.build_model(release, width=0.0625)
        b = fcnseg.build_model(ours, width=0.0625)
        sa, sb = a.state_dict(), b.state_dict()
        assert [(k, v.shape) for k, v in sa.items()] == [(k, v.shape) for k, v in sb.items()]
        b.load_state_dict(sa)  # each loads the other's state dict
        frozen = {n for n, p in a.named_parameters() if not p.requires_grad}
        frozen_here = {n for n, p in b.named_parameters() if not p.requires_grad}
        assert all(n.startswith("upscore") for n in frozen)  # the 2x ones learn in fcnseg's
        assert frozen_here <= frozen and (frozen_here < frozen) == bool(a.head.skips)
        assert a.preprocessing == fcnseg.weights.CAFFE_BGR
        assert b.preprocessing == fcnseg.weights.IMAGENET_RGB
        x = torch.randn(1, 3, 37, 41)
        with torch.no_grad():
            assert torch.equal(a.eval()(x), b.eval()(x))  # same weights: the same function


def test_list_models_has_every_name_once_and_stages_follow_the_release():
    from fcnseg.models.registry import stage_names

    names = fcnseg.list_models()
    assert len(names) == len(set(names)) and set(NETS) <= set(names)
    assert fcnseg.list_models("release") == NETS
    assert stage_names("voc-fcn8s", ["32s", "16s", "8s"]) == ["voc-fcn32s", "voc-fcn16s",
                                                                "voc-fcn8s"]  # fmt: skip
    assert stage_names("pascalcontext-fcn16s", ["32s", "16s"]) == [
        "pascalcontext-fcn32s", "pascalcontext-fcn16s"]  # fmt: skip
    assert stage_names("fcn8s_vgg16", ["32s", "8s"]) == ["fcn32s_vgg16", "fcn8s_vgg16"]
    for bad in ("nyud-fcn32s-hha", "voc-fcn8s-atonce"):
        with pytest.raises(ValueError, match="stage"):
            stage_names(bad, ["32s", "16s"])


def test_models_command_lists_every_net_in_one_table(capsys):
    assert main(["models"]) == 0
    table = capsys.readouterr().out.split("\n\n")[0]  # the models, before the weights
    rows = [line.split()[0] for line in table.splitlines()[1:]]
    for name in fcnseg.list_models():
        assert rows.count(name) == 1, name
    assert len(rows) == len(fcnseg.list_models())


def test_hub_reaches_a_release_net_by_either_spelling():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "hubconf.py"
    spec = importlib.util.spec_from_file_location("hubconf_every_net", path)
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    a = getattr(hub, "siftflow-fcn16s")(width=0.0625)
    b = hub.siftflow_fcn16s(width=0.0625)
    assert a.num_classes == b.num_classes == {"sem": 33, "geo": 3}
    assert list(a.state_dict()) == list(b.state_dict())
