"""Training: optimizer groups as the paper says, exact resume, divergence, stages, processes."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fcnseg
from fcnseg.checkpoint import load_checkpoint
from fcnseg.engine import (
    TrainConfig,
    TrainingDiverged,
    make_optimizer,
    step_indices,
    train,
    train_stages,
)
from fcnseg.recipes import RECIPES, get_recipe

# runs compared bit for bit: the thread count pinned (conftest.pinned_threads)
pytestmark = pytest.mark.usefixtures("pinned_threads")

# A tiny run: 8x-thin VGG16 FCN-8s ("same" layout) on 48x48 digit scenes, a few steps.
TINY = dict(model="fcn8s_vgg16", model_options={"width": 0.0625, "layout": "same"},
            recipe="modern", data="digits", batch_size=4,
            data_options={"n_train": 24, "n_val": 8, "size": 48, "scale": (1.0, 1.5)},
            ckpt_every=2, log_every=1)  # fmt: skip


def tiny(tmp_path: Path, name: str = "run", **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "out": str(tmp_path / name), **kw})


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


# ------------------------------------------------------------------ recipes as the paper says


def test_cvpr_recipe_groups_biases_at_twice_the_lr_without_decay():
    model = fcnseg.build_model("fcn8s_vgg16", width=0.0625)
    recipe = get_recipe("cvpr")
    lr = recipe.lr_for("fcn8s_vgg16")
    assert lr == 1e-4 and recipe.lr_for("fcn32s_alexnet") == 1e-3
    assert recipe.lr_for("fcn32s_googlenet") == 5e-5
    opt = make_optimizer(model, recipe, lr)
    w, b = opt.param_groups
    assert (w["lr"], w["weight_decay"], b["lr"], b["weight_decay"]) == (1e-4, 5e-4, 2e-4, 0.0)
    assert opt.defaults["momentum"] == 0.9
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("bias") for p in b["params"])
    assert all(names[id(p)].endswith("weight") for p in w["params"])
    # the final upsampling stays bilinear; the 2x ones learn (the paper's text)
    assert not model.upscore8.weight.requires_grad
    assert model.upscore2.weight.requires_grad and model.upscore_pool4.weight.requires_grad


def test_heavy_recipe_is_the_reference_release():
    heavy = RECIPES["heavy"]
    assert (heavy.momentum, heavy.batch_size, heavy.loss) == (0.99, 1, "sum")
    lrs = [heavy.lr_for(f"fcn{v}_vgg16") for v in ("32s", "16s", "8s", "8s_atonce")]
    assert lrs == [1e-10, 1e-12, 1e-14, 1e-10]
    model = fcnseg.build_model("fcn8s_vgg16", width=0.0625)
    make_optimizer(model, heavy, 1e-14)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "upscore" in n)
    assert RECIPES["modern"].ours and not RECIPES["cvpr"].ours


def test_data_order_is_a_function_of_seed_and_step():
    a = [step_indices(s, 10, 4, seed=3) for s in range(4)]
    assert a == [step_indices(s, 10, 4, seed=3) for s in range(4)]
    assert sorted(a[0] + a[1]) == sorted(set(a[0] + a[1]))  # no repeat within an epoch
    assert a[:2] != [step_indices(s, 10, 4, seed=4) for s in range(2)]
    assert a[2] != a[0]  # epoch 2 is reshuffled


@pytest.mark.parametrize(("field", "value"), [("lr", -1.0), ("batch_size", 0), ("steps", 0),
                                              ("lr", math.nan), ("amp", "fp8")])  # fmt: skip
def test_out_of_range_settings_fail_before_any_work(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        train(tiny(tmp_path, **{field: value}), progress=False)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ a run: files, resume


def test_a_run_writes_checkpoints_logs_and_plots(tmp_path):
    res = train(tiny(tmp_path, steps=4, eval_every=2), progress=False)
    run = tmp_path / "run"
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["step"] == 4 and ckpt["model_name"] == "fcn8s_vgg16"
    assert ckpt["class_names"][:2] == ["background", "0"] and ckpt["num_classes"] == 11
    assert set(ckpt) >= {"optimizer", "config", "rng", "model_options"}
    assert json.loads((run / "config.json").read_text())["lr"] == 1e-3
    rows = (run / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,loss") and len(rows) == 1 + 4
    assert 0 <= res["metrics"]["mean_iu"] <= 1
    assert (run / "curves.png").stat().st_size > 1000 and (run / "best.pt").exists()
    model, _ = fcnseg.checkpoint.load_model(run / "last.pt")
    assert model.num_classes == 11 and model.options == TINY["model_options"]


def test_resume_continues_the_same_run_exactly(tmp_path):
    """Stopped at step 3 and resumed to 6 == 6 straight (same data, same dropout masks)."""
    full = train(tiny(tmp_path, "full", steps=6, recipe="cvpr", lr=0.05), progress=False)
    cut = tiny(tmp_path, "cut", steps=6, recipe="cvpr", lr=0.05)
    train(dataclasses.replace(cut, steps=3), progress=False)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 3
    train(cut, resume=True, progress=False)
    assert_same_weights(weights(full["checkpoint"]), weights(tmp_path / "cut" / "last.pt"))
    logged = (tmp_path / "cut" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in logged[1:]] == [str(s) for s in range(1, 7)]


def test_a_run_is_not_overwritten_and_resume_must_match(tmp_path):
    train(tiny(tmp_path, steps=2), progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny(tmp_path, steps=2), progress=False)
    with pytest.raises(ValueError, match="seed"):
        train(tiny(tmp_path, steps=4, seed=1), resume=True, progress=False)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny(tmp_path, steps=50, recipe="cvpr", lr=10.0, ckpt_every=1)  # the most allowed
    with pytest.raises(TrainingDiverged, match=r"at step (\d+)") as e:
        train(cfg, progress=False)
    step = int(str(e.value).split("at step ")[1].split()[0])
    assert "Lower --lr" in str(e.value)
    kept = load_checkpoint(tmp_path / "run" / "last.pt")  # loads: not half-written
    assert kept["step"] == step - 1
    assert all(torch.isfinite(v).all() for v in kept["model"].values())


def test_stages_start_from_the_previous_stage_and_resume_skips_finished_ones(tmp_path):
    cfg = tiny(tmp_path)
    stages = [("fcn32s_vgg16", 2), ("fcn16s_vgg16", 2), ("fcn8s_vgg16", 2)]
    res = train_stages(cfg, stages, progress=False)
    assert [r["model"] for r in res] == [s for s, _ in stages]
    c16 = load_checkpoint(tmp_path / "run" / "fcn16s_vgg16" / "last.pt")
    assert c16["config"]["init_from"].endswith("fcn32s_vgg16/last.pt")
    again = train_stages(cfg, stages, progress=False)
    assert all(r["seconds"] == 0.0 for r in again)  # nothing retrained


# ------------------------------------------------------------------ processes


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "fcnseg", *args], env=env, **kw)


def _tiny_cli(out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--model", "fcn8s_vgg16", "--width", "0.0625", "--layout", "same",
            "--recipe", "cvpr", "--lr", "0.05", "--batch-size", "4", "--steps", str(steps),
            "--data-option", "n_train=24", "--data-option", "n_val=8",
            "--data-option", "size=48", "--data-option", "scale=1.0,1.5",
            "--ckpt-every", "1", "--out", str(out), *extra]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("opts", [(), ("--workers", "2", "--crop", "40")],
                         ids=["in-process data", "2 data workers, random crops"])  # fmt: skip
def test_sigkill_then_resume_reaches_the_uninterrupted_weights(tmp_path, opts):
    steps = 12
    assert _cli(*_tiny_cli(tmp_path / "full", steps, *opts)).wait(timeout=300) == 0
    killed = tmp_path / "killed"
    proc = _cli(*_tiny_cli(killed, steps, *opts), stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline:  # kill -9 once a few steps are saved, mid-run
        last = killed / "last.pt"
        if last.exists() and load_checkpoint(last)["step"] >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = load_checkpoint(killed / "last.pt")["step"]
    assert at_kill < steps, "the run finished before it was killed: test proves nothing"
    assert _cli(*_tiny_cli(killed, steps, *opts, "--resume")).wait(timeout=300) == 0
    assert_same_weights(weights(tmp_path / "full" / "last.pt"), weights(killed / "last.pt"))


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_before_exiting(tmp_path):
    proc = _cli(*_tiny_cli(tmp_path / "run", 400, "--ckpt-every", "1000"),
                stderr=subprocess.PIPE, text=True)  # fmt: skip
    log = tmp_path / "run" / "log.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().split()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    step = load_checkpoint(tmp_path / "run" / "last.pt")["step"]
    assert 2 <= step < 400 and f"interrupted at step {step}" in err and "--resume" in err


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    """DDP over gloo, 2 ranks x 2 images == 1 process x 4 images, step for step."""
    # dropout masks differ per rank, so compare without dropout
    args = [*_tiny_cli(tmp_path / "one", 3), "--model-option", "dropout=0"]
    assert _cli(*args).wait(timeout=300) == 0
    two = [*_tiny_cli(tmp_path / "two", 3), "--model-option", "dropout=0", "--nproc", "2"]
    assert _cli(*two).wait(timeout=300) == 0
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())
    assert cfg["world_size"] == 2
    assert_same_weights(weights(tmp_path / "one" / "last.pt"),
                        weights(tmp_path / "two" / "last.pt"), atol=1e-5)  # fmt: skip


@pytest.mark.slow
def test_two_processes_resume_to_the_same_weights(tmp_path):
    """--nproc 2 stopped at step 2 and resumed to 4 == --nproc 2 run straight to 4."""
    opts = ("--model-option", "dropout=0", "--nproc", "2")
    assert _cli(*_tiny_cli(tmp_path / "straight", 4), *opts).wait(timeout=300) == 0
    assert _cli(*_tiny_cli(tmp_path / "cut", 2), *opts).wait(timeout=300) == 0
    assert _cli(*_tiny_cli(tmp_path / "cut", 4), *opts, "--resume").wait(timeout=300) == 0
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 4
    assert_same_weights(weights(tmp_path / "straight" / "last.pt"),
                        weights(tmp_path / "cut" / "last.pt"), atol=1e-6)  # fmt: skip
