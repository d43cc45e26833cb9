"""train --tensorboard: the events read back with tensorboard's EventAccumulator match log.csv
(tags, steps, values); a killed and resumed run has no duplicated step; staged runs write one
stream per stage; two-head nets a stream per head's metrics; without tensorboard installed,
one line saying what to install, before any work."""

from __future__ import annotations

import csv
import dataclasses
import glob
import sys

import pytest

pytest.importorskip(
    "tensorboard", reason="the tb extra (pip install 'fcnseg[tb]') is not installed"
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

import fcnseg.engine as engine
from fcnseg.cli import main
from fcnseg.engine import TrainConfig, train, train_stages

DIGITS = {"n_train": 8, "n_val": 4, "size": 48, "scale": (1.2, 1.5)}


def _config(out, **kw) -> TrainConfig:
    base = dict(model="fcn8s_vgg16", model_options={"width": 0.0625, "layout": "same"},
                data="digits",
                data_options=DIGITS, batch_size=2, steps=6, eval_every=3, log_every=1,
                ckpt_every=3, out=str(out), tensorboard=True, recipe="modern")  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _events(folder) -> EventAccumulator:
    ea = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def _log(run) -> list[dict]:
    with open(run / "log.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tb") / "run"
    train(_config(out), progress=False)
    return out


def test_events_match_log_csv(run):
    ea, rows = _events(run / "tb"), _log(run)
    tags = ea.Tags()
    for tag in ("train/loss", "train/lr", "train/images_per_s", "train/data_wait_s",
                "val/pixel_acc", "val/mean_acc", "val/mean_iu", "val/fw_iu"):  # fmt: skip
        assert tag in tags["scalars"], tag
    loss = ea.Scalars("train/loss")
    assert [e.step for e in loss] == [int(r["step"]) for r in rows]
    for e, r in zip(loss, rows, strict=True):
        assert e.value == pytest.approx(float(r["loss"]), rel=1e-5)
        assert ea.Scalars("train/lr")[loss.index(e)].value == pytest.approx(
            float(r["lr"]), rel=1e-2
        )
    val = [r for r in rows if r["mean_iu"]]
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
        got = ea.Scalars(f"val/{key}")
        assert [e.step for e in got] == [int(r["step"]) for r in val] == [3, 6]
        assert [e.value for e in got] == pytest.approx([float(r[key]) for r in val], abs=1e-5)
    per_class = [t for t in tags["scalars"] if t.startswith("val_iu/")]
    assert "val_iu/background" in per_class and len(per_class) >= 2
    assert [e.step for e in ea.Images("val/predictions")] == [3, 6]
    assert [e.step for e in ea.Images("val/confusion")] == [3, 6]
    image = ea.Images("val/predictions")[0]
    # 4 images (n_val) one under another, each input | prediction | truth, 160 px panels
    assert (image.width, image.height) == (3 * 160 + 2 * 4, 4 * 160 + 3 * 4)
    assert "config/text_summary" in tags["tensors"]
    assert "hparams" in ea.PluginTagToContent("hparams") or ea.PluginTagToContent("hparams")


def _raw_steps(folder, tag: str) -> list[int]:
    """Every step written for `tag`, across the folder's event files, purged or not."""
    steps = []
    for path in sorted(glob.glob(str(folder / "events.out.tfevents.*"))):
        for event in EventFileLoader(path).Load():
            for v in event.summary.value:
                if v.tag == tag:
                    steps.append(event.step)
    return steps


def test_killed_and_resumed_run_has_no_duplicated_steps(tmp_path, monkeypatch, run):
    out = tmp_path / "run"
    set_lr = engine._set_lr

    def killed(opt, recipe, step, steps):  # the process dies at step 5, after 4 logged steps
        if step == 4:
            raise RuntimeError("killed")
        return set_lr(opt, recipe, step, steps)

    monkeypatch.setattr(engine, "_set_lr", killed)
    with pytest.raises(RuntimeError, match="killed"):
        train(_config(out), progress=False)
    monkeypatch.setattr(engine, "_set_lr", set_lr)
    train(_config(out), resume=True, progress=False)
    raw = _raw_steps(out / "tb", "train/loss")
    assert raw.count(4) == 2  # the killed run wrote step 4 past its checkpoint at 3
    ea, rows = _events(out / "tb"), _log(out)
    steps = [e.step for e in ea.Scalars("train/loss")]
    assert steps == [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in ea.Scalars("val/mean_iu")] == [3, 6]
    # the resumed run is the uninterrupted one, event for event
    whole = _events(run / "tb")
    assert [e.value for e in ea.Scalars("train/loss")] == pytest.approx(
        [e.value for e in whole.Scalars("train/loss")], rel=1e-4)  # fmt: skip


def test_staged_run_writes_one_stream_per_stage(tmp_path):
    config = _config(tmp_path / "st", steps=2, eval_every=0)
    stages = [("fcn32s_vgg16", 2), ("fcn16s_vgg16", 1)]
    train_stages(config, stages, progress=False)
    for name, steps in stages:
        ea = _events(tmp_path / "st" / "tb" / name)
        assert [e.step for e in ea.Scalars("train/loss")] == list(range(1, steps + 1))
        assert [e.step for e in ea.Scalars("val/mean_iu")] == [steps]


def test_two_head_net_logs_each_head(tmp_path):
    from test_siftflow import _siftflow

    sift = _siftflow(tmp_path, ["a", "b"], split_file="trainval.txt")
    (sift / "test.txt").write_text("a\n")
    out = tmp_path / "sift"
    config = dataclasses.replace(_config(out), model="siftflow-fcn32s",
                                 model_options={"width": 0.0625}, data=f"siftflow:{sift}",
                                 data_options={}, train_split="trainval", val_split="test",
                                 steps=1, eval_every=0, ckpt_every=1)  # fmt: skip
    train(config, progress=False)
    tags = _events(out / "tb").Tags()
    for tag in ("val/sem/mean_iu", "val/geo/pixel_acc", "val/mean_iu"):
        assert tag in tags["scalars"], tag
    assert any(t.startswith("val_iu/geo/") for t in tags["scalars"])
    assert {"val/sem/predictions", "val/geo/predictions", "val/sem/confusion"} <= set(
        tags["images"]
    )


def test_without_tensorboard_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard fails
    out = tmp_path / "run"
    with pytest.raises(ImportError, match=r"pip install 'fcnseg\[tb\]'"):
        train(_config(out), progress=False)
    assert not out.exists()
    args = ["train", "--model", "fcn8s_vgg16", "--width", "0.0625", "--steps", "1",
            "--out", str(out), "--tensorboard"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'fcnseg[tb]'" in err[0]
    assert not out.exists()
