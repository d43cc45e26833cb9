"""FastFCN and `fcnseg bench` on the release's 15 nets: two streams, two heads, the 4-channel
first conv, CaffeNet's LRN and grouped convs, exact to the plain model."""

import pytest
import torch
from conftest import randomize_

import fcnseg
from fcnseg import kernels
from fcnseg.cli import fast_model, main
from fcnseg.fast import FastFCN

H, W = 45, 61  # odd, and small enough that the core is a small part of each padded map


def tiny(name: str, dtype=torch.float64) -> torch.nn.Module:
    """Width 1/16, every weight and bias random and non-zero (biases make the background of
    the 100-pixel padding non-trivial; the score layers would be zero)."""
    model = fcnseg.build_model(name, width=0.0625).to(dtype).eval()
    return randomize_(model, std=0.1)


def outputs(y) -> dict[str, torch.Tensor]:
    return y if isinstance(y, dict) else {"": y}


def rel_errs(out, ref) -> dict[str, float]:
    """Per head: max |out - ref| / max |ref|."""
    out, ref = outputs(out), outputs(ref)
    assert list(out) == list(ref)
    for k in ref:
        assert out[k].shape == ref[k].shape and out[k].dtype == ref[k].dtype, k
    return {k: ((out[k] - ref[k]).abs().max() / ref[k].abs().max()).item() for k in ref}


def release_input(model, n: int, dtype) -> torch.Tensor | dict[str, torch.Tensor]:
    x = model.example_input(n, H, W, generator=torch.Generator().manual_seed(3))
    return {k: v.to(dtype) for k, v in x.items()} if isinstance(x, dict) else x.to(dtype)


@pytest.mark.parametrize("name", fcnseg.reference_nets())
def test_release_net_exact(name):
    """float64 to 1e-10, float32 to 1e-5 (as tests/test_fast.py), per head. float64: torch's
    conv (grouped ones included) and Winograd F(4x4) on every ungrouped 3x3 conv with a
    buffer (measure=False, winograd=1: the first kernel allowed); float32: the kernels
    measured here, and every kernel FastFCN has (Winograd F(4x4), oneDNN in place on the
    other convs, grouped ones included, fc6/fc7 as one GEMM)."""
    model = tiny(name)
    x = release_input(model, 1, torch.float64)
    with torch.no_grad():
        ref = model(x)
        for options in ({"winograd": None}, {}):
            errs = rel_errs(FastFCN(model, measure=False, **options)(x), ref)
            assert max(errs.values()) <= 1e-10, (options, errs)
    model = model.float()
    x = release_input(model, 1, torch.float32)
    with torch.no_grad():
        ref = model(x)
        for options in ({}, {"measure": False}):
            errs = rel_errs(FastFCN(model, **options)(x), ref)
            assert max(errs.values()) <= 1e-5, (options, errs)


def test_caffenet_lrn_and_grouped_convs():
    """voc-fcn-alexnet: LRN runs on the image-dependent core only (smaller than its map), the
    grouped convs on oneDNN in place where it runs, and the result is the model's."""
    model = tiny("voc-fcn-alexnet", torch.float32)
    assert isinstance(model.norm1, torch.nn.LocalResponseNorm) and model.conv2.groups == 2
    fast = FastFCN(model, measure=False)
    x = release_input(model, 1, torch.float32)
    with torch.no_grad():
        assert max(rel_errs(fast(x), model(x)).values()) <= 1e-5
    (state,) = fast._cache.values()
    by_name = {s.name: (s, g, k) for s, g, k in
               zip(fast.steps, state["geoms"], state["kinds"], strict=True)}  # fmt: skip
    for norm in ("norm1", "norm2"):
        s, g, kind = by_name[norm]
        assert s.kind == "lrn" and kind == "pointwise"
        assert not g.direct and g.out_core == g.in_core  # a core smaller than the map
    grouped = [n for n, (s, _, _) in by_name.items() if s.kind == "conv" and s.layer.groups == 2]
    assert grouped == ["relu2", "relu4", "relu5"]
    if kernels.available(x):
        assert {by_name[n][2] for n in grouped} == {"inplace"}


def test_two_streams_follow_the_models_fusion_weights():
    """Late fusion: each stream's trunk runs on the fast path (one cached plan per stream), the
    score maps are summed with the model's stream weights, whatever they are."""
    model = tiny("nyud-fcn32s-color-hha")
    fast = FastFCN(model, measure=False)
    x = release_input(model, 1, torch.float64)
    with torch.no_grad():
        assert max(rel_errs(fast(x), model(x)).values()) <= 1e-10
        assert {key[0] for key in fast._cache} == {"color", "hha"}
        model.stream_weights = {"color": 0.2, "hha": 0.9}
        assert max(rel_errs(fast(x), model(x)).values()) <= 1e-10
        only_hha = {"color": torch.zeros_like(x["color"]), "hha": x["hha"]}
        assert max(rel_errs(fast(only_hha), model(only_hha)).values()) <= 1e-10


def test_two_heads_and_bf16_keep_the_outputs_structure():
    """SIFT Flow: a dict {"sem": 33 classes, "geo": 3} from FastFCN, fp32 and bf16 alike;
    bf16 (not exact) within 0.1 of the model, as tests/test_fast.py asks of the one-head nets."""
    model = tiny("siftflow-fcn16s", torch.float32)
    x = release_input(model, 1, torch.float32)
    with torch.no_grad():
        ref = model(x)
        for fast in (FastFCN(model), FastFCN(model, bfloat16=True, measure=False)):
            out = fast(x)
            assert list(out) == ["sem", "geo"]
            assert out["sem"].shape == (1, 33, H, W) and out["geo"].shape == (1, 3, H, W)
            assert max(rel_errs(out, ref).values()) < (0.1 if fast.dtype else 1e-5)


@pytest.mark.parametrize("name", ["voc-fcn-alexnet", "nyud-fcn32s-color-d",
                                  "nyud-fcn32s-color-hha"])  # fmt: skip
def test_bf16_on_caffenet_and_nyud(name):
    model = tiny(name, torch.float32)
    x = release_input(model, 1, torch.float32)
    with torch.no_grad():
        out = FastFCN(model, bfloat16=True, measure=False)(x)
        assert out.dtype == torch.float32 and max(rel_errs(out, model(x)).values()) < 0.1


def test_wrong_inputs_get_the_models_errors():
    with torch.no_grad():
        hha = FastFCN(tiny("nyud-fcn32s-color-hha"))
        with pytest.raises(ValueError, match=r"expected a dict of inputs \['color', 'hha'\]"):
            hha(torch.randn(1, 3, H, W, dtype=torch.float64))
        with pytest.raises(ValueError, match="input 'hha': expected a float tensor"):
            hha({"color": torch.randn(1, 3, H, W, dtype=torch.float64),
                 "hha": torch.randn(1, 4, H, W, dtype=torch.float64)})  # fmt: skip
        rgbd = FastFCN(tiny("nyud-fcn32s-color-d"))
        with pytest.raises(ValueError, match=r"\(N, 4, H, W\), got \(1, 3, 45, 61\)"):
            rgbd(torch.randn(1, 3, H, W, dtype=torch.float64))


def test_fast_option_takes_every_release_net_and_refuses_googlenet():
    for name in ("nyud-fcn32s-color-hha", "siftflow-fcn8s", "voc-fcn-alexnet"):
        fast = fast_model(fcnseg.build_model(name, width=0.0625).eval(), True, "cpu")
        assert isinstance(fast, FastFCN) and fast.head_names == fast.model.head_names
    with pytest.raises(ValueError, match=r"pad_to=32.*run without --fast"):
        fast_model(fcnseg.build_model("fcn32s_googlenet").eval(), True, "cpu")


@pytest.mark.parametrize("name", ["nyud-fcn32s-color-d", "nyud-fcn32s-color-hha",
                                  "siftflow-fcn8s", "voc-fcn-alexnet"])  # fmt: skip
def test_bench_command_on_each_kind_of_net(name, capsys):
    argv = ["bench", "--model", name, "--size", "64", "--width", "0.125", "--repeats", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = {
        line.split("|")[1].strip(): line.split("|")[2:-1]
        for line in out.splitlines()
        if line.startswith("| ") and "---" not in line
    }
    assert {"eager fp32 (baseline)", "FastFCN fp32 (exact)", "FastFCN bf16"} <= set(rows)
    assert float(rows["FastFCN fp32 (exact)"][0]) > 0  # seconds
    heads = 2 if name.startswith("siftflow") else 1
    assert len(rows["FastFCN fp32 (exact)"]) == 3 + 2 * heads
    errors = [float(v) for v in rows["FastFCN fp32 (exact)"][3::2]]
    assert max(errors) < 1e-5  # exact up to float32 rounding
    if heads == 2:
        assert "max rel. error (sem)" in out and "same argmax (geo)" in out
    if name == "nyud-fcn32s-color-hha":
        assert "color (1, 3, 64, 64), hha (1, 3, 64, 64)" in out
    if name == "nyud-fcn32s-color-d":
        assert "input (1, 4, 64, 64)" in out


def test_bench_googlenet_says_what_it_could_not_run(capsys):
    assert main(["bench", "--model", "fcn32s_googlenet", "--size", "32", "--width", "0.125",
                 "--repeats", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "takes no width option: timed at full width" in out
    assert "FastFCN does not run fcn32s_googlenet" in out and "| eager fp32 (baseline) |" in out
