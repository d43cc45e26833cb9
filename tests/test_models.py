"""Every registered model: shapes for any input size, reference layout details, gradients."""

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_
from torch import nn

import fcnseg
from fcnseg.models.init import bilinear_kernel, bilinear_upsampler
from fcnseg.models.modern import set_bn

SMALL = {"width": 0.125}  # the paper's topology at 1/8 of the channels: geometry is unchanged


def small(name: str, **kw) -> nn.Module:
    """A tiny net of any name: 4 classes, or a release net's own (its heads as released)."""
    opts = {} if "googlenet" in name else SMALL
    classes = kw.pop("num_classes", None if name in fcnseg.reference_nets() else 4)
    return fcnseg.build_model(name, num_classes=classes, **opts, **kw)


def _classes(model) -> dict:
    return model.num_classes if isinstance(model.num_classes, dict) else {"": model.num_classes}


def test_registry_names():
    names = fcnseg.list_models()
    for required in ("fcn32s_vgg16", "fcn16s_vgg16", "fcn8s_vgg16", "fcn8s_atonce_vgg16",
                     "fcn32s_alexnet", "fcn32s_googlenet"):  # fmt: skip
        assert required in names
    with pytest.raises(ValueError, match="fcn8s_vgg16") as e:
        fcnseg.build_model("fcn8s_vgg")
    assert "Did you mean 'fcn8s_vgg16'" in str(e.value)
    with pytest.raises(ValueError, match="bad option"):
        fcnseg.build_model("fcn32s_googlenet", width=0.5)


@pytest.mark.parametrize("name", fcnseg.list_models())
@pytest.mark.parametrize("size", [(1, 1), (31, 45), (375, 500), (600, 1000)])
def test_output_matches_input_size(name, size):
    model = small(name).eval()
    with torch.no_grad():
        ys = model.outputs(model(model.example_input(1, *size)))
    for head, c in _classes(model).items():
        assert ys[head].shape == (1, c, *size)
        assert torch.isfinite(ys[head]).all()


@pytest.mark.parametrize("size", [(1, 1), (33, 70), (64, 64), (97, 130)])
def test_same_layout_any_size(size):
    model = small("fcn8s_vgg16", layout="same").eval()
    assert model(torch.randn(2, 3, *size)).shape == (2, 4, *size)


def test_same_layout_has_exact_stride():
    ref, same = small("fcn32s_vgg16"), small("fcn32s_vgg16", layout="same")
    feats = {}
    for tag, m in (("ref", ref), ("same", same)):
        m.pool5.register_forward_hook(lambda _m, _i, o, tag=tag: feats.__setitem__(tag, o.shape))
        m.eval()(torch.randn(1, 3, 256, 256))
    assert feats["same"][-2:] == (8, 8)  # exactly 256 / 32
    assert feats["ref"][-2:] == (15, 15)  # conv1_1 pad 100: 454 -> 227 -> 114 -> 57 -> 29 -> 15


@pytest.mark.parametrize("name", fcnseg.list_models())
def test_every_parameter_learns(name):
    model = randomize_(small(name)).train()
    target = torch.randint(0, 4, (2, 40, 52))

    def grads() -> dict[str, torch.Tensor | None]:
        model.zero_grad(set_to_none=True)
        ys = model.outputs(model(model.example_input(2, 40, 52)))
        loss = sum(F.cross_entropy(ys[k], target.clamp(max=c - 1))
                   for k, c in _classes(model).items())  # fmt: skip
        loss.backward()
        return {n: p.grad for n, p in model.named_parameters()}

    got = grads()
    if getattr(model, "bn_mode", None) is not None:  # BN trunks (ResNet, MobileNet, EfficientNet)
        # with batch statistics, a projection's BN bias before a conv + BN is removed by that
        # BN's mean (no gradient by construction); with frozen statistics it has one
        set_bn(model, "frozen")
        frozen = grads()
        dead = [n for n, g in got.items() if g is not None and not g.abs().sum()]
        assert all(n.endswith("bn.bias") for n in dead), dead
        got.update({n: frozen[n] for n in dead})
    release = name in fcnseg.reference_nets()  # the release fixes every deconvolution (lr 0)
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            layer = pname.split(".")[0]
            assert layer in {h.final for h in model.heads.values()} or (
                release and layer.startswith("upscore")
            ), f"{pname} is frozen"
            continue
        g = got[pname]
        assert g is not None and g.abs().sum() > 0, f"{pname} got no gradient"
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("name", ["fcn32s_vgg16", "fcn16s_vgg16", "fcn8s_vgg16"])
def test_reference_layer_details(name):
    m = small(name)
    assert m.conv1_1.padding == (100, 100)
    assert m.fc6.kernel_size == (7, 7) and m.fc6.padding == (0, 0)
    assert m.fc7.kernel_size == (1, 1)
    pools = [mod for mod in m.modules() if isinstance(mod, nn.MaxPool2d)]
    assert len(pools) == 5 and all(p.ceil_mode for p in pools)
    drops = [mod for mod in m.modules() if isinstance(mod, nn.Dropout | nn.Dropout2d)]
    assert len(drops) == 2 and all(type(d) is nn.Dropout and d.p == 0.5 for d in drops)
    scores = [n for n, _ in m.named_children() if n.startswith("score_")]
    for n in scores:  # zero-initialised class scoring layers
        layer = getattr(m, n)
        assert layer.weight.abs().sum() == 0 and layer.bias.abs().sum() == 0
    ups = {n: mod for n, mod in m.named_children() if isinstance(mod, nn.ConvTranspose2d)}
    for layer in ups.values():
        assert layer.bias is None
        k = layer.kernel_size[0]
        assert torch.equal(layer.weight[1, 1].double(), bilinear_kernel(k).float().double())
        assert layer.weight[0, 1].abs().sum() == 0  # channel diagonal only
    geometry = {n: (u.kernel_size[0], u.stride[0]) for n, u in ups.items()}
    expected = {
        "fcn32s_vgg16": {"upscore": (64, 32)},
        "fcn16s_vgg16": {"upscore2": (4, 2), "upscore16": (32, 16)},
        "fcn8s_vgg16": {"upscore2": (4, 2), "upscore_pool4": (4, 2), "upscore8": (16, 8)},
    }[name]
    assert geometry == expected
    assert not getattr(m, m.head.final).weight.requires_grad  # final upsampling stays bilinear


def test_state_dict_keys_are_reference_names():
    keys = set(small("fcn8s_vgg16").state_dict())
    convs = {f"conv{b}_{i}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)}
    with_bias = convs | {"fc6", "fc7", "score_fr", "score_pool4", "score_pool3"}
    expected = {f"{n}.{p}" for n in with_bias for p in ("weight", "bias")}
    expected |= {"upscore2.weight", "upscore_pool4.weight", "upscore8.weight"}
    assert keys == expected


def test_atonce_scales_skips():
    """At-once FCN-8s == FCN-8s whose skip score weights are scaled by 0.01 / 0.0001."""
    atonce = randomize_(small("fcn8s_atonce_vgg16")).eval()
    plain = small("fcn8s_vgg16").eval()
    state = atonce.state_dict()
    state["score_pool4.weight"] = state["score_pool4.weight"] * 0.01
    state["score_pool3.weight"] = state["score_pool3.weight"] * 0.0001
    plain.load_state_dict(state)
    x = torch.randn(1, 3, 70, 90)
    torch.testing.assert_close(atonce(x), plain(x), rtol=1e-5, atol=1e-6)
    plain.load_state_dict(atonce.state_dict())  # and without the scaling they differ
    assert not torch.allclose(atonce(x), plain(x), rtol=1e-5, atol=1e-6)


def test_width_keeps_topology():
    full, eighth = fcnseg.build_model("fcn8s_vgg16"), small("fcn8s_vgg16", num_classes=21)
    assert full.state_dict().keys() == eighth.state_dict().keys()
    assert eighth.conv1_1.out_channels == 8 and eighth.fc6.out_channels == 512
    n_full = sum(p.numel() for p in full.parameters())
    assert 134e6 < n_full < 135e6  # the paper's 134M parameters for FCN-VGG16


def test_bilinear_kernel_formula():
    k4 = bilinear_kernel(4)  # factor 2, centre 1.5: 1-D profile (0.25, 0.75, 0.75, 0.25)
    torch.testing.assert_close(
        k4[0], torch.tensor([0.25, 0.75, 0.75, 0.25], dtype=torch.float64) * 0.25
    )
    k3 = bilinear_kernel(3)  # odd: factor 2, centre 1: (0.5, 1, 0.5)
    torch.testing.assert_close(k3[1], torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64))
    assert bilinear_kernel(63).argmax() == 31 * 63 + 31  # odd kernel peaks at its centre


@pytest.mark.parametrize("factor", [2, 8, 16, 32])
def test_bilinear_deconv_is_bilinear_interpolation(factor):
    """A fixed bilinear transposed conv (k = 2f, s = f) equals bilinear interpolation inside.

    With padding f/2 the output is exactly f x the input and agrees with
    F.interpolate(mode="bilinear", align_corners=False) away from a rim of f pixels, where
    the deconvolution sees zeros beyond the border and interpolation clamps instead.
    """
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    up = bilinear_upsampler(3, factor, padding=factor // 2).double()
    y = up(x)
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert y.shape == ref.shape
    inner = (slice(None), slice(None), slice(factor, -factor), slice(factor, -factor))
    torch.testing.assert_close(y[inner], ref[inner], rtol=0, atol=1e-12)
    assert (y - ref).abs().max() > 1e-3  # and the rim really differs: the test sees the border


def test_same_layout_saves_about_40_percent_compute():
    """The 100-pixel pad costs ~40% more work at 500x500 (FCN-8s: 181.5 vs 108.3 GMAC)."""
    from fcnseg.flops import count_macs

    ref = sum(count_macs(fcnseg.build_model("fcn8s_vgg16"), 500, 500).values())
    same = sum(count_macs(fcnseg.build_model("fcn8s_vgg16", layout="same"), 500, 500).values())
    assert 181.0e9 < ref < 182.0e9  # matches an independent profile of the reference layout
    assert 0.35 < 1 - same / ref < 0.45
