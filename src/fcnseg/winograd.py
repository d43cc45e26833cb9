"""Winograd F(m x m, 3x3) convolutions on CPU, m = 2 or 4 (used by FastFCN, via fcnseg.kernels).

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016). Each m x m block
of a 3x3 conv's output comes from an a x a tile of its input, a = m + 2 (tiles overlap by 2):

    Y = A^T [ (G g G^T) * (B^T d B) ] A,

a^2 products per block where the direct conv makes 9 m^2: F(2x2, 3x3) 16 for 4 outputs (2.25x
fewer multiply-adds), F(4x4, 3x3) 36 for 16 (4x fewer), spent as a^2 batched GEMMs
(tiles x C_in) @ (C_in x C_out). F(4x4) also reads 2.25 transformed input values per output
where F(2x2) reads 4, so its transforms move less memory too.

The matrices are data (`transforms`): built exactly (fractions) from the interpolation points
by Toom-Cook (A^T = the points' powers, G = the same for the kernel, B^T = the inverse
Vandermonde transposed, each row scaled to small integers, or halves of them where that
makes an entry +1, the scale moved into G). G is
applied to the weights by elementwise ops (kernel_transform: in float64 once for FastFCN,
in the weights' dtype every step for training); B^T and A^T run as a few elementwise torch ops each
(out= into the caller's arenas), along H, then along W. Points for F(4x4): 0, +-1, 2, -1/2, inf
rounded best in float32 (~3e-6 relative, ~10x the direct conv's: see POINTS); F(2x2): 0, +-1, inf.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import torch

__all__ = [
    "POINTS", "kernel_transform", "kernel_transform_grad", "transforms", "winograd_conv",
    "winograd_plan", "winograd_tiles", "winograd_weight", "winograd_weight_grad", "winograd_work",
]  # fmt: skip

# Finite interpolation points per output tile size m (the point at infinity is implied).
# F(4x4) float32 max rel. error vs float64 on (1, 256, 66, 66) inputs (N(0, 1), or its ReLU),
# 256 -> 256 He-scaled weights, 3 seeds (the direct conv: 2.1-3.3e-7; F(2x2): 3.5-4.4e-7):
# 0 +-1 +-2 (the usual choice) 7.4-8.4e-6; 0 +-1 +-1/2 6.2-8.5e-6; 0 +-1 +-3/2 4.1-5.2e-6;
# 0 +-1 3/2 -2/3 2.8-4.0e-6; 0 +-1 2 -2/3 2.5-3.2e-6; 0 +-1 2 -1/2 2.1-3.0e-6
# (chosen: the lowest, and its A^T entries are powers of 2, exact in float).
POINTS = {2: (0, 1, -1), 4: (0, 1, -1, 2, Fraction(-1, 2))}


def _solve_inverse(m: list[list[Fraction]]) -> list[list[Fraction]]:
    """The inverse of a square matrix of fractions (Gauss-Jordan, exact)."""
    n = len(m)
    a = [row[:] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(m)]
    for col in range(n):
        piv = next(r for r in range(col, n) if a[r][col] != 0)
        a[col], a[piv] = a[piv], a[col]
        p = a[col][col]
        a[col] = [v / p for v in a[col]]
        for r in range(n):
            if r != col and a[r][col] != 0:
                f = a[r][col]
                a[r] = [v - f * w for v, w in zip(a[r], a[col], strict=True)]
    return [row[n:] for row in a]


def _powers(points, n: int) -> list[list[Fraction]]:
    """Rows [p^0 .. p^(n-1)] per finite point, then [0 .. 0, 1] for infinity."""
    rows = [[Fraction(p) ** i for i in range(n)] for p in points]
    return [*rows, [Fraction(0)] * (n - 1) + [Fraction(1)]]


@functools.cache
def transforms(m: int, points: tuple | None = None) -> tuple[tuple, tuple, tuple]:
    """(A^T (m x a), G (a x 3), B^T (a x a)) of F(m, 3), as tuples of Fractions.

    1D correlation y = A^T [(G g) * (B^T d)]: the transpose of Toom-Cook's linear convolution
    (evaluate at the points, multiply, interpolate)."""
    pts = POINTS[m] if points is None else points
    a = m + 2
    if len(pts) != a - 1 or len(set(pts)) != len(pts):
        raise ValueError(f"F({m}, 3) needs {a - 1} distinct finite points, got {pts}")
    at = [list(col) for col in zip(*_powers(pts, m), strict=True)]  # E_m^T
    g = _powers(pts, 3)
    inv = _solve_inverse(_powers(pts, a))  # V^-1
    bt = [list(col) for col in zip(*inv, strict=True)]  # V^-T
    for j, row in enumerate(bt):  # B^T exact in float (small integers), the scale goes to G
        den = math.lcm(*(v.denominator for v in row))
        num = math.gcd(*(abs(v.numerator) for v in row if v))
        s = Fraction(den, num)
        # a +1 entry lets the row start with an add, no separate multiply: scale by a power
        # of 2 (exact in float, so the rounding is the same) that makes one entry +1
        twos = [v * s for v in row if v and _power_of_two(abs(v * s))]
        if twos and 1 not in [v * s for v in row]:
            s /= min(twos, key=abs)
        bt[j] = [v * s for v in row]
        g[j] = [v / s for v in g[j]]
    return tuple(map(tuple, at)), tuple(map(tuple, g)), tuple(map(tuple, bt))


def _power_of_two(f: Fraction) -> bool:
    n, d = f.numerator, f.denominator
    return n & (n - 1) == 0 and d & (d - 1) == 0


def _matrix(rows, dtype=torch.float64, device=None) -> torch.Tensor:
    return torch.tensor([[float(v) for v in r] for r in rows], dtype=dtype, device=device)


def winograd_weight(w: torch.Tensor, *, m: int = 2, points: tuple | None = None) -> torch.Tensor:
    """(O, C, 3, 3) -> U (a*a, C, O) = G g G^T per (o, c), the a x a components flattened,
    computed in float64 (kernel_transform) and given in w's dtype (a = m + 2)."""
    return kernel_transform(w.double(), m=m, points=points).to(w.dtype).contiguous()


def winograd_tiles(out_h: int, out_w: int, *, m: int = 2) -> tuple[int, int]:
    """Tile rows and columns for an output of out_h x out_w: the input must be m*t+2 each way."""
    return -(-out_h // m), -(-out_w // m)


def winograd_work(n: int, out_hw: tuple[int, int], c: int, o: int, *, m: int = 2):
    """For a C -> O conv whose output is out_hw: its padded input's (h, w), m*t+2 rows and
    columns (zeros past the real input), and its winograd_plan."""
    th, tw = winograd_tiles(*out_hw, m=m)
    return (m * th + 2, m * tw + 2), winograd_plan(n, th, tw, c, o, m=m)


def winograd_plan(
    n: int, th: int, tw: int, c: int, o: int, budget: int = 1 << 23, *, m: int = 2,
    points: tuple | None = None,
) -> dict[str, int | tuple]:  # fmt: skip
    """How a layer's tiles are processed: in bands of `band` tile rows, so that the transformed
    input and the GEMMs' results (a*a values a tile and channel) stay under `budget` elements
    (32 MB in float32) however large the image; and the elements each work arena needs.
    (AMD Zen 5, 2 threads, FCN-8s 500x500, interleaved: 2M elements per band 1.71-1.74 s a
    FastTrainFCN step, 4M 1.58-1.59, 8M 1.53, 16M 1.53-1.55; FastFCN forward 4M 0.446-0.450 s,
    8M 0.432-0.434: fewer bands mean fewer, longer ops and fewer weight-gradient sums.)

    Arena "a" holds a band's input rows after B^T, then its GEMM results; "b" the band's
    B^T d B, then A^T applied along H; "y" the whole output (N, th, m, tw, m, O); "z" (only
    winograd_weight_grad's) a band's output gradient tiles after A . A^T.
    """
    a = m + 2
    band = max(1, min(th, budget // (a * a * n * tw * max(c, o))))
    return {
        "shape": (n, th, tw, c, o),
        "m": m,
        "points": points,
        "band": band,
        "a": max(a * n * band * (m * tw + 2) * c, a * a * n * band * tw * o),
        "b": max(a * a * n * band * tw * c, m * a * n * band * tw * o),
        "y": n * th * tw * m * m * o,
        "z": a * a * n * band * tw * o,  # winograd_weight_grad's A g A^T
    }


def _combine(out: torch.Tensor, terms: list[tuple[torch.Tensor, float]]) -> None:
    """out = sum(coef * x), as few elementwise ops as there are terms minus one."""
    terms = sorted(terms, key=lambda t: t[1] != 1)  # a +1 term first, if any (stable)
    (x1, c1), rest = terms[0], terms[1:]
    if not rest:
        torch.mul(x1, c1, out=out)
        return
    (x2, c2), rest = rest[0], rest[1:]
    if c1 == 1:
        torch.add(x1, x2, alpha=c2, out=out)
    elif c2 == 1:
        torch.add(x2, x1, alpha=c1, out=out)
    else:
        torch.mul(x1, c1, out=out)
        out.add_(x2, alpha=c2)
    for x, c in rest:
        out.add_(x, alpha=c)


def _apply(mat, outs, ins) -> None:
    """outs[i] = sum_k mat[i][k] * ins[k]: one matrix of the transform along one axis."""
    for i, row in enumerate(mat):
        _combine(outs[i], [(ins[k], float(v)) for k, v in enumerate(row) if v != 0])


def _input_tiles(xh, t0: int, tb: int, m: int, bt, A, B, tw: int) -> torch.Tensor:
    """V = B^T d B for the tiles of tile rows t0 .. t0+tb of xh (N, m*th+2, m*tw+2, C): an
    (a, a, N, tb, tw, C) view into arena B (arena A holds B^T along H on the way)."""
    n, c, a = xh.shape[0], xh.shape[3], m + 2
    W = m * tw + 2
    rows = A[: a * n * tb * W * c].view(a, n, tb, W, c)  # B^T along H
    d = [xh[:, m * t0 + k : m * t0 + k + m * tb : m] for k in range(a)]  # (N, tb, W, C)
    _apply(bt, rows, d)
    V = B[: a * a * n * tb * tw * c].view(a, a, n, tb, tw, c)  # B^T d B
    e = [rows[:, :, :, k : k + m * tw : m] for k in range(a)]  # (a, N, tb, tw, C)
    _apply(bt, [V[:, j] for j in range(a)], e)
    return V


def winograd_conv(
    x: torch.Tensor,
    U: torch.Tensor,
    b: torch.Tensor | None,
    plan: dict,
    arenas: dict[str, torch.Tensor],
    out_hw: tuple[int, int],
    *,
    relu: bool,
    products=None,
    keep_tiles: list | None = None,
) -> torch.Tensor:
    """relu(conv2d(x, w, b)) for a 3x3 kernel, stride 1, no padding, by F(m x m, 3x3).

    x: (N, C, m*th+2, m*tw+2) channels_last (zeros past the real input); U: winograd_weight(w,
    m=m); plan: winograd_plan(..., m=m); arenas: flat tensors "a", "b", "y" of at least the
    plan's sizes, kept by the caller across calls (re-faulting ~100 MB a call costs more than
    the work) and shared by layers (a layer's buffers are dead once its output has been read).
    Returns the (N, O, out_h, out_w) output as a channels_last view into arenas["y"].
    products(V): the a*a GEMMs V[k] @ U[k], (a*a, tiles, C) -> a*a tensors (tiles, O) (default:
    one batched torch.bmm into arena "a"; fcnseg.kernels.component_products: oneDNN's, one each).
    keep_tiles: a list to append each band's transformed input V to (new tensors, not the
    arena's), for winograd_weight_grad to reuse.
    """
    n, th, tw, c, o = plan["shape"]
    m = plan.get("m", 2)
    a = m + 2
    at, _, bt = transforms(m, plan.get("points"))
    # the bias reaches every output once through a component whose A^T column is all ones
    ones = [k for k in range(a) if all(row[k] == 1 for row in at)]
    A, B = arenas["a"], arenas["b"]
    Y = arenas["y"][: n * th * tw * m * m * o].view(n, th, m, tw, m, o)  # blocks, interleaved
    xh = x.permute(0, 2, 3, 1)  # (N, H, W, C), contiguous
    for t0 in range(0, th, plan["band"]):
        tb = min(plan["band"], th - t0)
        if keep_tiles is None:
            V = _input_tiles(xh, t0, tb, m, bt, A, B, tw)  # (a, a, N, tb, tw, C)
        else:
            V = _input_tiles(xh, t0, tb, m, bt, A, x.new_empty(a * a * n * tb * tw * c), tw)
            keep_tiles.append(V)
        S = B[: m * a * n * tb * tw * o].view(m, a, n, tb, tw, o)  # A^T along H (written
        # once the products below have read V, which may lie in B)
        if products is None:  # (a*a, tiles, C) @ (a*a, C, O)
            M = A[: a * a * n * tb * tw * o].view(a * a, n * tb * tw, o)  # `rows` is dead
            torch.bmm(V.view(a * a, -1, c), U, out=M)
            parts = list(M.view(a * a, n, tb, tw, o))
        else:  # a*a separate results, read where they lie
            parts = [p.view(n, tb, tw, o) for p in products(V.view(a * a, -1, c))]
        if b is not None and ones:
            parts[ones[0] * a + ones[0]] += b
        for j in range(a):  # S[:, j] = A^T over the components (., j)
            _apply(at, S[:, j], [parts[k * a + j] for k in range(a)])
        Yb = Y[:, t0 : t0 + tb]
        Yp = Yb.permute(2, 4, 0, 1, 3, 5)  # (m rows, m cols, N, tb, tw, O)
        _apply(at, [Yp[:, j] for j in range(m)], [S[:, k] for k in range(a)])
        if b is not None and not ones:
            Yb += b
        if relu:
            Yb.relu_()
    oh, ow = out_hw
    return Y.view(n, m * th, m * tw, o)[:, :oh, :ow].permute(0, 3, 1, 2)


def kernel_transform(w: torch.Tensor, *, m: int = 2, points: tuple | None = None) -> torch.Tensor:
    """winograd_weight(w) computed in w's dtype by a few elementwise ops (for training, where
    the weights change every step: ~5 ms for 512 x 512 x 3 x 3 where the float64 einsum takes
    ~120): (O, C, 3, 3) -> U (a*a, C, O)."""
    G = transforms(m, points)[1]
    a = m + 2
    v = w.permute(2, 3, 1, 0).contiguous()  # (3, 3, C, O)
    u = v.new_empty(a, 3, *v.shape[2:])
    _apply(G, u, v)  # G along kernel rows
    U = v.new_empty(a, a, *v.shape[2:])
    _apply(G, [U[:, j] for j in range(a)], [u[:, k] for k in range(3)])  # along columns
    return U.view(a * a, *v.shape[2:])


def kernel_transform_grad(dU: torch.Tensor, *, m: int = 2, points: tuple | None = None):
    """The weight gradient from U's: dw = G^T dU G per (c, o), (a*a, C, O) -> (O, C, 3, 3)
    (the transpose of kernel_transform)."""
    Gt = tuple(zip(*transforms(m, points)[1], strict=True))  # (3, a)
    a = m + 2
    d = dU.view(a, a, *dU.shape[1:])
    u = dU.new_empty(3, a, *dU.shape[1:])
    _apply(Gt, u, d)
    dw = dU.new_empty(3, 3, *dU.shape[1:])
    _apply(Gt, [dw[:, k] for k in range(3)], [u[:, j] for j in range(a)])
    return dw.permute(3, 2, 0, 1)


def winograd_weight_grad(
    x: torch.Tensor | None, g: torch.Tensor, plan: dict, arenas: dict[str, torch.Tensor],
    products=None, tiles: list | None = None,
) -> torch.Tensor:  # fmt: skip
    """dU (a*a, C, O): the gradient of winograd_conv's output with respect to U for the output
    gradient g, so that kernel_transform_grad(dU) is conv2d's weight gradient.

    The forward's blocks are Y = A^T [U * V] A (V = B^T d B per tile), so dU = sum over tiles
    of V * (A dY A^T): the input tiles transformed as in the forward, the output gradient's
    m x m blocks spread to a x a by A, and a^2 GEMMs (C x tiles) @ (tiles x O) summed band by
    band, as many multiply-adds as the forward's GEMMs (4x fewer than the direct weight
    gradient for F(4x4)). x: as winograd_conv's; g: (N, O, m*th, m*tw) channels_last, zeros
    past the real output; arenas: "a", "b", "z" of the plan's sizes. products(V, z, dU, first):
    dU[k] (=, or += unless `first`) V[k]^T @ z[k], (a*a, tiles, C) x (a*a, tiles, O) -> (a*a,
    C, O) (default: MKL's batched GEMM, torch.bmm / baddbmm_ on V's transposed view;
    fcnseg.kernels.weight_products: oneDNN's, one per component). tiles: the forward's V, band
    by band (winograd_conv's keep_tiles), instead of transforming x again (x may then be None).
    """
    n, th, tw, c, o = plan["shape"]
    m = plan.get("m", 2)
    a = m + 2
    at, _, bt = transforms(m, plan.get("points"))
    At = tuple(zip(*at, strict=True))  # A (a x m)
    A, B, Z = arenas["a"], arenas["b"], arenas["z"]
    gh = g.permute(0, 2, 3, 1)  # NHWC
    dU = g.new_empty(a * a, c, o)
    for band, t0 in enumerate(range(0, th, plan["band"])):
        tb = min(plan["band"], th - t0)
        if tiles is None:  # (a, a, N, tb, tw, C)
            V = _input_tiles(x.permute(0, 2, 3, 1), t0, tb, m, bt, A, B, tw)
        else:
            V = tiles[band]
        rows = A[: a * n * tb * m * tw * o].view(a, n, tb, m * tw, o)  # A along H
        _apply(At, rows, [gh[:, m * t0 + i : m * (t0 + tb) : m] for i in range(m)])
        z = Z[: a * a * n * tb * tw * o].view(a, a, n, tb, tw, o)  # A dY A^T
        _apply(At, [z[:, j] for j in range(a)], [rows[:, :, :, i::m] for i in range(m)])
        Vk, zk = V.view(a * a, -1, c), z.view(a * a, -1, o)
        if products is not None:
            products(Vk, zk, dU, t0 == 0)
        elif t0 == 0:
            torch.bmm(Vk.transpose(1, 2), zk, out=dU)
        else:
            dU.baddbmm_(Vk.transpose(1, 2), zk)
    return dU
