"""Training and scoring the release's nets on their data: several inputs, two heads, the
paper's scoring rules (SIFT Flow's exclusions), the release's initialisations and rates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_nyud import _nyud
from test_siftflow import _siftflow

import fcnseg
from fcnseg.checkpoint import load_model
from fcnseg.cli import main
from fcnseg.engine import TrainConfig, _pixel_loss, train
from fcnseg.metrics import ConfusionMatrix
from fcnseg.models.backbones import vgg16_classifier
from fcnseg.recipes import get_recipe
from fcnseg.weights import NYUD_BGR, NYUD_LOG_DEPTH, prepare

TINY = {"width": 0.0625}


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trees")
    sift = _siftflow(tmp, ["a", "b", "highway_bost181"], split_file="trainval.txt")
    (sift / "test.txt").write_text("a\nhighway_bost181\n")  # one unannotated image in test
    nyud = _nyud(tmp, ["1", "2", "3"], split_file="train.txt")
    (nyud / "val.txt").write_text("1\n2\n")
    return {"siftflow": sift, "nyud": nyud}


def _train(tmp_path: Path, model: str, data: str, steps: int = 2, **kw) -> dict:
    config = TrainConfig(model=model, model_options=dict(TINY), data=data, recipe="modern",
                         steps=steps, batch_size=2, out=str(tmp_path / model), **kw)  # fmt: skip
    return train(config, progress=False)


def test_two_heads_train_with_summed_losses_and_score_per_head(trees, tmp_path, capsys):
    res = _train(tmp_path, "siftflow-fcn32s", f"siftflow:{trees['siftflow']}",
                 train_split="trainval", val_split="test")  # fmt: skip
    m = res["metrics"]
    assert set(m["heads"]) == {"sem", "geo"} and 0 <= m["geo_pixel_acc"] <= 1
    assert np.isnan(m["iu"][[8, 10, 15]]).all()  # cow, desert, moon: not scored
    model, _ = load_model(res["checkpoint"])  # a release net rebuilt from its checkpoint
    assert model.name == "siftflow-fcn32s" and model.num_classes == {"sem": 33, "geo": 3}
    assert main(["eval", str(res["checkpoint"]), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "siftflow-fcn32s (sem)" in out and "siftflow-fcn32s (geo)" in out


def test_the_loss_of_two_heads_is_the_sum_of_each(trees):
    logits = {"sem": torch.randn(2, 33, 4, 5), "geo": torch.randn(2, 3, 4, 5)}
    target = {"sem": torch.randint(0, 33, (2, 4, 5)), "geo": torch.randint(0, 3, (2, 4, 5))}
    target["geo"][0, 0, 0] = 255
    both = _pixel_loss(logits, target, {"sem": 40.0, "geo": 39.0})
    alone = _pixel_loss(logits["sem"], target["sem"], 40.0) + _pixel_loss(
        logits["geo"], target["geo"], 39.0)  # fmt: skip
    torch.testing.assert_close(both, alone)


def test_scoring_leaves_out_the_unannotated_images(trees):
    from fcnseg.data.build import open_dataset
    from fcnseg.evaluate import scored_subset

    test = open_dataset(f"siftflow:{trees['siftflow']}", "test")
    assert len(test) == 2 and len(scored_subset(test)) == 1


def test_excluded_classes_leave_the_means():
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 1, 2, 3, 3]), torch.tensor([0, 1, 2, 2, 3]))
    full, part = cm.compute(), cm.compute(exclude=[3])
    assert part["mean_iu"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert full["mean_iu"] == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)
    assert part["pixel_acc"] == full["pixel_acc"]


@pytest.mark.parametrize("net, modality", [("nyud-fcn32s-color-hha", "color-hha"),
                                           ("nyud-fcn32s-color-d", "color-depth"),
                                           ("nyud-fcn32s-hha", "hha")])  # fmt: skip
def test_several_inputs_train_end_to_end(trees, tmp_path, net, modality):
    res = _train(tmp_path, net, f"nyud:{trees['nyud']}", data_options={"modality": modality})
    first = fcnseg.build_reference(net, width=0.0625).state_dict()
    last = load_model(res["checkpoint"])[0].state_dict()
    moved = [k for k in first if k.startswith("conv1") and not torch.equal(first[k], last[k])]
    assert moved, "the first layers did not learn"
    assert 0 <= res["metrics"]["mean_iu"] <= 1


def test_a_net_on_the_wrong_data_is_refused(trees, tmp_path):
    with pytest.raises(ValueError, match=r"scores 40 classes but data .* has 33"):
        _train(tmp_path, "nyud-fcn32s-color", f"siftflow:{trees['siftflow']}",
               data_options={"task": "sem"}, train_split="trainval", val_split="test")  # fmt: skip


def test_early_fusion_starts_from_vgg16_with_the_mean_filter_for_depth(tmp_path):
    vgg = vgg16_classifier(width=0.0625)
    torch.save(vgg.state_dict(), tmp_path / "vgg16.pth")
    model = fcnseg.build_model("nyud-fcn32s-color-d", backbone_weights=tmp_path / "vgg16.pth",
                               **TINY)  # fmt: skip
    w = model.state_dict()["conv1_1_bgrd.weight"]
    conv1 = vgg.state_dict()["features.0.weight"]
    torch.testing.assert_close(w[:, :3], conv1)
    torch.testing.assert_close(w[:, 3:], conv1.mean(1, keepdim=True))
    torch.testing.assert_close(model.state_dict()["fc7.weight"][:, :, 0, 0],
                               vgg.state_dict()["classifier.3.weight"])  # fmt: skip


def test_late_fusion_starts_from_two_trained_single_input_nets(tmp_path):
    from conftest import randomize_

    paths = {}
    for stream in ("color", "hha"):
        net = randomize_(fcnseg.build_model(f"nyud-fcn32s-{stream}", **TINY))
        paths[stream] = tmp_path / f"{stream}.pth"
        torch.save(net.state_dict(), paths[stream])
    fused = fcnseg.build_model("nyud-fcn32s-color-hha", init_from=paths, **TINY).state_dict()
    for stream, path in paths.items():
        src = torch.load(path)
        for key in ("conv1_1.weight", "fc7.bias", "score_fr.weight"):
            layer, part = key.rsplit(".", 1)
            torch.testing.assert_close(fused[f"{layer}{stream}.{part}"], src[key])


def test_the_release_rates_per_net():
    heavy = get_recipe("heavy")
    assert heavy.lr_for("nyud-fcn32s-color-hha") == 1e-12
    assert heavy.lr_for("pascalcontext-fcn8s") == 1e-14
    assert heavy.lr_for("siftflow-fcn16s") == 1e-12
    assert get_recipe("modern").lr_for("siftflow-fcn16s") == 1e-3


def test_early_fusion_batches_are_prepared_per_channel_group():
    x = torch.cat([torch.full((1, 3, 2, 2), 100.0), torch.tensor([[[[0.0, 2554.0]] * 2]])], 1)
    y = prepare({"color": NYUD_BGR, "depth": NYUD_LOG_DEPTH}, x)
    torch.testing.assert_close(y[:, :3], NYUD_BGR.batch(x[:, :3]))
    assert y[0, 3, 0, 0] == 0  # no depth (a hole or padding): finite, the mean
    assert y[0, 3, 0, 1] == pytest.approx(np.log(2554.0) - 7.844, abs=1e-5)


def test_a_release_weights_file_names_its_net_or_says_which_could_be():
    from fcnseg.models.reference import nets_fitting

    def meta_state(name):
        with torch.device("meta"):
            return fcnseg.build_reference(name).state_dict()

    assert nets_fitting(meta_state("siftflow-fcn16s"), from_caffe=False) == ["siftflow-fcn16s"]
    # same layers, other data: a .pth cannot tell them apart (fcnseg asks for --net)
    assert nets_fitting(meta_state("nyud-fcn32s-color"), from_caffe=False) == [
        "nyud-fcn32s-color", "nyud-fcn32s-hha"]  # fmt: skip
    assert nets_fitting(meta_state("voc-fcn8s"), from_caffe=False) == [
        "voc-fcn8s", "voc-fcn8s-atonce"]  # fmt: skip
