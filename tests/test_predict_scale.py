"""fcnseg predict across processes and after an interruption: the files one process writes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import randomize_
from PIL import Image

import fcnseg
from fcnseg.checkpoint import model_state, save_checkpoint
from fcnseg.cli import main
from fcnseg.predict_folder import predict_paths


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    model = randomize_(fcnseg.build_model("fcn8s_vgg16", num_classes=5, width=0.0625)).eval()
    save_checkpoint(root / "m.pt", model_state(model))
    rng = np.random.default_rng(0)
    (root / "in" / "sub").mkdir(parents=True)
    for k in range(7):  # two sizes, a subfolder, an odd count: uneven shares
        h, w = (24, 32) if k % 2 else (40, 28)
        folder = root / "in" / ("sub" if k > 4 else "")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(folder / f"{k}.png")
    return root, model


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}  # fmt: skip


def test_shares_of_several_processes_write_what_one_process_writes(setup, tmp_path):
    root, model = setup
    predict_paths(model, [root / "in"], tmp_path / "one", progress=False, save_probs=True)
    for rank in range(3):  # what each of 3 processes does, one after the other
        predict_paths(model, [root / "in"], tmp_path / "three", progress=False, save_probs=True,
                      shard=(rank, 3), overwrite=rank > 0)  # fmt: skip
    assert _files(tmp_path / "one") == _files(tmp_path / "three")
    with_workers = predict_paths(model, [root / "in"], tmp_path / "w", progress=False,
                                 save_probs=True, workers=2)  # fmt: skip
    assert all(r["ok"] for r in with_workers) and _files(tmp_path / "w") == _files(
        tmp_path / "one")  # fmt: skip


def test_skip_existing_continues_without_rewriting_finished_files(setup, tmp_path, capsys):
    root, _ = setup
    out = tmp_path / "out"
    args = ["predict", str(root / "in"), "--model", str(root / "m.pt"), "-o", str(out)]
    assert main(args) == 0
    finished = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    (out / "3.png").unlink()  # an interrupted run: 3's label map never written
    (out / "sub" / "6_overlay.png").unlink()
    assert main(args) == 1  # without --skip-existing: refused, nothing touched
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--skip-existing"]) == 0
    assert "5 images already segmented" in capsys.readouterr().out
    for p, mtime in finished.items():
        assert p.exists()
        if p.name not in ("3.png", "3_overlay.png", "6.png", "6_overlay.png"):
            assert p.stat().st_mtime_ns == mtime, f"{p} was rewritten"


@pytest.mark.slow
def test_predict_nproc_two_matches_one_process(setup, tmp_path):
    root, _ = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for n in (1, 2):
        cmd = [sys.executable, "-m", "fcnseg", "predict", str(root / "in"), "--model",
               str(root / "m.pt"), "-o", str(tmp_path / f"p{n}"), "--nproc", str(n)]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "7 images segmented" in proc.stdout
    assert _files(tmp_path / "p1") == _files(tmp_path / "p2")
