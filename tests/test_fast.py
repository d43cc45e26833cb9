"""FastFCN gives the model's own outputs: correctness only (timings: benchmarks/inference.py)."""

import pytest
import torch
from conftest import randomize_

import fcnseg
from fcnseg import kernels
from fcnseg.fast import FastFCN, bf16_forward, core_interval, tuning

SIZES = [(1, 1), (31, 45), (97, 130), (375, 500)]
VGG = ["fcn32s_vgg16", "fcn16s_vgg16", "fcn8s_vgg16", "fcn8s_atonce_vgg16"]


def tiny(name: str, *, keep_upsamplers: bool = False, **kw) -> torch.nn.Module:
    """Width 1/8, float64, every weight and bias random and non-zero (biases make the padding's
    background non-trivial). keep_upsamplers: leave the bilinear (diagonal) upsamplers as built."""
    model = fcnseg.build_model(name, num_classes=5, width=0.125, **kw).double().eval()
    ups = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("upscore")}
    randomize_(model, std=0.1)
    if keep_upsamplers:
        model.load_state_dict(ups, strict=False)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", [*VGG, "fcn32s_alexnet"])
def test_exact_at_odd_sizes(name):
    model = tiny(name)
    fast = FastFCN(model)
    for h, w in SIZES:
        n = 1 if h * w > 10_000 else 2  # batches too, where it is cheap
        x = torch.randn(n, 3, h, w, dtype=torch.float64)
        with torch.no_grad():
            ref, out = model(x), fast(x)
        assert out.shape == ref.shape == (n, 5, h, w)
        assert rel_err(out, ref) < 1e-12, (h, w)


@pytest.mark.parametrize("kind", ["winograd4", "winograd"])
@pytest.mark.parametrize("name", [*VGG, "fcn32s_alexnet"])
def test_exact_with_winograd_everywhere(name, kind, monkeypatch):
    """winograd=1, measure=False: every 3x3 conv of the trunk that has a buffer runs F(4x4,
    3x3), the first kernel allowed; F(2x2, 3x3) everywhere by making it every layer's choice."""
    if kind == "winograd":
        monkeypatch.setattr(
            tuning,
            "choose",
            lambda key, found, trial, rounds=2: kind if kind in found else found[-1],
        )
    model = tiny(name)
    fast = FastFCN(model, winograd=1, measure=kind == "winograd")
    for h, w in [(1, 1), (31, 45), (97, 130)]:
        x = torch.randn(2, 3, h, w, dtype=torch.float64)
        with torch.no_grad():
            assert rel_err(fast(x), model(x)) < 1e-12, (h, w)
    for state in fast._cache.values():
        three = [k for s, k in zip(fast.steps, state["kinds"], strict=True)
                 if s.kind == "conv" and tuple(s.layer.kernel_size) == (3, 3)]  # fmt: skip
        assert three and set(three) == {kind}


def test_float32_kernels_and_kept_buffers():
    """float32 on CPU: oneDNN in place and Winograd, within 1e-5 of the model; the features
    handed out are copies, not the buffers the next call overwrites."""
    model = tiny("fcn8s_vgg16").float()
    # width 1/8: conv3-5 have 32-64 input channels
    fast = FastFCN(model, winograd=32, measure=False)
    a, b = torch.randn(1, 3, 90, 71), torch.randn(1, 3, 90, 71)
    with torch.no_grad():
        fa = fast.trunk(a)
        kept = {k: v.clone() for k, v in fa.items()}
        assert rel_err(fast(b), model(b)) < 1e-5
        assert rel_err(fast(a), model(a)) < 1e-5
    kinds = set(next(iter(fast._cache.values()))["kinds"])
    assert "winograd4" in kinds  # F(4x4, 3x3): the first allowed
    if kernels.available(a):
        assert "inplace" in kinds
    for k in kept:  # the call on b did not change what the call on a returned
        assert torch.equal(fa[k], kept[k]), k


@pytest.mark.parametrize(
    "options", [{}, {"channels_last": False}, {"matmul_fc": False}, {"winograd": None}]
)
def test_exact_with_bilinear_upsamplers_and_options(options):
    model = tiny("fcn8s_vgg16", keep_upsamplers=True)  # diagonal: grouped transposed convs
    fast = FastFCN(model, **options)
    x = torch.randn(1, 3, 97, 130, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) < 1e-12


def test_same_layout_and_float32():
    model = tiny("fcn8s_vgg16", layout="same").float()
    x = torch.randn(1, 3, 61, 90)
    with torch.no_grad():
        assert rel_err(FastFCN(model)(x), model(x)) < 1e-5


def test_cache_follows_shapes_and_weights():
    model = tiny("fcn16s_vgg16")
    fast = FastFCN(model, max_cached=1)
    a = torch.randn(1, 3, 40, 50, dtype=torch.float64)
    b = torch.randn(1, 3, 64, 33, dtype=torch.float64)
    with torch.no_grad():
        for x in (a, b, a):  # shape changes evict and rebuild the background
            assert rel_err(fast(x), model(x)) < 1e-12
        assert len(fast._cache) == 1
        assert list(fast._arenas) == [torch.float64]  # one set of work arenas for all sizes
        model.conv1_1.bias.add_(0.5)  # new weights: the cached background is stale until cleared
        fast.clear_cache()
        assert rel_err(fast(a), model(a)) < 1e-12


def test_core_interval_matches_receptive_fields():
    # conv1_1 of the reference: 3x3, pad 100 on a 500 image -> 698 outputs, image-dependent 98..599
    assert core_interval((0, 500), 500, 3, 1, 100, 698) == (98, 600)
    # a 2x2 / 2 pool of a core 97..601 in a 698 map -> 48..300
    assert core_interval((97, 601), 698, 2, 2, 0, 349) == (48, 301)


def test_rejects_training_mode_and_other_trunks():
    model = tiny("fcn32s_vgg16").train()
    with pytest.raises(RuntimeError, match="eval"):
        FastFCN(model)(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="pad"):
        FastFCN(fcnseg.build_model("fcn32s_googlenet"))


def test_bf16_paths_agree_roughly():
    model = tiny("fcn8s_vgg16", keep_upsamplers=True).float()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        ref = model(x)
        for out in (bf16_forward(model, x), FastFCN(model, bfloat16=True)(x)):
            assert out.dtype == torch.float32 and out.shape == ref.shape
            assert rel_err(out, ref) < 0.1


def test_bf16_trunk_with_float32_convs():
    """fp32=every conv: a "bf16" trunk that is float32 throughout equals the model to 1e-5;
    a few convs in float32 run beside bf16 ones (their own arenas and kernels)."""
    model = tiny("fcn8s_vgg16", keep_upsamplers=True).float()
    convs = tuple(n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))
    convs = tuple(n for n in convs if not n.startswith(("score", "upscore")))
    x = torch.randn(1, 3, 97, 130)
    with torch.no_grad():
        ref = model(x)
        every = FastFCN(model, bfloat16=True, fp32=convs)
        assert rel_err(every(x), ref) < 1e-5
        some = FastFCN(model, bfloat16=True, fp32=("conv1_1", "conv3_3", "fc7"))
        assert rel_err(some(x), ref) < 0.1
        assert set(next(iter(some._cache.values()))["need"]) == {torch.bfloat16, torch.float32}
    with pytest.raises(ValueError, match=r"unknown \['conv9_9'\]; the convs are"):
        FastFCN(model, bfloat16=True, fp32=("conv9_9",))
    with pytest.raises(ValueError, match="pass bfloat16=True"):
        FastFCN(model, fp32=("conv1_1",))


def test_changed_weights_rebuild_the_cached_background():
    """The per-size background depends on the weights: an update must not leave it stale."""
    torch.manual_seed(0)
    model = fcnseg.build_model("fcn8s_vgg16", width=0.0625).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    fast = FastFCN(model, winograd=16, measure=False)  # the Winograd weights are remade too
    x = torch.randn(1, 3, 40, 52)
    with torch.no_grad():
        fast(x)
        model.conv1_1.bias.add_(0.5)
        model.conv5_1.weight.mul_(1.5)  # changes every padded (background) activation
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["fcn8s_vgg16", "fcn32s_alexnet"])
def test_background_from_a_smaller_black_image_is_the_full_one(name, monkeypatch):
    """The per-size background is computed on a smaller black input with the same edges (500
    -> 212 for VGG16): its rim strips and tap maps equal those of the full-size computation."""
    model = tiny(name)
    x = torch.randn(1, 3, 500, 377, dtype=torch.float64)
    with torch.no_grad():
        fast = FastFCN(model, measure=False)
        fast(x)
        small = next(iter(fast._cache.values()))
        monkeypatch.setattr(FastFCN, "_small_length", lambda self, length, axis, steps: length)
        full_fast = FastFCN(model, measure=False)
        full_fast(x)
        full = next(iter(full_fast._cache.values()))
    assert small["background_size"][0] < 300 and small["background_size"][1] < 300
    assert full["background_size"] == (500, 377)
    n = 0
    for a, b in zip(small["inputs"], full["inputs"], strict=True):
        if a is not None:
            for (_, _, sa), (_, _, sb) in zip(a.strips, b.strips, strict=True):
                torch.testing.assert_close(sa, sb, rtol=1e-12, atol=1e-12)
                n += 1
    assert n > 20
    for i in small["taps"]:
        torch.testing.assert_close(small["taps"][i], full["taps"][i], rtol=1e-12, atol=1e-12)
