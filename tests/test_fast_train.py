"""FastTrainFCN gives the model's own loss and gradients (timings: benchmarks/train_step.py)."""

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_
from torch import nn

import fcnseg
from fcnseg.fast.train import FastTrainFCN, background_maps
from fcnseg.models.backbones import VGG16, build_trunk
from fcnseg.models.fcn import FCN, HEADS

NAMES = ["fcn32s_vgg16", "fcn16s_vgg16", "fcn8s_vgg16", "fcn8s_atonce_vgg16", "fcn32s_alexnet"]
SIZES = [(1, 1), (2, 3), (31, 45), (97, 130)]


def tiny(name: str, dtype=torch.float64, **kw) -> nn.Module:
    """Width 1/16, every weight and bias random and non-zero (biases make the padding's
    background non-trivial), dropout active (train mode)."""
    model = fcnseg.build_model(name, num_classes=5, width=0.0625, **kw).to(dtype)
    return randomize_(model, std=0.1).train()


def step(net, model, x, y, seed=3) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of one forward/backward; the seed fixes the dropout masks."""
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(net(x), y, ignore_index=255, reduction="sum")
    loss.backward()
    return loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


def assert_same_step(model, x, y, loss_tol: float, grad_tol: float, **fast_options) -> float:
    """Loss within loss_tol and every parameter gradient within grad_tol (relative to the
    gradient's largest entry) of the model's own; returns the worst gradient error."""
    fast = FastTrainFCN(model, **fast_options)
    loss0, g0 = step(model, model, x, y)
    loss1, g1 = step(fast, model, x, y)
    assert abs(loss1 - loss0) <= loss_tol * abs(loss0), (loss0, loss1)
    assert g0.keys() == g1.keys()
    worst = 0.0
    for k in g0:
        assert torch.isfinite(g1[k]).all(), k
        scale = g0[k].abs().max().item()
        err = (g1[k] - g0[k]).abs().max().item() / (scale or 1.0)
        assert err <= grad_tol, (k, err)
        worst = max(worst, err)
    return worst


def data(n, h, w, dtype=torch.float64, classes=5):
    g = torch.Generator().manual_seed(h * 1000 + w)
    x = torch.randn(n, 3, h, w, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n, h, w), generator=g)
    y[torch.rand(n, h, w, generator=g) < 0.1] = 255
    return x, y


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("winograd", [None, 1])
def test_float64_loss_and_gradients_equal_the_models(name, winograd):
    """winograd=1: every 3x3 conv runs Winograd F(4x4) for its output and both gradients,
    whatever its map's size (by default only convs with >= 128 input channels on maps of at
    least 34 do; the tiny models have 4 to 32)."""
    model = tiny(name)
    for h, w in SIZES:
        x, y = data(2, h, w)
        assert_same_step(model, x, y, 1e-12, 1e-10, winograd=winograd, winograd_min_map=0)


@pytest.mark.parametrize("name", ["fcn8s_vgg16", "fcn32s_alexnet"])
def test_bands_and_plain_convs_give_the_same_gradients(name):
    """bands=True (convs on the zero-padded core + the rim's border bands) and gemm_fc=False."""
    model = tiny(name)
    for h, w in [(1, 1), (9, 7), (31, 45), (64, 33)]:
        x, y = data(2, h, w)
        assert_same_step(model, x, y, 1e-12, 1e-10, bands=True)
        assert_same_step(model, x, y, 1e-12, 1e-10, bands=True, gemm_fc=False)


@pytest.mark.parametrize("name", ["fcn8s_vgg16", "fcn32s_alexnet"])
def test_float32_at_voc_and_large_sizes(name):
    """float32: loss within 1e-6 of the model's. Gradients: the model's own float32 ones are
    up to 5e-5 (375x500) and 3e-4 (1000x600) off the exact (float64) ones, relative to their
    largest entry (sums over up to 1.4M positions; a ReLU whose input is within rounding of 0
    opens in one and not the other), so 1e-5 against them cannot hold. Instead, with direct
    convs every gradient is within 2e-5 of the exact one or no further than twice the model's;
    with Winograd F(4x4) on every conv after the first (its transforms round ~10x the direct
    conv's, so ReLUs flip more often) no further than 20x the model's worst layer."""
    model = tiny(name, torch.float32, dropout=0.0)
    exact = copy.deepcopy(model).double()
    direct = FastTrainFCN(model, winograd=None)
    wino = FastTrainFCN(model, winograd=4, winograd_min_map=0)
    for n, (h, w) in [(2, (1, 1)), (2, (31, 45)), (1, (375, 500)), (1, (1000, 600))]:
        x, y = data(n, h, w, torch.float32)
        loss0, g0 = step(model, model, x * 10, y)
        _, g64 = step(exact, exact, x.double() * 10, y)

        def errs(g, g64=g64):
            return {k: (g[k].double() - e).abs().max().item() / (e.abs().max().item() or 1.0)
                    for k, e in g64.items()}  # fmt: skip

        model_err = errs(g0)
        for fast in (direct, wino):
            loss1, g1 = step(fast, model, x * 10, y)
            assert abs(loss1 - loss0) <= 1e-6 * abs(loss0), (h, w, loss0, loss1)
            for k, err in errs(g1).items():
                bound = 2 * model_err[k] if fast is direct else 20 * max(model_err.values())
                assert err <= max(2e-5, bound), (h, w, k, fast.winograd, err, model_err[k])


def test_padded_batch_and_channels_last():
    """A batch of different sizes padded with zeros (labels 255 there), in NHWC."""
    model = tiny("fcn8s_vgg16").to(memory_format=torch.channels_last)
    x, y = data(3, 67, 81)
    x[1, :, 40:], y[1, 40:] = 0, 255
    x[2, :, :, 50:], y[2, :, 50:] = 0, 255
    x = x.contiguous(memory_format=torch.channels_last)
    assert_same_step(model, x, y, 1e-12, 1e-10)
    assert_same_step(model, x, y, 1e-12, 1e-10, winograd=1, winograd_min_map=0)


@pytest.mark.parametrize("learn", [False, True])
def test_frozen_and_learnable_upsamplers(learn):
    model = tiny("fcn8s_vgg16")
    ups = {k: v.clone() for k, v in fcnseg.build_model("fcn8s_vgg16", num_classes=5,
                                                       width=0.0625).state_dict().items()
           if k.startswith("upscore")}  # fmt: skip
    model.load_state_dict({k: v.double() for k, v in ups.items()}, strict=False)  # bilinear
    for name, p in model.named_parameters():
        if name.startswith("upscore"):
            p.requires_grad_(learn and name.startswith("upscore2"))
    x, y = data(2, 45, 38)
    assert_same_step(model, x, y, 1e-12, 1e-10)
    if learn:
        assert model.upscore2.weight.requires_grad


def test_accumulated_steps_equal_the_models():
    model = tiny("fcn16s_vgg16")
    fast = FastTrainFCN(model)
    batches = [data(2, 40, 52), data(1, 17, 9)]  # micro-batches of different sizes
    grads = []
    for net in (model, fast):
        torch.manual_seed(11)
        model.zero_grad(set_to_none=True)
        for x, y in batches:
            F.cross_entropy(net(x), y, ignore_index=255, reduction="sum").backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-10, atol=1e-12, msg=k)


def test_dropout_on_a_map_with_background_draws_the_models_masks():
    """A dropout where part of the map is background: the full map is pasted, then dropped
    with the model's own mask shape (the rest of the trunk runs on full maps)."""
    trunk = build_trunk(VGG16, width=0.0625)
    layers = OrderedDict()
    for k, v in trunk.layers.items():
        layers[k] = v
        if k == "relu2_2":
            layers["drop2"] = nn.Dropout(0.3)
    trunk.layers = layers
    model = randomize_(FCN(trunk, HEADS["fcn8s"], 5).double(), std=0.1).train()
    x, y = data(2, 29, 35)
    assert_same_step(model, x, y, 1e-12, 1e-10)
    fast = FastTrainFCN(model)
    with torch.no_grad():  # and the masks are really drawn: two seeds, two outputs
        torch.manual_seed(1)
        a = fast(x)
        torch.manual_seed(2)
        assert not torch.equal(a, fast(x))


@pytest.mark.parametrize("name", ["fcn8s_vgg16", "fcn32s_alexnet"])
@pytest.mark.parametrize("size", [(1, 1), (5, 300), (130, 97)])
def test_compact_background_is_the_black_images_activations(name, size):
    """Every step's background, gathered from its compact map, equals the trunk run on an
    all-zero image of the full size."""
    model = tiny(name).eval()
    fast = FastTrainFCN(model)
    z = torch.zeros(1, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        for s, bg in zip(fast.steps, background_maps(fast, *size), strict=True):
            z = fast._run(s, z)
            assert bg.shape == z.shape, s.name
            torch.testing.assert_close(bg, z, rtol=1e-12, atol=1e-12, msg=s.name)


def test_bf16_autocast_runs_and_stays_close():
    """AMP (bf16 autocast on CPU): not exact for either path; both near the float32 loss."""
    model = tiny("fcn8s_vgg16", torch.float32, dropout=0.0)
    x, y = data(1, 45, 52, torch.float32)
    ref, _ = step(model, model, x, y)
    with torch.autocast("cpu", torch.bfloat16):
        loss, grads = step(FastTrainFCN(model), model, x, y)
    assert abs(loss - ref) <= 0.05 * abs(ref)
    assert all(torch.isfinite(g).all() and g.dtype == torch.float32 for g in grads.values())


def test_eval_mode_and_no_grad_give_the_models_output():
    model = tiny("fcn8s_atonce_vgg16").eval()
    x, _ = data(2, 50, 61)
    with torch.no_grad():
        torch.testing.assert_close(FastTrainFCN(model)(x), model(x), rtol=1e-12, atol=1e-12)


def test_refuses_what_it_cannot_do_exactly():
    with pytest.raises(TypeError, match="wraps an fcnseg FCN"):
        FastTrainFCN(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="without --fast"):
        FastTrainFCN(fcnseg.build_model("fcn32s_googlenet", num_classes=3))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        FastTrainFCN(tiny("fcn32s_vgg16"))(torch.zeros(1, 4, 8, 8, dtype=torch.float64))


def test_training_with_fast_reaches_the_same_weights(tmp_path):
    """engine.train with fast=True and without: same seed, same weights after K steps (the
    reference layout, dropout on, SGD momentum, accumulate 2); and a --fast run stopped and
    resumed."""
    from fcnseg.checkpoint import load_checkpoint
    from fcnseg.engine import TrainConfig, train

    base = dict(model="fcn8s_vgg16", model_options={"width": 0.0625}, recipe="cvpr", lr=1e-3,
                data="digits", batch_size=4, accumulate=2, steps=3, ckpt_every=3, log_every=1,
                data_options={"n_train": 12, "n_val": 2, "size": 48,
                              "scale": (1.0, 1.5)})  # fmt: skip
    out = {}
    for fast in (False, True):
        cfg = TrainConfig(**base, fast=fast, out=str(tmp_path / f"fast{int(fast)}"))
        train(cfg, progress=False)
        out[fast] = load_checkpoint(tmp_path / f"fast{int(fast)}" / "last.pt")["model"]
    cut = TrainConfig(**{**base, "steps": 2}, fast=True, out=str(tmp_path / "cut"))
    train(cut, progress=False)  # stopped at 2, resumed to 3 with --fast: the same run
    train(TrainConfig(**base, fast=True, out=str(tmp_path / "cut")), resume=True, progress=False)
    resumed = load_checkpoint(tmp_path / "cut" / "last.pt")["model"]
    changed = False
    start = fcnseg.build_model("fcn8s_vgg16", num_classes=11, width=0.0625).state_dict()
    for k, v in out[False].items():
        torch.testing.assert_close(out[True][k], v, rtol=1e-4, atol=1e-6, msg=k)
        torch.testing.assert_close(resumed[k], v, rtol=1e-4, atol=1e-6, msg=k)
        changed |= k in start and not torch.equal(v, start[k])
    assert changed


@pytest.mark.slow
def test_two_processes_with_fast_match_one_plain(tmp_path):
    """DDP over gloo (2 ranks x 2 images, --fast) == 1 process x 4 images without --fast."""
    import json
    import os
    import subprocess
    import sys

    from fcnseg.checkpoint import load_checkpoint

    def run(out, *extra):
        args = ["train", "--model", "fcn8s_vgg16", "--width", "0.0625", "--recipe", "cvpr",
                "--lr", "0.01", "--batch-size", "4", "--steps", "2", "--model-option",
                "dropout=0", "--data-option", "n_train=8", "--data-option", "n_val=2",
                "--data-option", "size=48", "--data-option", "scale=1.0,1.5",
                "--out", str(tmp_path / out), *extra]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, "-m", "fcnseg", *args], env=env, timeout=600)

    assert run("one").returncode == 0
    assert run("two", "--fast", "--nproc", "2").returncode == 0
    assert json.loads((tmp_path / "two" / "config.json").read_text())["fast"] is True
    a = load_checkpoint(tmp_path / "one" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "two" / "last.pt")["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("bands", [False, True])
def test_caffenet_lrn_and_grouped_convs_train_exactly(bands):
    """voc-fcn-alexnet (the release's CaffeNet FCN): its LRN runs on the core and on the
    compact background alike (across channels, per position), its grouped conv2/4/5 by
    torch's grouped conv; loss and every gradient equal the model's (float64), dropout on."""
    model = randomize_(fcnseg.build_model("voc-fcn-alexnet", width=0.0625).double(), std=0.1)
    model.train()
    assert isinstance(model.norm1, nn.LocalResponseNorm) and model.conv2.groups == 2
    fast = FastTrainFCN(model, bands=bands)
    assert {s.kind for s in fast.steps} == {"conv", "pool", "lrn"}
    for h, w in [(1, 1), (31, 45), (97, 130)]:
        x, y = data(2, h, w, classes=model.num_classes)
        assert_same_step(model, x, y, 1e-12, 1e-10, bands=bands)
