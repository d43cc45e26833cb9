"""`--amp auto`: the decision from injected timings, the cache, and a real run on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fcnseg import amp
from fcnseg.engine import TrainConfig, train
from fcnseg.models import build_model


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch) -> Path:
    """Every test gets its own cache folder (never the user's ~/.cache)."""
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


class FakeClock:
    """A clock that each `step(name)` advances by that name's scripted durations."""

    def __init__(self, durations: dict[str, list[float]]):
        self.now, self.durations, self.calls = 0.0, {k: list(v) for k, v in durations.items()}, []

    def __call__(self) -> float:
        return self.now

    def step(self, name: str) -> None:
        self.calls.append(name)
        self.now += self.durations[name].pop(0) if self.durations[name] else 1.0


# ------------------------------------------------------------------ decision


@pytest.mark.parametrize(
    "fp32,bf16,expected",
    [
        ([1.0, 1.1, 0.9], [0.5, 0.6, 0.4], "bf16"),  # 2x faster
        ([0.21, 0.22, 0.2], [1.0, 1.1, 0.9], None),  # the cliff: 5x slower
        ([1.0, 1.0, 1.0], [0.97, 0.97, 0.97], None),  # 3% faster: under the 5% margin
        ([1.0, 1.0, 1.0], [0.95, 0.95, 0.95], "bf16"),  # exactly the margin
        ([1.0, 1.0, 1.0], [0.5, 9.0, 9.0], "bf16"),  # the fastest: load only adds time
        ([0.4, 3.0, 3.0], [1.0, 1.0, 1.0], None),
    ],
)
def test_decide_from_injected_timings(fp32, bf16, expected):
    choice, reason = amp.decide({"fp32": fp32, "bf16": bf16})
    assert choice == expected
    assert ("faster" in reason) if expected else ("slower" in reason or "only" in reason)


def test_decide_needs_fp32():
    with pytest.raises(ValueError, match="fp32"):
        amp.decide({"bf16": [1.0]})
    assert amp.decide({"fp32": [1.0]})[0] is None


def test_measure_interleaves_after_warmup_and_times_each_call():
    clock = FakeClock({"fp32": [0, 0, 3, 4, 5], "bf16": [0, 0, 1, 2, 3]})
    times = amp.measure(clock.step, ("fp32", "bf16"), rounds=3, warmup=2, clock=clock)
    assert clock.calls[:4] == ["fp32", "bf16", "fp32", "bf16"]  # warm-up, untimed
    assert clock.calls[4:] == ["fp32", "bf16", "bf16", "fp32", "fp32", "bf16"]
    assert times == {"fp32": [3, 4, 5], "bf16": [1, 2, 3]}


# ------------------------------------------------------------------ cache


def test_cache_round_trip_and_reset(_cache: Path):
    key = amp.cache_key("fcn32s_vgg16", {"width": 0.125}, 11, (16, 3, 128, 128), "cpu", True)
    clock = FakeClock({"fp32": [1, 1, 2, 1], "bf16": [3] * 4})  # bf16 3x slower: fp32
    first = amp.choose_amp(key, clock.step, rounds=3, clock=clock)
    assert first.amp is None and not first.cached and first.times == {"fp32": 1, "bf16": 3}
    assert amp.cache_path() == _cache / "amp.json"
    saved = json.loads(amp.cache_path().read_text())["entries"][key]
    assert saved["amp"] is None and saved["samples"]["bf16"] == [3, 3, 3]
    n = len(clock.calls)
    again = amp.choose_amp(key, clock.step, rounds=3, clock=clock)
    assert len(clock.calls) == n  # not measured again
    assert again.cached and again.amp is None and again.times == first.times
    assert "fp32" in again.describe() and str(amp.cache_path()) in again.describe()
    # another key (another input shape) is measured separately
    other = amp.cache_key("fcn32s_vgg16", {"width": 0.125}, 11, (8, 3, 128, 128), "cpu", True)
    assert other != key
    clock2 = FakeClock({"fp32": [2] * 4, "bf16": [1] * 4})
    assert amp.choose_amp(other, clock2.step, clock=clock2).amp == "bf16"
    assert amp.reset_cache(key) and not amp.reset_cache(key)  # one entry
    assert set(json.loads(amp.cache_path().read_text())["entries"]) == {other}
    assert amp.reset_cache() and not amp.cache_path().exists()  # the whole file
    assert not amp.reset_cache()
    clock3 = FakeClock({"fp32": [2] * 4, "bf16": [1] * 4})
    assert not amp.choose_amp(key, clock3.step, clock=clock3).cached  # measured again


def test_a_choice_measured_on_a_busy_machine_says_so(monkeypatch):
    monkeypatch.setattr(amp.os, "getloadavg", lambda: (64.0, 1.0, 1.0))
    clock = FakeClock({"fp32": [2] * 4, "bf16": [1] * 4})
    first = amp.choose_amp("k", clock.step, clock=clock)
    assert first.load == 64.0 and "busy (load 64.0" in first.describe()
    again = amp.choose_amp("k", clock.step, clock=clock)
    assert again.cached and "busy" in again.describe()
    assert "busy" not in amp.AmpChoice(None, {"fp32": 1.0}, "r", load=0.0).describe()


def test_unreadable_cache_is_measured_again_with_a_warning(_cache: Path):
    _cache.mkdir(parents=True)
    (_cache / "amp.json").write_text("{not json")
    clock = FakeClock({"fp32": [2] * 4, "bf16": [1] * 4})
    with pytest.warns(UserWarning, match="unreadable amp cache"):
        choice = amp.choose_amp("k", clock.step, clock=clock)
    assert choice.amp == "bf16"
    assert json.loads((_cache / "amp.json").read_text())["entries"]["k"]["amp"] == "bf16"


def test_key_names_the_machine_torch_and_model():
    key = json.loads(amp.cache_key("fcn8s_vgg16", {"layout": "same"}, 11, (4, 3, 64, 64), "cpu",
                                   False))  # fmt: skip
    assert key["torch"] == torch.__version__ and key["model"] == "fcn8s_vgg16"
    assert key["machine"] == amp.machine_name("cpu") and "threads" in key["machine"]
    assert key["input"] == [4, 3, 64, 64] and key["options"] == {"layout": "same"}


# ------------------------------------------------------------------ on a real model, CPU


def test_auto_amp_on_a_model_leaves_it_as_it_was():
    model = build_model("fcn8s_vgg16", num_classes=3, width=0.0625, layout="same").eval()
    for p in model.parameters():  # score layers non-zero, so every weight gets a gradient
        torch.nn.init.normal_(p, std=0.05)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, t = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    rng = torch.get_rng_state()
    lines = []
    choice = amp.auto_amp(model, x, t, F.cross_entropy, name="fcn8s_vgg16", rounds=1,
                          log=lines.append)  # fmt: skip
    assert choice.amp in (None, "bf16") and set(choice.times) == {"fp32", "bf16"}
    assert all(v > 0 for v in choice.times.values())
    assert lines == [choice.describe()] and "amp auto:" in lines[0]
    assert torch.equal(torch.get_rng_state(), rng)  # dropout draws were forked off
    assert not model.training and all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert amp.auto_amp(model, x, t, F.cross_entropy, name="fcn8s_vgg16", log=None).cached


def test_train_with_amp_auto_on_cpu(tmp_path: Path, capsys):
    config = TrainConfig(model="fcn8s_vgg16", model_options={"width": 0.0625, "layout": "same"},
                         recipe="modern", data="digits", batch_size=2, steps=1, amp="auto",
                         data_options={"n_train": 8, "n_val": 4, "size": 48,
                                       "scale": (1.0, 1.5)},
                         out=str(tmp_path / "run"), log_every=1)  # fmt: skip
    result = train(config, progress=False)
    assert result["amp"] in (None, "bf16") and result["amp"] == result["amp_choice"].amp
    assert "amp auto:" in capsys.readouterr().out
    assert result["checkpoint"].exists() and "mean_iu" in result["metrics"]
    key = json.loads(next(iter(json.loads(amp.cache_path().read_text())["entries"])))
    assert key["model"] == "fcn8s_vgg16" and key["input"] == [2, 3, 48, 48]


def test_config_accepts_auto_and_names_it_in_errors():
    TrainConfig(amp="auto").check()
    with pytest.raises(ValueError, match="auto"):
        TrainConfig(amp="fp8").check()


def test_cli_train_accepts_amp_auto():
    from fcnseg.cli import _parser

    assert _parser().parse_args(["train", "--amp", "auto"]).amp == "auto"
    with pytest.raises(SystemExit):
        _parser().parse_args(["train", "--amp", "fp8"])
