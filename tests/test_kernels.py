"""The CPU kernels FastFCN runs: Winograd F(2x2, 3x3) and the fused oneDNN ops equal F.conv2d."""

import pytest
import torch
import torch.nn.functional as F

from fcnseg import kernels


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def winograd(x: torch.Tensor, w: torch.Tensor, b, relu: bool, budget: int = 1 << 22):
    """Pad x to the tiles' size, as FastFCN's buffers are, and run the kernel (its work
    arenas start as NaN: a value read before it is written shows)."""
    n, c, h, wd = x.shape
    oh, ow = h - 2, wd - 2
    th, tw = kernels.winograd_tiles(oh, ow)
    padded = x.new_zeros(n, c, 2 * th + 2, 2 * tw + 2)
    padded[:, :, :h, :wd] = x
    plan = kernels.winograd_plan(n, th, tw, c, w.shape[0], budget=budget)
    arenas = {k: torch.full((plan[k],), float("nan"), dtype=x.dtype) for k in "aby"}
    U = kernels.winograd_weight(w)
    pad = padded.contiguous(memory_format=torch.channels_last)
    return kernels.winograd_conv(pad, U, b, plan, arenas, (oh, ow), relu=relu)


@pytest.mark.parametrize("h,w", [(3, 3), (4, 5), (7, 10), (33, 18)])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("budget", [1, 1 << 22])  # bands of one tile row; one band
def test_winograd_equals_conv_in_float64(h, w, relu, budget):
    g = torch.Generator().manual_seed(h * w)
    x = torch.randn(2, 5, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(7, 5, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64)
    ref = F.conv2d(x, wt, b)
    ref = ref.relu() if relu else ref
    out = winograd(x, wt, b, relu, budget)
    assert out.shape == ref.shape == (2, 7, h - 2, w - 2)
    assert rel_err(out, ref) < 1e-13


def test_winograd_float32_rounding_is_like_the_direct_convs():
    """~1e-7 relative at VGG-like widths: far inside FastFCN's 1e-5 contract."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 256, 30, 26, generator=g).relu()
    w = torch.randn(128, 256, 3, 3, generator=g) * (2 / (9 * 256)) ** 0.5
    b = torch.randn(128, generator=g) * 0.1
    exact = F.conv2d(x.double(), w.double(), b.double())
    wino = rel_err(winograd(x, w, b, False), exact)
    direct = rel_err(F.conv2d(x, w, b), exact)
    print(f"float32 rel. error: winograd {wino:.1e}, direct {direct:.1e}")
    assert wino < 2e-6
    # a wrong transform (two components swapped) is far off: the comparison can fail
    U = kernels.winograd_weight(w)[[0, 2, 1, *range(3, 16)]].contiguous()
    plan = kernels.winograd_plan(1, 14, 12, 256, 128)
    arenas = {k: torch.empty(plan[k]) for k in "aby"}
    pad = x.contiguous(memory_format=torch.channels_last)  # 30x26 = 2*14+2 x 2*12+2 already
    bad = kernels.winograd_conv(pad, U, b, plan, arenas, (28, 24), relu=False)
    assert rel_err(bad, exact) > 0.1


needs_onednn = pytest.mark.skipif(
    not kernels.available(torch.empty(0)), reason="torch built without oneDNN's fused ops"
)


@needs_onednn
@pytest.mark.parametrize("relu", [True, False])
def test_conv_into_writes_the_conv_into_the_given_buffer(relu):
    g = torch.Generator().manual_seed(2)
    cl = torch.channels_last
    x = torch.randn(2, 6, 11, 9, generator=g).contiguous(memory_format=cl)
    w = torch.randn(8, 6, 3, 3, generator=g).contiguous(memory_format=cl)
    b = torch.randn(8, generator=g)
    out = torch.full((2, 8, 9, 7), 123.0).contiguous(memory_format=cl)  # stale values
    y = kernels.conv_into(out, x, w, b, relu=relu)
    ref = F.conv2d(x, w, b)
    ref = ref.relu() if relu else ref
    assert y.data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_linear_with_relu():
    g = torch.Generator().manual_seed(3)
    a, w, b = (torch.randn(*s, generator=g) for s in ((17, 40), (9, 40), (9,)))
    torch.testing.assert_close(kernels.linear(a, w, b, relu=True), F.linear(a, w, b).relu())
    torch.testing.assert_close(kernels.linear(a, w, None, relu=False), F.linear(a, w))


def test_available_only_where_the_ops_apply():
    assert not kernels.available(torch.empty(0, dtype=torch.float64))
    assert not kernels.available(torch.empty(0, dtype=torch.int64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_conv_as_gemm_equals_conv(dtype, k):
    """float32 takes oneDNN's linear (where torch has it), float64 the MKL fallback."""
    g = torch.Generator().manual_seed(k)
    x = torch.randn(2, 6, 9, 8, generator=g, dtype=dtype)
    w = torch.randn(5, 6, k, k, generator=g, dtype=dtype)
    b = torch.randn(5, generator=g, dtype=dtype)
    ref = F.conv2d(x, w, b)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert rel_err(kernels.conv_as_gemm(x, w, b), ref) < tol
    assert rel_err(kernels.conv_as_gemm(x, w, b, relu=True), ref.relu()) < tol
    no_bias = kernels.conv_as_gemm(x, w, None, weight_t=w.reshape(5, -1).t())
    assert rel_err(no_bias, ref - b[:, None, None]) < tol


def test_gemm_conv_module_keeps_conv_results_and_gradients():
    from fcnseg.models.convolutionalize import GemmConv2d

    g = torch.Generator().manual_seed(5)
    plain = torch.nn.Conv2d(8, 16, 6)
    gemm = GemmConv2d(8, 16, 6)
    gemm.load_state_dict(plain.state_dict())  # same keys: torchvision-converted weights load
    x = torch.randn(2, 8, 14, 11, generator=g, requires_grad=True)
    with torch.no_grad():
        assert rel_err(gemm(x), plain(x)) < 1e-5
    gemm(x).square().sum().backward()  # training: autograd through unfold + matmul
    g_gemm = gemm.weight.grad.clone()
    plain(x).square().sum().backward()
    assert rel_err(g_gemm, plain.weight.grad) < 1e-4
