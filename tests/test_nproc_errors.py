"""--nproc N: a mistake is said once, in one line, before any worker starts; a worker's error
reaches the user once (rank 0's), without torchrun's log lines, summary or traceback; the exit
status stays non-zero (issue 22 item 15; fcnseg.cli.launch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

NET = ["train", "--model", "fcn8s_vgg16", "--width", "0.0625", "--layout", "same",
       "--recipe", "cvpr", "--lr", "0.05", "--batch-size", "4", "--steps", "2"]  # fmt: skip
TINY = [*NET, "--data-option", "n_train=8", "--data-option", "n_val=4",
        "--data-option", "size=48", "--data-option", "scale=1.0,1.5"]  # fmt: skip
NOISE = ("Traceback", "torch.distributed", "ChildFailedError", "OMP_NUM_THREADS", "exitcode",
         "Root Cause")  # fmt: skip


def fcnseg(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("FCNSEG_NPROC_MESSAGES", None)
    return subprocess.run([sys.executable, "-m", "fcnseg", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)  # fmt: skip


def one_error_line(run: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert run.returncode == 1, run.stderr
    assert len(lines) == 1, run.stderr  # before: 46 lines (each rank's, torchrun's traceback)
    assert not any(word in run.stderr for word in NOISE), run.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_a_missing_data_root_is_said_once_before_any_worker(tmp_path):
    run = fcnseg(*NET, "--data", f"voc:{tmp_path / 'nowhere'}", "--out", str(tmp_path / "run"),
                 "--nproc", "2")  # fmt: skip
    assert "VOC root" in one_error_line(run) and "nowhere" in run.stderr
    assert run.stdout == ""
    assert not (tmp_path / "run").exists()  # nothing made


def test_a_batch_that_does_not_split_over_the_processes_is_said_once(tmp_path):
    run = fcnseg(*TINY, "--out", str(tmp_path / "run"), "--nproc", "3")  # batch 4 over 3
    assert "batch_size 4 must be a multiple of accumulate x processes = 1 x 3" in (
        one_error_line(run)
    )
    assert not (tmp_path / "run").exists()


def test_eval_of_a_missing_checkpoint_is_said_once(tmp_path):
    run = fcnseg("eval", str(tmp_path / "none.pt"), "--nproc", "2")
    assert "none.pt" in one_error_line(run)


@pytest.mark.slow
def test_a_workers_error_is_said_once_and_a_tiny_run_passes(tmp_path):
    """Two real torchrun runs: --init-from a missing file fails inside the workers (after the
    launcher's checks), then the same run without it trains and reports once."""
    bad = fcnseg(*TINY, "--out", str(tmp_path / "bad"), "--nproc", "2", "--init-from",
                 str(tmp_path / "missing.pt"))  # fmt: skip
    assert "missing.pt" in one_error_line(bad), bad.stderr
    assert "(process" not in bad.stderr, bad.stderr  # rank 1's identical error: said once
    good = fcnseg(*TINY, "--out", str(tmp_path / "good"), "--nproc", "2")
    assert good.returncode == 0, good.stderr
    assert not any(word in good.stderr for word in NOISE), good.stderr
    assert good.stdout.count("last.pt (") == 1, good.stdout  # rank 0 says it, once
    assert json.loads((tmp_path / "good" / "config.json").read_text())["world_size"] == 2


def _kept(folder, rank: int, status: int, text: str) -> None:
    (folder / f"rank{rank}").write_text(f"{status}\n{text}")


def test_the_launcher_says_each_distinct_message_once(tmp_path, monkeypatch):
    from fcnseg.cli import launch

    same = "no such file: 'a.png'"
    _kept(tmp_path, 0, 1, same)
    _kept(tmp_path, 1, 1, same)
    _kept(tmp_path, 2, 1, "disk full: 'out/b.png'")
    _kept(tmp_path, 3, 130, "interrupted")  # killed because the others failed: not an error
    lines = launch._messages(tmp_path, 4, 1)
    assert lines == [f"error: {same}  (--debug shows the traceback)",
                     "error: (process 2 of 4) disk full: 'out/b.png'  "
                     "(--debug shows the traceback)"]  # fmt: skip
    for f in tmp_path.iterdir():
        f.unlink()
    _kept(tmp_path, 0, 130, "interrupted: checkpoint saved at step 3")  # Ctrl-C: said once
    _kept(tmp_path, 1, 130, "interrupted: checkpoint saved at step 3")
    assert launch._messages(tmp_path, 2, 130) == ["interrupted: checkpoint saved at step 3"]
    (tmp_path / "rank0").unlink()
    (tmp_path / "rank1").unlink()
    (tmp_path / "torchrun.json").write_text(json.dumps({"1": -9}))  # killed: no message
    (line,) = launch._messages(tmp_path, 2, 137)
    assert "process 1: killed by SIGKILL" in line and "--nproc 1" in line
    # a worker keeps its message for the launcher only under the launcher
    monkeypatch.setenv(launch._ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "1")
    assert launch.keep_worker_message("bad\nthing", 1)
    assert (tmp_path / "rank1").read_text() == "1\nbad thing"
    monkeypatch.delenv(launch._ENV)
    assert not launch.keep_worker_message("bad", 1)  # plain torchrun: the worker prints it
