"""Every release net through train, eval and compare by its name, on fixture trees of its data:
the modality and task come from the net, --stages follows the release's chains, the AlexNet
net's solvers, class names in eval's tables."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_context import _context
from test_nyud import _nyud
from test_siftflow import _siftflow
from test_voc import _tree

import fcnseg
from fcnseg.checkpoint import load_checkpoint
from fcnseg.cli import main
from fcnseg.engine import TrainConfig, train
from fcnseg.recipes import get_recipe

TINY = ["--width", "0.0625", "--batch-size", "2", "--log-every", "1"]
# what each data set's eval table must name (a class of each head)
NAMES = {"voc": ["background"], "nyud": ["wall", "floor"],
         "pascalcontext": ["background", "aeroplane"],
         "siftflow": ["awning", "sky", "horizontal"]}  # fmt: skip
# the data option each NYUDv2 net reads (its inputs), as the release's data layers
MODALITY = {"nyud-fcn32s-color": "color", "nyud-fcn32s-hha": "hha",
            "nyud-fcn32s-color-d": "color-depth", "nyud-fcn32s-color-hha": "color-hha"}  # fmt: skip


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, list[str]]:
    """--data and split options per data set (the names' prefixes)."""
    tmp = tmp_path_factory.mktemp("trees")
    voc = _tree(tmp / "voc", ["a", "b"])
    _tree(voc, ["a"], split="val")
    nyud = _nyud(tmp, ["1", "2"], split_file="train.txt")
    (nyud / "val.txt").write_text("1\n")
    context = _context(tmp, ["2008_000002", "2008_000003"])
    (context / "ImageSets" / "Main" / "train.txt").write_text("2008_000002\n2008_000003\n")
    sift = _siftflow(tmp, ["a", "b"], split_file="trainval.txt")
    (sift / "test.txt").write_text("a\n")
    test = ["--train-split", "trainval", "--val-split", "test"]
    return {"voc": ["--data", f"voc:{voc}"], "nyud": ["--data", f"nyud:{nyud}"],
            "pascalcontext": ["--data", f"context:{context}"],
            "siftflow": ["--data", f"siftflow:{sift}", *test]}  # fmt: skip


def _data(trees, name: str) -> list[str]:
    return trees[name.split("-")[0]]


def _split(name: str) -> list[str]:
    return ["--split", "test"] if name.startswith("siftflow") else []


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


# every release net trains, evaluates and compares by its name: tests/test_every_net.py


def test_the_modality_comes_from_the_net_and_a_contradiction_is_refused(trees, runs, capsys):
    nyud = _data(trees, "nyud")
    args = ["train", "--model", "nyud-fcn32s-hha", *TINY, *nyud, "--steps", "1"]
    assert main([*args, "--data-option", "modality=color", "--out", str(runs / "x")]) == 1
    err = capsys.readouterr().err
    assert "modality=color contradicts nyud-fcn32s-hha" in err and "drop the option" in err
    assert "--model nyud-fcn32s-color" in err and not (runs / "x").exists()
    # the net's own modality given: the same as none
    config = TrainConfig(model="nyud-fcn32s-color-hha", model_options={"width": 0.0625},
                         data=nyud[1], data_options={"modality": "color-depth"},
                         out=str(runs / "y"), steps=1, batch_size=1)  # fmt: skip
    with pytest.raises(ValueError, match="use --model nyud-fcn32s-color-d"):
        train(config, progress=False)
    # eval: the checkpoint's net decides; a contradicting option is refused the same way
    ckpt = str(runs / "nyud-fcn32s-hha" / "last.pt")
    if not Path(ckpt).exists():
        assert main([*args, "--out", str(runs / "nyud-fcn32s-hha")]) == 0
    assert main(["eval", ckpt, *nyud, "--data-option", "modality=color"]) == 1
    assert "contradicts nyud-fcn32s-hha" in capsys.readouterr().err
    # a two-input net on data of colour photos only
    assert main(["train", "--model", "nyud-fcn32s-color-d", *TINY, *_data(trees, "voc"),
                 "--out", str(runs / "z")]) == 1  # fmt: skip
    assert "gives colour images only" in capsys.readouterr().err


def test_one_head_of_a_two_head_net_trains_and_scores_alone(trees, runs, capsys):
    out = runs / "sem-only"
    args = ["train", "--model", "siftflow-fcn16s", *TINY, *_data(trees, "siftflow"),
            "--data-option", "task=sem", "--steps", "2", "--recipe", "modern",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    state = load_checkpoint(out / "last.pt")["model"]
    assert state["score_fr_sem.weight"].abs().sum() > 0  # the semantic head learned
    for key in ("score_fr_geo.weight", "score_pool4_geo.weight"):  # the other: as built (zero)
        assert not state[key].any(), key
    capsys.readouterr()
    assert main(["eval", str(out / "last.pt"), "--split", "test"]) == 0
    table = capsys.readouterr().out
    assert "siftflow-fcn16s (sem)" in table and "(geo)" not in table and "| awning |" in table
    # the geometric head of the same net, scored alone
    assert main(["eval", str(out / "last.pt"), "--split", "test",
                 "--data-option", "task=geo"]) == 0  # fmt: skip
    assert "| horizontal |" in capsys.readouterr().out
    assert main(["compare", str(out / "last.pt"), "--split", "test", "-o",
                 str(out / "c.png")]) == 0  # fmt: skip
    assert main([*args[:-2], "--data-option", "task=depth", "--out", str(runs / "bad")]) == 1
    assert "not a head of siftflow-fcn16s" in capsys.readouterr().err


@pytest.mark.parametrize("model", [["fcn8s_vgg16"], ["voc-fcn8s", "--num-classes", "3"]])
def test_a_one_head_net_trains_on_the_geometric_classes(trees, runs, capsys, model):
    out = runs / f"geo-{model[0]}"
    args = ["train", "--model", *model, *TINY, *_data(trees, "siftflow"), "--steps", "1",
            "--recipe", "modern"]  # fmt: skip
    assert main([*args, "--data-option", "task=geo", "--out", str(out)]) == 0, \
        capsys.readouterr().err  # fmt: skip
    assert load_checkpoint(out / "last.pt")["num_classes"] == 3
    capsys.readouterr()
    assert main(["eval", str(out / "last.pt"), "--split", "test"]) == 0
    table = capsys.readouterr().out
    assert "| sky |" in table and "| vertical |" in table
    # no task: SIFT Flow's default (both) needs two heads
    assert main([*args, "--out", str(runs / "both")]) == 1
    err = capsys.readouterr().err
    assert "task=sem or task=geo" in err and "siftflow-fcn32s" in err


@pytest.mark.parametrize("name", ["voc-fcn8s", "siftflow-fcn16s"])
def test_stages_from_a_release_name_follow_its_chain(trees, runs, capsys, name):
    out = runs / f"stages-{name}"
    args = ["train", "--model", name, *TINY, *_data(trees, name), "--stages", "32s,16s,8s",
            "--stage-steps", "1,1,1", "--recipe", "modern", "--out", str(out)]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    prefix = name.split("-")[0]
    chain = [f"{prefix}-fcn{s}" for s in ("32s", "16s", "8s")]
    previous = None
    for net in chain:
        ckpt = load_checkpoint(out / net / "last.pt")
        assert ckpt["model_name"] == net
        assert ckpt["config"]["init_from"] == previous  # each stage starts from the last
        previous = str(out / net / "last.pt")


@pytest.mark.parametrize("name", ["nyud-fcn32s-color", "voc-fcn-alexnet", "voc-fcn8s-atonce"])
def test_stages_from_a_net_without_a_chain_are_refused(trees, runs, capsys, name):
    out = runs / f"nostages-{name}"
    args = ["train", "--model", name, *TINY, *_data(trees, name), "--stages", "32s,16s,8s",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"trained {name} in one stage" in err and "drop --stages" in err
    assert not out.exists()


def test_voc_fcn_alexnet_gets_its_solvers():
    assert get_recipe("cvpr").lr_for("voc-fcn-alexnet") == 1e-3  # the paper's AlexNet rate
    heavy = get_recipe("heavy").for_model("voc-fcn-alexnet")
    assert heavy.name == "heavy_alexnet" and heavy.lr_for("voc-fcn-alexnet") == 1e-4
    assert (heavy.momentum, heavy.loss, heavy.accumulate) == (0.9, "mean", 20)
    assert get_recipe("heavy").lr_for("voc-fcn-alexnet") == 1e-4
    assert get_recipe("heavy").for_model("voc-fcn8s").name == "heavy"  # the VGG16 nets: heavy


def test_heavy_trains_voc_fcn_alexnet_with_the_release_solver(trees, runs, capsys):
    out = runs / "alexnet-heavy"
    args = ["train", "--model", "voc-fcn-alexnet", "--width", "0.0625", *_data(trees, "voc"),
            "--recipe", "heavy", "--steps", "1", "--batch-size", "2", "--accumulate", "2",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert "release's own solver, recipe 'heavy_alexnet'" in capsys.readouterr().out
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["config"]["lr"] == 1e-4 and ckpt["config"]["solver"] == "heavy_alexnet"
    group = ckpt["optimizer"]["param_groups"][0]
    assert group["momentum"] == 0.9 and group["lr"] == 1e-4
    # --fast trains CaffeNet (its LRN and grouped convs) to the same weights, up to rounding
    assert main([*args[:-1], str(runs / "alexnet-fast"), "--fast"]) == 0, capsys.readouterr().err
    fast = load_checkpoint(runs / "alexnet-fast" / "last.pt")["model"]
    for k, v in ckpt["model"].items():
        torch.testing.assert_close(fast[k], v, rtol=1e-4, atol=1e-6, msg=k)


def test_data_help_lists_every_dataset(capsys):
    from fcnseg.data.build import _RELEASE_SETS, _SYNTHETIC

    kinds = [*_SYNTHETIC, *(f"{k}:ROOT" for k in ("voc", "sbd", "folder", *_RELEASE_SETS))]
    for command in ("train", "eval", "compare"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for kind in kinds:
            assert kind in text, (command, kind)


def test_eval_takes_net_for_a_release_weights_file(tmp_path, trees, capsys):
    net = fcnseg.build_model("nyud-fcn32s-color", width=0.0625)
    torch.save(net.state_dict(), tmp_path / "w.pth")  # not a full-width file: refused by name
    assert main(["eval", str(tmp_path / "w.pth"), "--net", "nyud-fcn32s-hha",
                 *_data(trees, "nyud")]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "nyud-fcn32s-hha" in err and "unrecognized arguments" not in err
