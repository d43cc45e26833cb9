"""Threads by what the process may use (affinity, cgroup quota), and busy processes beside."""

from __future__ import annotations

import os
import time

import pytest
import torch

from fcnseg import threads
from fcnseg.cli import main


@pytest.fixture(autouse=True)
def _threads_not_pinned(monkeypatch):
    """These tests see the adaptive choices: no thread count pinned by the environment."""
    for k in ("FCNSEG_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(k, raising=False)


def _cgroup(tmp_path, v2=None, v1=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return tmp_path


@pytest.mark.parametrize(
    ("v2", "v1", "want"),
    [("max 100000", None, None), ("150000 100000", None, 1.5), ("100000 100000", None, 1.0),
     (None, (200000, 100000), 2.0), (None, (-1, 100000), None), (None, None, None),
     ("garbage", None, None)],
)  # fmt: skip
def test_cgroup_quota_v1_and_v2(tmp_path, v2, v1, want):
    assert threads.cgroup_cpu_limit(_cgroup(tmp_path, v2, v1)) == want


def test_a_container_of_one_cpu_on_a_16_core_host_gets_one_thread(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    root = _cgroup(tmp_path, "100000 100000")
    assert threads.usable_cpus(root) == 1
    assert threads.usable_cpus(_cgroup(tmp_path / "b", "150000 100000")) == 2  # rounded up
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})  # taskset -c 3
    assert threads.usable_cpus(tmp_path / "none") == 1


def test_threads_are_lowered_never_raised_and_a_users_choice_wins(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    for key in threads._USER_CHOICE:
        monkeypatch.delenv(key, raising=False)
    try:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
        torch.set_num_threads(4)
        assert threads.limit_threads(_cgroup(tmp_path, "100000 100000")) == 1
        assert torch.get_num_threads() == 1
        assert threads.limit_threads(tmp_path / "no-quota") is None  # 16 usable: not raised
        assert torch.get_num_threads() == 1
        torch.set_num_threads(4)
        monkeypatch.setenv("OMP_NUM_THREADS", "4")  # the user's choice
        assert threads.limit_threads(_cgroup(tmp_path / "c", "100000 100000")) is None
        assert torch.get_num_threads() == 4
        monkeypatch.setenv("FCNSEG_THREADS", "2")
        assert threads.limit_threads(tmp_path / "c") == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_busy_processes_run_beside_and_are_gone_after():
    with threads.busy_cores(2) as procs:
        time.sleep(0.2)
        assert len(procs) == 2 and all(p.poll() is None for p in procs)  # spinning
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(ValueError, match=r"0\.\.256"), threads.busy_cores(-1):
        pass


def test_bench_busy_says_so(capsys):
    argv = ["bench", "--model", "fcn8s_vgg16", "--size", "40", "--width", "0.0625",
            "--repeats", "1", "--busy", "1"]  # fmt: skip
    assert main(argv) == 0
    assert "with 1 busy process beside" in capsys.readouterr().out


def test_fit_to_free_cores_lowers_for_the_block_and_restores(monkeypatch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(threads, "usable_cpus", lambda root="/": 2)
        monkeypatch.setattr(threads, "others_running", lambda: 1)  # one core taken
        with threads.fit_to_free_cores() as n:
            assert n == 1 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(threads, "others_running", lambda: 0)  # quiet: unchanged
        with threads.fit_to_free_cores() as n:
            assert n == 2 and torch.get_num_threads() == 2
        monkeypatch.setattr(threads, "others_running", lambda: 5)  # never below one
        with threads.fit_to_free_cores() as n:
            assert n == 1
    finally:
        torch.set_num_threads(before)


def test_the_run_queue_sees_a_busy_process():
    quiet = threads.others_running()
    assert quiet is not None and quiet >= 0
    with threads.busy_cores(1):
        time.sleep(0.3)
        loaded = max(threads.others_running() for _ in range(5))
    assert loaded >= 1


def test_this_jobs_own_child_processes_are_not_load_beside_it():
    """A DataLoader worker (a child process) spinning is this job's work: not counted, so a
    run with workers chooses its threads as a run without them; busy_cores' spinners are."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        own = [threads.others_running() for _ in range(5)]
        with threads.busy_cores(1):
            time.sleep(0.3)
            beside = max(threads.others_running() for _ in range(5))
    finally:
        child.kill()
        child.wait()
    assert beside >= 1 and min(own) == 0, (own, beside)


def test_fastfcn_adapts_its_threads_and_gives_the_same_answer(monkeypatch):
    from conftest import randomize_

    import fcnseg

    model = randomize_(fcnseg.build_model("fcn8s_vgg16", width=0.0625)).eval()
    x = torch.randn(1, 3, 45, 61)
    seen = []
    fast = fcnseg.FastFCN(model, measure=False)
    monkeypatch.setattr(threads, "others_running", lambda: 1)
    monkeypatch.setattr(threads, "usable_cpus", lambda root="/": 2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        orig = fast._forward

        def spy(xs):
            seen.append(torch.get_num_threads())
            return orig(xs)

        monkeypatch.setattr(fast, "_forward", spy)
        with torch.no_grad():
            loaded = [fast(x) for _ in range(3)]
            fixed = fcnseg.FastFCN(model, measure=False, adapt_threads=False)(x)
            plain = model(x)
        # load seen before two calls: then the free count (1) is tried first
        assert seen == [2, 1, 1] and torch.get_num_threads() == 2
        loaded = loaded[-1]
        scale = plain.abs().max()
        assert ((loaded - plain).abs().max() / scale) < 1e-5
        assert ((loaded - fixed).abs().max() / scale) < 1e-6  # rounding of the split only
    finally:
        torch.set_num_threads(before)


def test_step_threads_keeps_the_faster_count_under_load_and_measures_again(monkeypatch):
    """Beside a busy core the block runs on torch's count T or the free count F, each tried
    first, then the one that ran faster; quiet: T, untimed; the count is restored after each
    block; every `every` busy blocks both are tried again (the load beside changes)."""
    monkeypatch.setattr(threads, "usable_cpus", lambda root="/": 4)
    others = {"n": 2}  # two of four cores taken: F = 2
    monkeypatch.setattr(threads, "others_running", lambda: others["n"])
    slow = {"n": 4}  # the thread count whose blocks are slow

    def block(chooser):
        with chooser() as n:
            assert torch.get_num_threads() == n
            time.sleep(0.03 if n == slow["n"] else 0.001)
        assert torch.get_num_threads() == 4
        return n

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        chooser = threads.StepThreads(tries=2, every=20)
        first = [block(chooser) for _ in range(5)]
        assert first == [4, 2, 2, 4, 4]  # busy on two blocks running: F tried first, then T
        assert {block(chooser) for _ in range(10)} == {2} and chooser.chosen == {2: 2}
        slow["n"] = 2  # now fewer threads lose: found at the next measurement
        runs = [block(chooser) for _ in range(20)]
        assert runs[-1] == 4 and chooser.chosen == {2: 4}
        others["n"] = 0  # quiet: torch's count, nothing measured
        assert block(chooser) == 4
        others["n"] = 2  # busy for one block only (a kernel thread's blip): nothing changes
        assert block(chooser) == 4
        others["n"] = None  # no /proc: torch's count
        assert block(chooser) == 4
        others["n"] = 2
        monkeypatch.setenv("FCNSEG_THREADS", "4")  # the user pinned the count: used as given
        assert threads.threads_pinned()
        assert [block(chooser) for _ in range(3)] == [4, 4, 4]
    finally:
        torch.set_num_threads(before)


def test_training_and_evaluation_steps_run_under_the_chooser(monkeypatch, tmp_path):
    """The engine's CPU steps and evaluate()'s batches go through StepThreads; beside a busy
    core (F = 1 of 2) a tiny run trains, and evaluating gives the same matrix as quiet."""
    import numpy as np
    from conftest import randomize_

    import fcnseg
    from fcnseg.data.build import make_loader, open_dataset
    from fcnseg.evaluate import evaluate

    calls = []
    real = threads.StepThreads.__call__

    def spy(self):
        calls.append(self)
        return real(self)

    monkeypatch.setattr(threads.StepThreads, "__call__", spy)
    monkeypatch.setattr(threads, "usable_cpus", lambda root="/": 2)
    monkeypatch.setattr(threads, "others_running", lambda: 1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        model = fcnseg.build_model("fcn32s_vgg16", width=0.0625, layout="same", num_classes=11)
        randomize_(model)  # scores that vary: a matrix with more than one predicted class
        val = open_dataset("digits", "val", {"n_val": 4, "size": 48, "scale": (1.0, 1.5)})
        busy = evaluate(model, make_loader(val, 2, model.preprocessing), val.num_classes)
        assert len(calls) == 2  # one per batch
        monkeypatch.setattr(threads, "others_running", lambda: 0)
        quiet = evaluate(model, make_loader(val, 2, model.preprocessing), val.num_classes)
        assert (busy.matrix.sum(0) > 0).sum() > 1  # not all one class
        # the same predictions, up to a rare tie that another thread count rounds otherwise
        assert np.abs(busy.matrix - quiet.matrix).sum() <= 4 < busy.matrix.sum()
        assert main(["train", "--model", "fcn32s_vgg16", "--width", "0.0625", "--layout",
                     "same", "--steps", "3", "--batch-size", "2", "--data-option", "n_train=8",
                     "--data-option", "n_val=4", "--data-option", "size=48", "--data-option",
                     "scale=1.0,1.5", "--out", str(tmp_path / "run")]) == 0  # fmt: skip
        assert len(calls) >= 2 + 3 + 2  # + the 3 steps + the final evaluation's batches
        assert torch.get_num_threads() == 2
        # predict over a folder: each group of images under the chooser too, same labels
        from PIL import Image

        from fcnseg.predict_folder import predict_paths

        photo = tmp_path / "p.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 52, 3), np.uint8)).save(
            photo
        )
        seen = len(calls)
        maps = {}
        for others in (1, 0):
            monkeypatch.setattr(threads, "others_running", lambda others=others: others)
            predict_paths(model, [photo], tmp_path / f"out{others}", progress=False)
            with Image.open(tmp_path / f"out{others}" / "p.png") as im:
                maps[others] = np.asarray(im)
        assert len(calls) == seen + 2 and (maps[1] == maps[0]).mean() > 0.999
    finally:
        torch.set_num_threads(before)


def test_one_chooser_per_block_on_a_cpu_only():
    """step_threads: a StepThreads on a CPU; none off it, nor around a FastFCN, which chooses
    its own threads per call (two nested choosers would each measure the other's choice)."""
    import contextlib

    import fcnseg

    model = fcnseg.build_model("fcn32s_vgg16", width=0.0625).eval()
    assert isinstance(threads.step_threads("cpu", model), threads.StepThreads)
    assert threads.step_threads(torch.device("meta")) is contextlib.nullcontext
    assert threads.step_threads("cpu", fcnseg.FastFCN(model)) is contextlib.nullcontext
    fixed = fcnseg.FastFCN(model, adapt_threads=False)  # chooses nothing itself
    assert isinstance(threads.step_threads("cpu", fixed), threads.StepThreads)
