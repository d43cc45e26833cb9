"""FastFCN's kernels chosen by measurement: every choice exact, the cache file's round trip,
a corrupt or unwritable cache never crashes (timings themselves: benchmarks/inference.py)."""

import json
import os
import warnings

import pytest
import torch
from conftest import randomize_

import fcnseg
from fcnseg import kernels
from fcnseg.fast import FastFCN, tuning


def tiny(dtype=torch.float64) -> torch.nn.Module:
    model = fcnseg.build_model("fcn8s_vgg16", num_classes=5, width=0.0625).eval()
    return randomize_(model, std=0.1).to(dtype)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(autouse=True)
def _fresh_memo():
    tuning._memo.clear()  # as in a new process: read the cache file again
    yield
    tuning._memo.clear()


def force(monkeypatch, kind: str) -> list:
    """Make every measured step pick `kind` where allowed (else its last candidate); returns
    the candidate lists seen."""
    seen = []

    def choose(key, candidates, make_trial, rounds=tuning.ROUNDS):
        seen.append(candidates)
        make_trial(candidates[0])()  # the trial runs too
        return kind if kind in candidates else candidates[-1]

    monkeypatch.setattr(tuning, "choose", choose)
    return seen


KINDS = ["winograd4", "winograd4dnnl", "winograd", "gemm", "inplace", "plain", "direct"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_choice_is_exact(kind, dtype, monkeypatch):
    """Whatever the measurement picks, the outputs are the model's: 1e-12 in float64, 1e-5 in
    float32 (oneDNN in place only exists in float32/bf16)."""
    seen = force(monkeypatch, kind)
    model = tiny(dtype)
    fast = FastFCN(model)
    for h, w in [(31, 45), (200, 210)]:  # at 200+ fc6/fc7 have no buffer: "direct" or GEMM
        x = torch.randn(1, 3, h, w, dtype=dtype)
        with torch.no_grad():
            assert rel_err(fast(x), model(x)) < (1e-12 if dtype == torch.float64 else 1e-5)
    kinds = {k for state in fast._cache.values() for k in state["kinds"]}
    offered = {k for c in seen for k in c}
    assert kind in kinds or kind not in offered
    assert {"winograd4", "winograd", "gemm", "direct"} <= offered
    onednn = dtype == torch.float32 and kernels.available(x)  # oneDNN runs float32 / bf16 only
    assert ("inplace" in offered) == onednn
    assert ("winograd4dnnl" in offered) == onednn


def quiet(monkeypatch):
    """A fixed quiet load average: an entry measured while the real one was above the core
    count would be measured again once it fell below (a test on a 2-core CI runner can cross
    that line between two calls)."""
    monkeypatch.setattr(tuning, "load_average", lambda: 0.0)


def test_measured_choices_are_cached_per_layer(tmp_path, monkeypatch):
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path))  # only this test's entries
    quiet(monkeypatch)
    model = tiny(torch.float32)
    x = torch.randn(1, 3, 64, 70)
    with torch.no_grad():
        ref = model(x)
        fast = FastFCN(model, adapt_threads=False)  # the cache is per thread count
        assert rel_err(fast(x), ref) < 1e-5
        first = fast.choices(64, 70)
    doc = json.loads(tuning.cache_path().read_text())
    entries = list(doc["entries"].items())
    assert entries and "delete" in doc["about"]
    for key, entry in entries:
        parts = json.loads(key)
        assert parts["torch"] == torch.__version__ and parts["machine"]
        assert parts["dtype"] == "torch.float32" and parts["batch"] == 1
        assert entry["choice"] in parts["candidates"]
        assert set(entry["seconds"]) == set(parts["candidates"])
        best = min(entry["seconds"].values())
        assert entry["seconds"][entry["choice"]] <= best * (1 + tuning.MARGIN)
    assert set(first.values()) <= set(KINDS)
    # Winograd F(4x4) is measured beside F(2x2): the candidates are part of each key, so a
    # cache written before F(4x4) existed (candidates without it) does not answer for it
    assert any(json.loads(key)["candidates"][0] == "winograd4" for key, _ in entries)
    if kernels.available(x):  # and F(4x4) with oneDNN's GEMMs beside it
        assert any(json.loads(key)["candidates"][:3] == KINDS[:3] for key, _ in entries)

    tuning._memo.clear()  # a new process reads the file and measures nothing
    monkeypatch.setattr(tuning, "measure", lambda *a, **k: pytest.fail("measured again"))
    with torch.no_grad():
        again = FastFCN(model, adapt_threads=False)
        assert rel_err(again(x), ref) < 1e-5
        assert again.choices(64, 70) == first

    assert tuning.reset_cache() and not tuning.cache_path().exists()
    assert not tuning.reset_cache()


def test_similar_sizes_share_one_measurement(tmp_path, monkeypatch):
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path))
    quiet(monkeypatch)
    model = tiny(torch.float32)
    # threads fixed: a busy machine would otherwise run the two calls at other thread counts,
    # each measured once (the cache is per thread count)
    with torch.no_grad():
        FastFCN(model, adapt_threads=False)(torch.randn(1, 3, 120, 160))
        n = len(json.loads(tuning.cache_path().read_text())["entries"])
        monkeypatch.setattr(tuning, "measure", lambda *a, **k: pytest.fail("measured again"))
        FastFCN(model, adapt_threads=False)(torch.randn(1, 3, 121, 158))  # the same keys
    assert len(json.loads(tuning.cache_path().read_text())["entries"]) == n


@pytest.mark.parametrize("text", ["{not json", '{"entries": [1, 2]}', "", '{"other": 1}'])
def test_corrupt_cache_is_ignored_with_a_warning_and_rewritten(text):
    path = tuning.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    model = tiny(torch.float32)
    x = torch.randn(1, 3, 40, 44)
    with pytest.warns(UserWarning, match="unreadable FastFCN kernel cache"), torch.no_grad():
        assert rel_err(FastFCN(model)(x), model(x)) < 1e-5
    doc = json.loads(path.read_text())  # rewritten whole, with the new measurements
    assert doc["entries"]
    assert not list(path.parent.glob(".kernels.json.*"))  # no temporary file left behind


def test_unwritable_cache_warns_and_still_runs(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("FCNSEG_CACHE", str(blocker / "sub"))
    model = tiny(torch.float32)
    x = torch.randn(1, 3, 40, 44)
    with pytest.warns(UserWarning, match="cannot write the FastFCN kernel cache"), torch.no_grad():
        assert rel_err(FastFCN(model)(x), model(x)) < 1e-5


def test_measure_interleaves_and_takes_the_median():
    calls = []
    clock = iter(range(1000))

    def trial(name):
        return lambda: calls.append(name)

    monkeypatch_time = tuning.time.perf_counter
    try:
        tuning.time.perf_counter = lambda: float(next(clock))
        out = tuning.measure({"a": trial("a"), "b": trial("b")}, rounds=3)
    finally:
        tuning.time.perf_counter = monkeypatch_time
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-ups, then alternating order
    assert out == {"a": 1.0, "b": 1.0}


def test_a_later_candidate_needs_the_margin():
    assert tuning.pick({"winograd": 1.0, "inplace": 0.97}, ["winograd", "inplace"]) == "winograd"
    assert tuning.pick({"winograd": 1.0, "inplace": 0.90}, ["winograd", "inplace"]) == "inplace"
    assert tuning.pick({"gemm": 0.5, "direct": 0.9}, ["gemm", "direct"]) == "gemm"


def test_a_single_candidate_is_not_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path))
    monkeypatch.setattr(tuning, "measure", lambda *a, **k: pytest.fail("measured"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tuning.choose("k", ["plain"], lambda k: None) == "plain"
    assert not tuning.cache_path().exists()


def test_bench_retune_measures_again(tmp_path, monkeypatch, capsys):
    from fcnseg.cli import main

    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path))
    path = tuning.cache_path()
    path.write_text(json.dumps({"entries": {"old": {"choice": "plain", "seconds": {}}}}))
    assert main(["bench", "--width", "0.0625", "--size", "48", "--repeats", "1", "--retune"]) == 0
    out = capsys.readouterr().out
    assert "CPU: " in out and "FastFCN kernels (measured here" in out
    entries = json.loads(path.read_text())["entries"]
    assert "old" not in entries and entries  # forgotten, then measured again


def test_gpu_benchmark_fails_clearly_without_cuda():
    """benchmarks/gpu.py is one command on a CUDA machine; without one it says why, exit 2."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU visible, even on a GPU machine
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert "needs a CUDA GPU" in done.stderr and "torch.cuda.is_available() is False" in done.stderr
    assert not done.stdout


def test_a_choice_measured_on_a_busy_machine_is_measured_again_when_quiet(tmp_path, monkeypatch):
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path))
    cores = os.cpu_count() or 1
    calls = []

    def trial(name):
        return lambda: calls.append(name)

    monkeypatch.setattr(tuning, "load_average", lambda: 3.0 * cores)  # busy
    first = tuning.choose("k", ["winograd", "inplace"], trial)
    n = len(calls)
    assert n > 0 and json.loads(tuning.cache_path().read_text())["entries"]["k"]["load"] > cores
    tuning._memo.clear()
    assert tuning.choose("k", ["winograd", "inplace"], trial) == first  # still busy: cached
    assert len(calls) == n
    monkeypatch.setattr(tuning, "load_average", lambda: 0.1)  # quiet now: measured again
    tuning._memo.clear()
    tuning.choose("k", ["winograd", "inplace"], trial)
    assert len(calls) > n
    assert json.loads(tuning.cache_path().read_text())["entries"]["k"]["load"] == 0.1
    m = len(calls)
    tuning._memo.clear()
    tuning.choose("k", ["winograd", "inplace"], trial)  # a quiet measurement is kept
    assert len(calls) == m
