"""FastTrainFCN's own-backward kernels equal torch's ops (fcnseg.fast.train_ops)."""

import pytest
import torch
import torch.nn.functional as F

from fcnseg import kernels
from fcnseg.fast import train_ops


def grads(fn, *inputs):
    """Output and the gradients of (output * r).sum() for a fixed random r."""
    inputs = [t.detach().clone().requires_grad_(True) if t is not None else None for t in inputs]
    y = fn(*inputs)
    r = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    r = r.to(y.dtype)  # the same draws in float32 and float64
    (y * r).sum().backward()
    return y.detach(), [None if t is None else t.grad for t in inputs]


@pytest.mark.parametrize("pad", [0, 1, 2])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("hw", [(3, 3), (4, 9), (13, 8), (23, 17)])
@pytest.mark.parametrize(("m", "wgrad"), [(2, False), (4, True)])
def test_winograd_conv_and_its_gradients_equal_conv2d_in_float64(pad, relu, bias, hw, m, wgrad):
    """F(2x2) with oneDNN's weight gradient, F(4x4) with Winograd's (FastTrainFCN's choice)."""
    g = torch.Generator().manual_seed(hw[0] * 100 + hw[1])
    x = torch.randn(2, 5, *hw, generator=g, dtype=torch.float64)
    w = torch.randn(7, 5, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64) if bias else None

    def plain(x, w, b):
        y = F.conv2d(x, w, b, padding=pad)
        return y.relu() if relu else y

    assert train_ops.winograd_applies(x, w, (1, 1), (pad, pad), 1)
    y0, g0 = grads(plain, x, w, b)
    y1, g1 = grads(
        lambda x, w, b: train_ops.winograd_conv3x3(x, w, b, pad, relu=relu, m=m, wgrad=wgrad),
        x, w, b,
    )  # fmt: skip
    assert y1.shape == y0.shape
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-12)
    for a, e in zip(g1, g0, strict=True):
        if e is not None:
            torch.testing.assert_close(a, e, rtol=0, atol=1e-11)


@pytest.mark.parametrize("pad", [0, 1, 2])
@pytest.mark.parametrize("wgrad", [False, True])
def test_winograd_weight_gradients_without_the_input_gradient(pad, wgrad):
    """A first layer (its input needs no gradient): the weight and bias gradients through the
    ReLU, with no input gradient's padded copy to share, equal conv2d's in float64."""
    g = torch.Generator().manual_seed(pad)
    x = torch.randn(2, 5, 14, 11, generator=g, dtype=torch.float64)
    w = torch.randn(7, 5, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64)
    r = torch.randn(2, 7, 12 + 2 * pad, 9 + 2 * pad, generator=g, dtype=torch.float64)
    got = []
    for fn in (lambda w, b: F.conv2d(x, w, b, padding=pad).relu(),
               lambda w, b: train_ops.winograd_conv3x3(x, w, b, pad, relu=True, m=4,
                                                       wgrad=wgrad)):  # fmt: skip
        w1, b1 = w.clone().requires_grad_(), b.clone().requires_grad_()
        (fn(w1, b1) * r).sum().backward()
        got.append((w1.grad, b1.grad))
    for a, e in zip(got[1], got[0], strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-11)


@pytest.mark.parametrize(("m", "wgrad", "bounds"), [(2, False, (4, 4, 4)), (2, True, (4, 4, 4)),
                                                    (4, True, (20, 4, 4))])  # fmt: skip
@pytest.mark.parametrize("products", ["bmm", "onednn"])
def test_winograd_float32_rounding_is_near_the_direct_convs(m, wgrad, bounds, products,
                                                            monkeypatch):  # fmt: skip
    """Max error vs float64, relative to the largest entry, for the input, weight and bias
    gradients, within `bounds` times the direct conv's (oneDNN's). Measured (AMD Zen 4): F(2x2)
    5.2e-7 / 4.7e-7 / 1.4e-7 vs direct 2.3e-7 / 1.0e-6 / 1.1e-6; F(4x4) 3.6e-6 (its transforms'
    larger coefficients: ~12x) / 2.2e-6 / 1.4e-7. Both ways of running the Winograd GEMMs
    (MKL's batched GEMM, oneDNN's per component), whichever the measurement would pick."""
    picked = []

    def choose(key, candidates, make_trial, rounds=2):
        picked.append(products)
        return products

    monkeypatch.setattr(train_ops.tuning, "choose", choose)
    monkeypatch.setattr(train_ops, "_chosen", {})  # no choice kept from an earlier test
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 128, 40, 36, generator=g)
    w = torch.randn(128, 128, 3, 3, generator=g) * (2 / 1152) ** 0.5
    b = torch.randn(128, generator=g) * 0.1

    def plain(x, w, b):
        return F.conv2d(x, w, b, padding=1).relu()

    def wino(x, w, b):
        return train_ops.winograd_conv3x3(x, w, b, 1, relu=True, m=m, wgrad=wgrad)

    _, ge = grads(plain, x.double(), w.double(), b.double())
    _, gd = grads(plain, x, w, b)
    _, gw = grads(wino, x, w, b)
    for a, d, e, bound in zip(gw, gd, ge, bounds, strict=True):
        scale = e.abs().max()
        err, direct = (a - e).abs().max() / scale, (d - e).abs().max() / scale
        print(f"float32 rel. error: winograd F({m}x{m}) {err:.1e}, direct {direct:.1e}")
        assert err <= max(bound * direct, 2e-6)
    assert picked or not kernels.available(x)  # the choice was asked for (oneDNN present)


def test_winograd_is_not_used_where_it_does_not_apply():
    x, w = torch.zeros(1, 8, 9, 9), torch.zeros(4, 8, 3, 3)
    assert not train_ops.winograd_applies(x, w, (2, 2), (0, 0), 1)  # stride
    assert not train_ops.winograd_applies(x, w, (1, 1), (3, 3), 1)  # padding > 2
    assert not train_ops.winograd_applies(x, w[:, :4], (1, 1), (0, 0), 2)  # groups
    assert not train_ops.winograd_applies(x, torch.zeros(4, 8, 5, 5), (1, 1), (0, 0), 1)
    assert not train_ops.winograd_applies(x.half(), w.half(), (1, 1), (0, 0), 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not train_ops.winograd_applies(x, w, (1, 1), (0, 0), 1)


@pytest.mark.skipif(not kernels.available(torch.zeros(1)), reason="oneDNN's linear is missing")
@pytest.mark.parametrize("relu", [False, True])
def test_fc_gemm_and_its_gradients_equal_linear(relu):
    g = torch.Generator().manual_seed(2)
    cols = torch.randn(37, 300, generator=g)
    w = torch.randn(64, 300, generator=g) * 0.05
    b = torch.randn(64, generator=g)
    assert train_ops.gemm_applies(cols, w)

    def plain(c, w, b):
        y = F.linear(c, w, b)
        return y.relu() if relu else y

    y0, g0 = grads(plain, cols, w, b)
    y1, g1 = grads(lambda c, w, b: train_ops.fc_gemm(c, w, b, relu=relu), cols, w, b)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    for a, e in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("wgrad", [False, True])
@pytest.mark.parametrize("needs", [(True, False, True), (False, False, True), (True, True, False),
                                   (False, True, True)])  # fmt: skip
def test_winograd_gradients_of_what_is_not_frozen(wgrad, needs):
    """Frozen weights, bias or input (conv1_1's): the others' gradients are still conv2d's."""
    g = torch.Generator().manual_seed(3)
    x, w, b = (torch.randn(*s, generator=g, dtype=torch.float64) for s in
               ((1, 5, 11, 9), (7, 5, 3, 3), (7,)))  # fmt: skip
    for t, need in zip((x, w, b), needs, strict=True):
        t.requires_grad_(need)
    r = torch.randn(1, 7, 11, 9, generator=g, dtype=torch.float64)
    want = [t for t in (x, w, b) if t.requires_grad]
    ys = (F.conv2d(x, w, b, padding=1).relu(),
          train_ops.winograd_conv3x3(x, w, b, 1, relu=True, m=4, wgrad=wgrad))  # fmt: skip
    out = [torch.autograd.grad((y * r).sum(), want) for y in ys]
    for a, e in zip(out[1], out[0], strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-12)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(
    ("stride", "pad", "groups"), [(1, 1, 1), (4, 0, 1), (1, 2, 2), (2, 100, 1)]
)
@pytest.mark.parametrize("needs", [(True, True, True), (False, True, True), (True, False, False)])
@pytest.mark.parametrize("relu", [False, True])
def test_direct_conv_and_its_gradients_equal_conv2d(layout, stride, pad, groups, needs, relu):
    """The convs FastTrainFCN leaves to torch's kernels (conv1_1 - conv2_1, CaffeNet's strided
    and grouped convs, the reference layout's 100-pixel padding): its own backward (the bias
    gradient summed over the gradient's memory as it lies) gives conv2d's gradients, in float64
    to rounding and in float32 (oneDNN's kernels) to float32's."""
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        g = torch.Generator().manual_seed(stride * 10 + pad)
        x, w, b = (torch.randn(*s, generator=g, dtype=torch.float64).to(dtype) for s in
                   ((2, 4, 13, 11), (6, 4 // groups, 3, 3), (6,)))  # fmt: skip
        x = x.contiguous(memory_format=layout)
        for t, need in zip((x, w, b), needs, strict=True):
            t.requires_grad_(need)
        y0 = F.conv2d(x, w, b, stride, pad, groups=groups)
        y0 = y0.relu() if relu else y0
        y1 = train_ops.direct_conv(x, w, b, (stride, stride), (pad, pad), groups=groups,
                                   relu=relu)  # fmt: skip
        torch.testing.assert_close(y1, y0, rtol=tol, atol=tol)
        r = torch.randn(y0.shape, generator=g, dtype=torch.float64).to(dtype)
        want = [t for t in (x, w, b) if t.requires_grad]
        out = [torch.autograd.grad((y * r).sum(), want) for y in (y0, y1)]
        for a, e in zip(out[1], out[0], strict=True):
            torch.testing.assert_close(a, e, rtol=tol, atol=tol * e.abs().max().item())
