"""The training input pipeline: worker processes change nothing but the speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from test_engine import _cli, _tiny_cli, assert_same_weights, tiny, weights

from fcnseg.data.build import open_dataset
from fcnseg.data.transforms import RandomCrop
from fcnseg.engine import train
from fcnseg.feed import Dist, StepBatches, default_workers

# runs compared bit for bit: the thread count pinned (conftest.pinned_threads)
pytestmark = pytest.mark.usefixtures("pinned_threads")


def _batches(workers: int, start: int = 0) -> list:
    data = open_dataset("digits", "train", {"n_train": 12, "size": 48, "scale": (1.0, 1.5)},
                        RandomCrop(32))  # random crops: the transforms' RNG matters  # fmt: skip
    steps = StepBatches(data, start, 5, batch=4, micro=2, seed=7, dist=Dist())
    return list(steps.loader(workers, pin=False))


def test_batches_are_the_same_with_and_without_workers_and_after_a_resume():
    before = torch.get_rng_state()
    alone = _batches(0)
    assert torch.equal(torch.get_rng_state(), before)  # the main RNG (dropout) is untouched
    assert [s for s, _ in alone] == list(range(5))
    for other in (_batches(2), [(s, c) for s, c in _batches(0)[:2]] + _batches(0, start=2)):
        for (s1, c1), (s2, c2) in zip(alone, other, strict=True):
            assert s1 == s2 and len(c1) == len(c2) == 2
            for (x1, t1), (x2, t2) in zip(c1, c2, strict=True):
                assert torch.equal(x1, x2) and torch.equal(t1, t2)
    crops = {tuple(c[0][0][0, 0, :2, :2].flatten().tolist()) for _, c in alone}
    assert len(crops) > 1  # the crops do differ from step to step


def test_training_with_workers_reaches_the_same_weights(tmp_path):
    runs = [train(tiny(tmp_path, f"w{w}", steps=3, crop=32, workers=w, recipe="cvpr", lr=0.05),
                  progress=False) for w in (0, 2)]  # fmt: skip
    assert_same_weights(weights(runs[0]["checkpoint"]), weights(runs[1]["checkpoint"]))


def test_default_workers_leave_a_cpu_to_training():
    assert default_workers(torch.device("cpu"), 1) == 0
    assert 1 <= default_workers(torch.device("cuda"), 1) <= 8


@pytest.mark.slow
def test_sharded_evaluation_equals_one_process(tmp_path):
    """fcnseg eval --nproc 2 (gloo), 7 items split 4 + 3: the same confusion matrix as one,
    and the same per-image scores and report gallery (every process's images, gathered)."""
    run = tmp_path / "run"
    train(tiny(tmp_path, "run", steps=1), progress=False)
    for n in (1, 2):
        out = str(tmp_path / f"cm{n}")
        args = ["eval", str(run / "last.pt"), "--data-option", "n_val=7", "--data-option",
                "size=48", "--data-option", "scale=1.0,1.5", "--save-confusion", out,
                "--save-per-image", str(tmp_path / f"per_image{n}.csv"),
                "--report", str(tmp_path / f"report{n}"), "--gallery", "2",
                "--nproc", str(n)]  # fmt: skip
        assert _cli(*args).wait(timeout=300) == 0
    one, two = ((tmp_path / f"cm{n}" / "confusion.csv").read_text() for n in (1, 2))
    assert one == two and sum(int(v) for v in one.split()[-1].split(",")[1:]) >= 0
    rows = [(tmp_path / f"per_image{n}.csv").read_text().splitlines() for n in (1, 2)]
    assert rows[0] == rows[1] and len(rows[0]) == 1 + 7  # every image once, same scores
    pages = [json.loads((tmp_path / f"report{n}" / "report.json").read_text()) for n in (1, 2)]
    galleries = [[(g["image"], g["mean_iu"]) for h in p["heads"] for k in ("worst", "best")
                  for g in h["gallery"][k]] for p in pages]  # fmt: skip
    assert galleries[0] == galleries[1] and len(galleries[0]) == 4
    assert Dist(0, 2).shard(list(range(7))).indices == range(0, 7, 2)


@pytest.mark.slow
def test_two_nodes_with_c10d_rendezvous_match_one_process(tmp_path):
    """Two "machines" (2 torchrun agents x 1 process, c10d rendezvous on 127.0.0.1) == one
    process with the same global batch, as the README's two-machine command runs them."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [*_tiny_cli(tmp_path / "one", 3), "--model-option", "dropout=0"]
    assert _cli(*args).wait(timeout=300) == 0
    two = [*_tiny_cli(tmp_path / "two", 3), "--model-option", "dropout=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                               "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                               "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "fcnseg-test",
                               "-m", "fcnseg", *two], env=env)
             for _ in range(2)]  # fmt: skip
    assert [p.wait(timeout=600) for p in nodes] == [0, 0]
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    assert_same_weights(weights(tmp_path / "one" / "last.pt"),
                        weights(tmp_path / "two" / "last.pt"), atol=1e-5)  # fmt: skip
