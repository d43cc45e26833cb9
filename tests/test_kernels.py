"""The CPU kernels FastFCN runs: Winograd F(2x2, 3x3) and F(4x4, 3x3) (and their weight
gradient, FastTrainFCN's) and the fused oneDNN ops equal F.conv2d."""

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from fcnseg import kernels, winograd


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def run_winograd(x, w, b, relu: bool, budget=1 << 22, m=2, U=None, onednn=False):
    """Pad x to the tiles' size (m*t+2), as FastFCN's buffers are, and run F(m x m, 3x3) (its
    work arenas start as NaN: a value read before it is written shows). U: the transformed
    weights (default: winograd_weight(w, m=m))."""
    n, c, h, wd = x.shape
    oh, ow = h - 2, wd - 2
    th, tw = kernels.winograd_tiles(oh, ow, m=m)
    padded = x.new_zeros(n, c, m * th + 2, m * tw + 2)
    padded[:, :, :h, :wd] = x
    plan = kernels.winograd_plan(n, th, tw, c, w.shape[0], budget=budget, m=m)
    arenas = {k: torch.full((plan[k],), float("nan"), dtype=x.dtype) for k in "aby"}
    U = kernels.winograd_weight(w, m=m) if U is None else U
    pad = padded.contiguous(memory_format=torch.channels_last)
    products = kernels.component_products(U) if onednn else None
    return kernels.winograd_conv(pad, U, b, plan, arenas, (oh, ow), relu=relu, products=products)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("h,w", [(3, 3), (4, 5), (7, 9), (7, 10), (15, 11), (33, 18)])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("budget", [1, 1 << 22])  # bands of one tile row; one band
def test_winograd_equals_conv_in_float64(m, h, w, relu, budget):
    """Outputs 1x1 up to 31x16 (5x7, 13x9: partial tiles at the bottom and right)."""
    g = torch.Generator().manual_seed(h * w)
    x = torch.randn(2, 5, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(7, 5, 3, 3, generator=g, dtype=torch.float64)
    b = None if h == 7 else torch.randn(7, generator=g, dtype=torch.float64)  # no bias too
    ref = F.conv2d(x, wt, b)
    ref = ref.relu() if relu else ref
    out = run_winograd(x, wt, b, relu, budget, m)
    assert out.shape == ref.shape == (2, 7, h - 2, w - 2)
    assert rel_err(out, ref) < 1e-12


@pytest.mark.skipif(not kernels.available(torch.empty(0)), reason="torch built without oneDNN")
@pytest.mark.parametrize("budget", [1, 1 << 22])
def test_winograd_with_onednn_products_equals_conv_in_float32(budget):
    """F(4x4)'s a*a GEMMs by oneDNN one per component (FastFCN's "winograd4dnnl"), bands of
    one tile row or one band: the conv's output within float32 rounding, as by torch.bmm."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 48, 23, 30, generator=g)
    wt = torch.randn(40, 48, 3, 3, generator=g) / 48**0.5
    b = torch.randn(40, generator=g)
    ref = F.conv2d(x, wt, b).relu()
    out = run_winograd(x, wt, b, True, budget, 4, onednn=True)
    assert out.shape == ref.shape
    assert rel_err(out, ref) < 1e-5
    assert rel_err(out, run_winograd(x, wt, b, True, budget, 4)) < 1e-5


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("h,w", [(3, 3), (7, 10), (15, 11), (33, 18)])
@pytest.mark.parametrize("budget", [1, 1 << 22])
def test_winograd_weight_gradient_equals_convs_in_float64(m, h, w, budget):
    """kernel_transform = G g G^T (an einsum of the transform's G), and
    kernel_transform_grad(winograd_weight_grad) = conv2d's weight gradient, band by band (NaN
    arenas: nothing read before it is written)."""
    g = torch.Generator().manual_seed(h * w + m)
    x = torch.randn(2, 5, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(7, 5, 3, 3, generator=g, dtype=torch.float64)
    dy = torch.randn(2, 7, h - 2, w - 2, generator=g, dtype=torch.float64)
    G = torch.tensor([[float(v) for v in r] for r in winograd.transforms(m)[1]], dtype=x.dtype)
    U = torch.einsum("ai,ocij,bj->abco", G, wt, G).reshape((m + 2) ** 2, 5, 7)
    assert rel_err(kernels.kernel_transform(wt, m=m), U) < 1e-14
    th, tw = kernels.winograd_tiles(h - 2, w - 2, m=m)
    assert kernels.winograd_work(2, (h - 2, w - 2), 5, 7, m=m)[0] == (m * th + 2, m * tw + 2)
    xp = x.new_zeros(2, 5, m * th + 2, m * tw + 2)
    xp[:, :, :h, :w] = x
    gp = x.new_zeros(2, 7, m * th, m * tw)
    gp[:, :, : h - 2, : w - 2] = dy
    plan = kernels.winograd_plan(2, th, tw, 5, 7, budget=budget, m=m)
    arenas = {k: torch.full((plan[k],), float("nan"), dtype=x.dtype) for k in "abz"}
    cl = torch.channels_last
    dU = kernels.winograd_weight_grad(xp.to(memory_format=cl), gp.to(memory_format=cl), plan,
                                      arenas)  # fmt: skip
    ref = torch.ops.aten.convolution_backward(
        dy, x, wt, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, False]
    )[1]
    assert rel_err(kernels.kernel_transform_grad(dU, m=m), ref) < 1e-12


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_transforms_equal_the_einsum(m, dtype):
    """kernel_transform (float32 on CPU: one oneDNN GEMM) and kernel_transform_rotated (the
    180-degree rotated, transposed kernel's, from w as it lies) equal G g G^T."""
    g = torch.Generator().manual_seed(m)
    wt = torch.randn(6, 5, 3, 3, generator=g, dtype=torch.float64)
    G = torch.tensor([[float(v) for v in r] for r in winograd.transforms(m)[1]], dtype=wt.dtype)
    a = (m + 2) ** 2
    U = torch.einsum("ai,ocij,bj->abco", G, wt, G).reshape(a, 5, 6)
    rot = wt.flip(2, 3).transpose(0, 1)
    Ur = torch.einsum("ai,ocij,bj->abco", G, rot, G).reshape(a, 6, 5)
    tol = 1e-14 if dtype == torch.float64 else 1e-6
    assert rel_err(kernels.kernel_transform(wt.to(dtype), m=m), U) < tol
    assert rel_err(kernels.kernel_transform_rotated(wt.to(dtype), m=m), Ur) < tol


@pytest.mark.skipif(not kernels.available(torch.empty(0)), reason="torch built without oneDNN")
@pytest.mark.parametrize("budget", [1, 1 << 22])  # bands of one tile row (each added); one band
def test_weight_gradient_with_onednn_products_equals_convs_in_float32(budget):
    """winograd_weight_grad's GEMMs by oneDNN on V's transposed copy (kernels.weight_products,
    the buffer starting as NaN) give conv2d's weight gradient within float32 rounding, as
    MKL's batched GEMM does; the transposed copy's buffer may be larger than a band."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 24, 22, 19, generator=g)
    wt = torch.randn(16, 24, 3, 3, generator=g)
    dy = torch.randn(1, 16, 20, 17, generator=g)
    th, tw = kernels.winograd_tiles(20, 17, m=4)
    cl = torch.channels_last
    xp = x.new_zeros(1, 24, 4 * th + 2, 4 * tw + 2)
    xp[:, :, :22, :19] = x
    gp = x.new_zeros(1, 16, 4 * th, 4 * tw)
    gp[:, :, :20, :17] = dy
    plan = kernels.winograd_plan(1, th, tw, 24, 16, budget=budget, m=4)
    assert (plan["band"] < th) == (budget == 1)
    ref = torch.ops.aten.convolution_backward(
        dy.double(), x.double(), wt.double(), None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
        [False, True, False],
    )[1]  # fmt: skip
    grads = {}
    for name in ("bmm", "onednn"):
        arenas = {k: torch.full((plan[k],), float("nan")) for k in "abz"}
        buffer = torch.full((plan["b"] + 7,), float("nan"))
        products = kernels.weight_products(buffer) if name == "onednn" else None
        dU = kernels.winograd_weight_grad(xp.to(memory_format=cl), gp.to(memory_format=cl),
                                          plan, arenas, products)  # fmt: skip
        grads[name] = kernels.kernel_transform_grad(dU, m=4)
        assert rel_err(grads[name], ref) < 1e-5, name
    assert rel_err(grads["onednn"], grads["bmm"]) < 1e-5


@pytest.mark.parametrize("points", [None, (0, 1, -1, 2, -2), (0, 1, -1, Fraction(1, 2), 3)])
def test_transforms_compute_the_correlation_exactly(points):
    """In exact arithmetic A^T [(G g) * (B^T d)] is the 1D correlation (Toom-Cook), for any
    distinct points; B^T's entries are exact in float (integers or halves); A^T has a column
    of ones (the component the bias is added to)."""
    at, G, bt = winograd.transforms(4, points)
    g, d = [Fraction(v) for v in (3, -7, 2)], [Fraction(v) for v in (5, 1, -4, 9, 2, -6)]
    u = [sum(G[j][k] * g[k] for k in range(3)) for j in range(6)]
    v = [sum(bt[j][k] * d[k] for k in range(6)) for j in range(6)]
    y = [sum(at[i][j] * u[j] * v[j] for j in range(6)) for i in range(4)]
    assert y == [sum(g[k] * d[i + k] for k in range(3)) for i in range(4)]
    assert all(x.denominator in (1, 2) for row in bt for x in row)
    assert any(all(row[j] == 1 for row in at) for j in range(6))
    with pytest.raises(ValueError, match="needs 5 distinct finite points"):
        winograd.transforms(4, (0, 1, -1, 2, 2))


@pytest.mark.parametrize("m,bound", [(2, 2e-6), (4, 1e-5 / 2)])
def test_winograd_float32_rounding_is_near_the_direct_convs(m, bound):
    """F(2x2) rounds like the direct conv (~1e-7 relative at VGG-like widths), F(4x4) within
    ~10x of it (its transforms' larger coefficients): inside FastFCN's 1e-5 contract."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 256, 30, 26, generator=g).relu()
    w = torch.randn(128, 256, 3, 3, generator=g) * (2 / (9 * 256)) ** 0.5
    b = torch.randn(128, generator=g) * 0.1
    exact = F.conv2d(x.double(), w.double(), b.double())
    wino = rel_err(run_winograd(x, w, b, False, m=m), exact)
    direct = rel_err(F.conv2d(x, w, b), exact)
    print(f"float32 rel. error: F({m}x{m}, 3x3) {wino:.1e}, direct {direct:.1e}")
    assert wino < bound and wino < 25 * direct
    # a wrong transform (two components swapped) is far off: the comparison can fail
    a2 = (m + 2) ** 2
    U = kernels.winograd_weight(w, m=m)[[0, 2, 1, *range(3, a2)]].contiguous()
    assert rel_err(run_winograd(x, w, b, False, m=m, U=U), exact) > 0.1
    if m == 4:  # weights transformed for other points than the plan's
        U = kernels.winograd_weight(w, m=4, points=(0, 1, -1, 2, -2))
        assert rel_err(run_winograd(x, w, b, False, m=4, U=U), exact) > 0.1


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
