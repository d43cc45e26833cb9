"""The plane fits behind HHA (`fcnseg.data.hha`), band by band.

A frame is cut into bands of rows (`_bands`); each band's window sums (`_window_sums`: the
moments 1, x, y, z, xx, ... of the valid points in every (2r+1)^2 window, computed on the band
plus r rows above and below, so exactly the sums over the whole frame) give each window's
least-squares plane (`_fit_normals`, closed-form 3x3 eigenvectors in chunks of 16 K pixels).
Only a band's temporaries exist at once (two bands on two threads for big frames,
`_map_bands`), so the memory a frame needs is a few bytes per pixel plus a band's worth.
"""

from __future__ import annotations

import os

import numpy as np

_THREADS = 2  # bands computed at once on frames of _THREADED_PIXELS and more
_THREADED_PIXELS = 1 << 20
_BAND_PIXELS = (1 << 13, 1 << 18)  # a band's size: 1/32 of the frame, within these bounds


def _fill_nearest(a: np.ndarray, known: np.ndarray) -> None:
    """In place: each pixel of `a` (H, W) or (H, W, k) where not `known` takes the value of the
    nearest known pixel (known pixels keep theirs; copied in bands of rows: little memory)."""
    if known.all():
        return
    from scipy import ndimage

    idx = ndimage.distance_transform_edt(~known, return_distances=False, return_indices=True)
    step = max(1, (1 << 20) // a.shape[1])
    for r0 in range(0, a.shape[0], step):
        a[r0 : r0 + step] = a[idx[0, r0 : r0 + step], idx[1, r0 : r0 + step]]


def _bands(h: int, w: int, stride: int):
    """(r0, r1) row bands of about 1/32 of the frame (_BAND_PIXELS bounds), starting at
    multiples of `stride` (so that a band's sampled grid is the frame's)."""
    target = min(max((h * w) // 32, _BAND_PIXELS[0]), _BAND_PIXELS[1])
    rows = max(stride, (max(1, target // w) // stride) * stride)
    for r0 in range(0, h, rows):
        yield r0, min(h, r0 + rows)


def _points(z: np.ndarray, k, r0: int, r1: int, stride: int = 1, top: int = 0) -> np.ndarray:
    """(3, rows, cols) float64 camera coordinates of rows r0:r1:stride, cols ::stride of `z`,
    whose first row is the frame's row `top`."""
    fx, fy, cx, cy = k
    zz = z[r0:r1:stride, ::stride].astype(np.float64)
    rows = np.arange(top + r0, top + r1, stride, dtype=np.float64)[:, None]
    cols = np.arange(0, z.shape[1], stride, dtype=np.float64)[None, :]
    return np.stack([(cols - cx) * zz / fx, (rows - cy) * zz / fy, zz])


def _window_sums(z, valid, k, radius: int, r0: int, r1: int, stride: int) -> np.ndarray:
    """(10, rows, cols) sums over each (2r+1)^2 window (zero outside the frame) of 1, x, y, z,
    xx, xy, xz, yy, yz, zz at valid pixels, for rows r0:r1:stride, cols ::stride. Computed on
    the band plus `radius` rows above and below: the same sums as over the whole frame."""
    from scipy import ndimage

    size = 2 * radius + 1
    h, w = z.shape
    s0, s1 = max(0, r0 - radius), min(h, r1 + radius)
    p = _points(np.where(valid[s0:s1], z[s0:s1], 0), k, 0, s1 - s0, top=s0)
    n_rows = len(range(r0, r1, stride))
    sums = np.empty((10, n_rows, len(range(0, w, stride))))
    # rows r0 - radius .. r1 + radius, those outside the frame 0
    slab = np.zeros((r1 - r0 + 2 * radius, w))
    inside = slice(s0 - (r0 - radius), s1 - (r0 - radius))
    pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    for c in range(10):
        if c == 0:
            m = valid[s0:s1].astype(np.float64)
        else:
            m = p[c - 1] if c < 4 else p[pairs[c - 4][0]] * p[pairs[c - 4][1]]
        # along rows (scipy, zero beyond the frame's sides), then down the columns
        ndimage.uniform_filter1d(m, size, axis=1, mode="constant", output=slab[inside])
        sums[c] = _window_rows(slab, size, n_rows, stride)[:, ::stride]
    sums *= size  # uniform_filter1d gave means along rows; _window_rows sums
    return sums


def _window_rows(a: np.ndarray, size: int, n: int, stride: int) -> np.ndarray:
    """out[j] = a[j * stride : j * stride + size].sum(0) for j < n, by doubling (block sums of
    1, 2, 4, ... rows: log2(size) + popcount(size) - 1 additions per row instead of size)."""
    total, off, block, length, bits = None, 0, a, 1, size
    while bits:
        if bits & 1:
            part = block[off : off + (n - 1) * stride + 1 : stride]
            total = part.copy() if total is None else np.add(total, part, out=total)
            off += length
        bits >>= 1
        if bits:
            block = block[:-length] + block[length:]
            length *= 2
    return total


def _fit_normals(sums: np.ndarray, p: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals (3, ...) facing the camera and where the fit was well-posed (...), from the
    window sums of `_window_sums` and the pixels' own points `p` (3, ...).

    The least-squares plane through the valid points of the window: the eigenvector of their
    covariance with the smallest eigenvalue, in closed form (trigonometric eigenvalues, then the
    largest cross product of two rows of C - lambda I); zero where undefined. In chunks of 16 K
    pixels (the ~50 temporaries stay small)."""
    shape = sums.shape[1:]
    sums, p = sums.reshape(10, -1), p.reshape(3, -1)
    n = np.zeros((3, sums.shape[1]))
    ok = np.zeros(sums.shape[1], bool)
    step = 1 << 14
    for c0 in range(0, sums.shape[1], step):
        c1 = c0 + step
        count = sums[0, c0:c1]
        each = sums[1:, c0:c1] / np.maximum(count, 1)
        mx, my, mz = each[0], each[1], each[2]
        a, b, c = each[3] - mx * mx, each[4] - mx * my, each[5] - mx * mz
        d, e, f = each[6] - my * my, each[7] - my * mz, each[8] - mz * mz
        v = _smallest_eigenvector(a, b, c, d, e, f)
        # well-posed: valid points fill at least half the window (a thin strip of them along a
        # hole's edge would be near-collinear, and its plane undefined)
        ok[c0:c1] = (count > (2 * radius + 1) ** 2 / 2) & (np.abs(v).sum(0) > 0)
        flip = (v * p[:, c0:c1]).sum(0) > 0  # face the camera: n . p < 0
        v[:, flip] *= -1
        n[:, c0:c1] = v
    return n.reshape(3, *shape), ok.reshape(shape)


def _smallest_eigenvector(a, b, c, d, e, f) -> np.ndarray:
    """(3, P) unit eigenvector of the smallest eigenvalue of each symmetric 3x3
    [[a, b, c], [b, d, e], [c, e, f]]; zero where it is undefined."""
    q = (a + d + f) / 3
    p2 = (a - q) ** 2 + (d - q) ** 2 + (f - q) ** 2 + 2 * (b * b + c * c + e * e)
    p = np.sqrt(p2 / 6)
    ps = np.where(p > 0, p, 1.0)
    ba, bd, bf, bb, bc, be = (a - q) / ps, (d - q) / ps, (f - q) / ps, b / ps, c / ps, e / ps
    det = ba * (bd * bf - be * be) - bb * (bb * bf - be * bc) + bc * (bb * be - bd * bc)
    phi = np.arccos(np.clip(det / 2, -1.0, 1.0)) / 3
    lam = q + 2 * p * np.cos(phi + 2 * np.pi / 3)  # the smallest of the three
    a, d, f = a - lam, d - lam, f - lam  # rows (a b c), (b d e), (c e f) of C - lambda I
    c12 = np.stack([b * e - c * d, c * b - a * e, a * d - b * b])
    c13 = np.stack([b * f - c * e, c * c - a * f, a * e - b * c])
    c23 = np.stack([d * f - e * e, e * c - b * f, b * e - d * c])
    n12, n13, n23 = ((v * v).sum(0) for v in (c12, c13, c23))
    first = (n12 >= n13) & (n12 >= n23)
    second = ~first & (n13 >= n23)
    v = np.where(first, c12, np.where(second, c13, c23))
    norm = np.sqrt(np.where(first, n12, np.where(second, n13, n23)))
    return np.where(norm > 0, v / np.where(norm > 0, norm, 1.0), 0.0)


def _map_bands(fn, shape: tuple[int, int], stride: int) -> list:
    """[fn(r0, r1) for each band], on up to _THREADS threads for frames of _THREADED_PIXELS
    and more (NumPy and SciPy release the GIL; each thread holds one band's temporaries)."""
    bands = list(_bands(*shape, stride))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = min(_THREADS, cpus or 1, len(bands))
    if shape[0] * shape[1] < _THREADED_PIXELS or threads < 2:
        return [fn(r0, r1) for r0, r1 in bands]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda b: fn(*b), bands))
