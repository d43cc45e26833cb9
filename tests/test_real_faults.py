"""Real faults, not mocks: a really full disk (a small tmpfs), signals, two processes at once.

What each leaves on disk is checked: never a file under a final name that is not complete, no
temporary file left by a process that could clean up, the lock always released.

The full-disk tests mount a tmpfs, which needs root (CI runs as root); elsewhere they skip.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_
from PIL import Image

import fcnseg
from fcnseg.checkpoint import load_checkpoint, model_state, save_checkpoint
from fcnseg.cli import main
from fcnseg.safety import RunLock, WriteError

SRC = Path(fcnseg.__file__).parents[1]
TRAIN = ["train", "--model", "fcn8s_vgg16", "--width", "0.0625", "--layout", "same",
         "--data", "digits", "--recipe", "modern", "--batch-size", "2",
         "--data-option", "n_train=8", "--data-option", "n_val=2", "--data-option", "size=48",
         "--data-option", "scale=1.0,1.5", "--ckpt-every", "1", "--log-every", "1"]  # fmt: skip


@pytest.fixture
def disk(tmp_path):
    """mount(size) -> a folder on a fresh tmpfs of that many bytes (unmounted afterwards)."""
    mounted = []

    def mount(size: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(where)], capture_output=True, text=True)  # fmt: skip
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path, leave: int) -> None:
    """Fill the file system of `folder` until only about `leave` bytes are free."""
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    size = (folder / "filler").stat().st_size
    os.truncate(folder / "filler", max(size - leave, 0))


def no_partial_files(folder: Path) -> None:
    left = [p.name for p in folder.rglob("*") if p.name.endswith(".part")]
    assert not left, f"temporary files left behind: {left}"


def status_and_text(args, capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert "Traceback" not in text and "internal error" not in text, text
    return code, text


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    model = randomize_(fcnseg.build_model("fcn8s_vgg16", num_classes=5, width=0.0625))
    save_checkpoint(path, model_state(model))
    return path


# ----------------------------------------------------------------------------- a full disk


def disk_full(text: str) -> bool:
    """Refused before writing (not enough free space for what it would write), or caught as the
    disk filled: both say so, name the need and loses nothing."""
    return "the disk is full" in text or "not enough free space" in text


@pytest.mark.parametrize("precheck", [True, False])
def test_checkpoint_on_a_full_disk_torch_raises_runtime_error_and_nothing_is_left(
    disk, monkeypatch, precheck
):
    """Refused by the free-space check before writing; without it (a disk that fills while
    writing), torch's RuntimeError mid-write still leaves nothing."""
    if not precheck:
        monkeypatch.setattr(fcnseg.safety, "check_space", lambda *a, **k: None)
    where = disk(256 * 1024)
    state = {"model_name": "x", "model_options": {}, "num_classes": 2,
             "model": {"w": torch.ones(1_000_000)}}  # 4 MB: cannot fit  # fmt: skip
    with pytest.raises(WriteError, match=r"checkpoint .*last\.pt") as e:
        save_checkpoint(where / "last.pt", state)
    assert disk_full(str(e.value)) and e.value.errno == errno.ENOSPC
    if not precheck:
        assert "the disk is full" in str(e.value)
        assert isinstance(e.value.__cause__, RuntimeError | OSError)  # torch's, not always OSError
    assert sorted(p.name for p in where.iterdir()) == []


def test_train_on_a_full_disk_stops_cleanly(disk, capsys):
    where = disk(512 * 1024)  # config.json and log.csv fit, a 3 MB checkpoint does not
    code, text = status_and_text([*TRAIN, "--steps", "3", "--out", where / "run"], capsys)
    assert code == 1 and disk_full(text) and "last.pt" in text, text
    names = sorted(p.name for p in (where / "run").iterdir())
    assert "last.pt" not in names and "best.pt" not in names, names
    json.loads((where / "run" / "config.json").read_text())  # what is there is whole
    no_partial_files(where)
    with RunLock(where / "run"):  # released
        pass


def test_predict_on_a_full_disk_keeps_complete_outputs(disk, tiny_ckpt, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for k in range(6):
        Image.fromarray(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(
            photos / f"{k}.png")  # fmt: skip
    where = disk(256 * 1024)  # about two images' outputs (noise overlays are ~77 KB)
    code, text = status_and_text(["predict", photos, "--model", tiny_ckpt, "-o", where],
                                 capsys)  # fmt: skip
    assert code == 1 and disk_full(text), text
    written = list(where.iterdir())
    assert written, "nothing fitted: the disk was made too small for the test"
    for p in written:
        with Image.open(p) as im:
            im.load()  # complete files only
    no_partial_files(where)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_on_a_full_disk_leaves_no_file_and_does_not_abort(disk, tiny_ckpt, capsys, fmt):
    where = disk(64 * 1024)
    out = where / "m.bin"
    code, text = status_and_text(["export", tiny_ckpt, "--format", fmt, "-o", out, "--sizes",
                                  "1x40x40"], capsys)  # fmt: skip
    assert code == 1 and disk_full(text) and "m.bin" in text, text
    assert list(where.iterdir()) == []


def test_torchscript_export_on_a_full_disk_in_a_fresh_process(disk, tiny_ckpt):
    """The reported abort (C++ terminate) killed the process: run it as a user would."""
    where = disk(64 * 1024)
    proc = subprocess.run([sys.executable, "-m", "fcnseg", "export", str(tiny_ckpt), "--format",
                           "torchscript", "-o", str(where / "m.pt"), "--sizes", "1x40x40"],
                          env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert disk_full(proc.stderr) and "terminate" not in proc.stderr
    assert list(where.iterdir()) == []


def test_eval_confusion_compare_and_heatmap_on_a_full_disk(disk, tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, "--steps", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    where = disk(128 * 1024)
    fill(where, 2048)
    before = sorted(p.name for p in where.iterdir())
    for args in (["eval", run / "last.pt", "--save-confusion", where / "cm"],
                 ["compare", run / "last.pt", "-o", where / "cmp.png", "--n", "2"]):  # fmt: skip
        code, text = status_and_text(args, capsys)
        assert code == 1 and disk_full(text), text
        no_partial_files(where)
    assert sorted(p.name for p in where.iterdir() if p.is_file()) == before
    assert not list((where / "cm").glob("*.png"))  # the CSV may fit; the plot cannot


@pytest.mark.slow
def test_heatmap_on_a_full_disk(disk, tmp_path, capsys):
    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (96, 96, 3), np.uint8)).save(photo)
    where = disk(64 * 1024)
    fill(where, 1024)
    code, text = status_and_text(["heatmap", photo, "-o", where / "h.png"], capsys)
    assert code == 1 and disk_full(text) and "h.png" in text, text
    assert [p.name for p in where.iterdir()] == ["filler"]


# -------------------------------------------------------------- signals and concurrent processes


def _start(out: Path, *extra: str, steps: int = 400) -> subprocess.Popen:
    args = [sys.executable, "-m", "fcnseg", *TRAIN, "--steps", str(steps), "--out", str(out),
            *extra]  # fmt: skip
    return subprocess.Popen(args, env={**os.environ, "PYTHONPATH": str(SRC)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait_for_checkpoint(proc: subprocess.Popen, out: Path, timeout: float = 120) -> None:
    t0 = time.time()
    while not (out / "last.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "no checkpoint in time"
        time.sleep(0.2)
    time.sleep(0.5)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_checkpoint_and_release_the_lock(tmp_path, sig):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for_checkpoint(proc, out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "checkpoint" in err and "--resume" in err and "Traceback" not in err
    step = load_checkpoint(out / "last.pt")["step"]
    assert 1 <= step < 400
    no_partial_files(out)
    with RunLock(out):
        pass
    assert (out / ".lock").read_text() == ""  # no holder recorded


def test_sigkill_leaves_a_whole_checkpoint_and_a_stale_lock_that_is_taken_over(tmp_path):
    out = tmp_path / "run"
    fixed = ("--recipe", "cvpr", "--lr", "1e-4")  # a fixed lr: a resume may add steps
    proc = _start(out, *fixed)
    _wait_for_checkpoint(proc, out)
    proc.kill()
    proc.communicate(timeout=60)
    assert (out / ".lock").read_text().strip() == str(proc.pid)  # the dead holder's pid
    step = load_checkpoint(out / "last.pt")["step"]  # whole, whatever moment it died
    assert step >= 1
    # what a writer killed mid-write leaves: its temp file, named with its (dead) pid
    (out / f".last.pt.{proc.pid}.x1y2z3.part").write_bytes(b"half a checkpoint")
    resumed = _start(out, *fixed, "--resume", steps=step + 2)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]  # the stale lock was taken over
    assert load_checkpoint(out / "last.pt")["step"] == step + 2
    no_partial_files(out)  # the dead writer's temp file was removed by the next write
    assert (out / ".lock").read_text() == ""


def test_a_second_process_in_the_same_run_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    first = _start(out)
    try:
        _wait_for_checkpoint(first, out)
        second = subprocess.run([sys.executable, "-m", "fcnseg", *TRAIN, "--steps", "400",
                                 "--out", str(out), "--resume"],
                                env={**os.environ, "PYTHONPATH": str(SRC)},
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert second.returncode == 1, second.stderr[-2000:]
        assert f"process {first.pid} is training in it" in second.stderr
        assert first.poll() is None  # the first goes on, untouched
    finally:
        first.kill()
        first.communicate(timeout=60)
    assert load_checkpoint(out / "last.pt")["step"] >= 1
