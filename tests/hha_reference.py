"""Today's HHA (fcnseg.data.hha at 2e92a63, before the banded rewrite of issue 22 item 9),
copied verbatim as the reference the banded implementation is checked against
(tests/test_hha.py: equal within 1 level on small frames). Not fcnseg's API: only `hha`.
"""

from __future__ import annotations

import numpy as np

_GRAVITY_SCHEDULE = ((45.0, 5), (15.0, 5))


class HHAGeometry:
    def __init__(self, points, normals, up, height, angle, missing):
        self.points, self.normals, self.up = points, normals, up
        self.height, self.angle, self.missing = height, angle, missing


def _check_intrinsics(intrinsics) -> tuple[float, float, float, float]:
    try:
        fx, fy, cx, cy = (float(v) for v in intrinsics)
    except (TypeError, ValueError):
        raise ValueError(
            f"intrinsics must be four numbers fx, fy, cx, cy (pixels); got {intrinsics!r}"
        ) from None
    if not (fx > 0 and fy > 0 and np.isfinite([fx, fy, cx, cy]).all()):
        raise ValueError(f"intrinsics fx, fy must be > 0 and all finite; got {intrinsics!r}")
    return fx, fy, cx, cy


def _fill_missing(z: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each invalid pixel takes the value of its nearest valid pixel."""
    if valid.all():
        return z
    from scipy import ndimage

    idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return z[idx[0], idx[1]]


def _box(a: np.ndarray, radius: int) -> np.ndarray:
    """Sum over the (2r+1)^2 window around each pixel (zero outside), for (H, W) or (H, W, k)."""
    from scipy import ndimage

    k = 2 * radius + 1
    size = (k, k) + (1,) * (a.ndim - 2)
    return ndimage.uniform_filter(a, size=size, mode="constant") * (k * k)


def _smallest_eigenvector(cov: np.ndarray) -> np.ndarray:
    """Unit eigenvector of the smallest eigenvalue of each symmetric 3x3 in (..., 6) form
    (xx, xy, xz, yy, yz, zz), in closed form (trigonometric eigenvalues, then the largest cross
    product of two rows of C - lambda I); zero where it is undefined."""
    a, b, c, d, e, f = (cov[..., k] for k in range(6))
    q = (a + d + f) / 3
    p2 = (a - q) ** 2 + (d - q) ** 2 + (f - q) ** 2 + 2 * (b * b + c * c + e * e)
    p = np.sqrt(p2 / 6)
    ps = np.where(p > 0, p, 1.0)
    ba, bd, bf, bb, bc, be = (a - q) / ps, (d - q) / ps, (f - q) / ps, b / ps, c / ps, e / ps
    det = ba * (bd * bf - be * be) - bb * (bb * bf - be * bc) + bc * (bb * be - bd * bc)
    phi = np.arccos(np.clip(det / 2, -1.0, 1.0)) / 3
    lam = q + 2 * p * np.cos(phi + 2 * np.pi / 3)  # the smallest of the three
    r1 = np.stack([a - lam, b, c], axis=-1)
    r2 = np.stack([b, d - lam, e], axis=-1)
    r3 = np.stack([c, e, f - lam], axis=-1)
    cands = np.stack([np.cross(r1, r2), np.cross(r1, r3), np.cross(r2, r3)])  # (3, ..., 3)
    norms = np.sqrt(np.einsum("...i,...i->...", cands, cands))
    best = norms.argmax(axis=0)
    v = np.take_along_axis(cands, best[None, ..., None], axis=0)[0]
    n = np.take_along_axis(norms, best[None], axis=0)[0]
    return np.where((n > 0)[..., None], v / np.where(n > 0, n, 1.0)[..., None], 0.0)


def _moments(p: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(H, W, 10): 1, x, y, z, xx, xy, xz, yy, yz, zz at valid pixels, 0 elsewhere."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    m = np.stack([np.ones_like(x), x, y, z, x * x, x * y, x * z, y * y, y * z, z * z], axis=-1)
    m[~valid] = 0.0
    return m


def _normals(
    p: np.ndarray, moments: np.ndarray, radius: int, stride: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals (H, W, 3) facing the camera, and where the fit was well-posed (H, W).

    The normal of the least-squares plane through the valid points of the window (`moments`
    of `_moments`): the eigenvector of their covariance with the smallest eigenvalue. With
    `stride` > 1, only at every stride-th pixel of each axis (the windows are the same).
    """
    sums = _box(moments, radius)[::stride, ::stride]
    p = p[::stride, ::stride]
    count = sums[..., 0]
    each = sums[..., 1:] / np.maximum(count, 1)[..., None]
    mx, my, mz = each[..., 0], each[..., 1], each[..., 2]
    cov = each[..., 3:]
    cov -= np.stack([mx * mx, mx * my, mx * mz, my * my, my * mz, mz * mz], axis=-1)
    n = _smallest_eigenvector(cov)
    # well-posed: valid points fill at least half the window (a thin strip of them along a
    # hole's edge would be near-collinear, and its plane undefined)
    ok = (count > (2 * radius + 1) ** 2 / 2) & (np.abs(n).sum(-1) > 0)
    flip = (n * p).sum(-1) > 0  # face the camera: n . p < 0
    n[flip] *= -1
    return n, ok


def _gravity(normals: np.ndarray) -> np.ndarray:
    """Gupta's iterative estimate of "up" from (N, 3) unit normals; camera coordinates."""
    up = np.array([0.0, -1.0, 0.0])  # the camera's own up (y points down)
    for angle, rounds in _GRAVITY_SCHEDULE:
        cos_t, sin_t = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        for _ in range(rounds):
            sim = np.abs(normals @ up)
            par, perp = normals[sim > cos_t], normals[sim < sin_t]
            if len(par) + len(perp) == 0:
                break
            # a tiny pull toward the current estimate breaks ties (e.g. a lone frontal wall
            # leaves any up in its plane equally good): 1e-6 of the normals' count
            prior = 1e-6 * len(normals) * np.outer(up, up)
            _, vecs = np.linalg.eigh(perp.T @ perp - par.T @ par - prior)
            new = vecs[:, 0]  # smallest eigenvalue
            up = new * (1.0 if new @ up >= 0 else -1.0)
    return up / np.linalg.norm(up)


def estimate_geometry(
    depth, intrinsics, *, radius: int = 3, gravity_radius: int = 8, stride: int = 2
) -> HHAGeometry:
    """Points, normals, gravity, height and angle from `depth` in metres (0 = missing).

    `radius`: half-width of the normal fit window for the angle channel (7 x 7, as Gupta's
    code); the gravity estimate uses smoother normals (`gravity_radius`, 17 x 17, where Gupta
    used 11 x 11 on depth the NYU toolbox had already smoothed) on every `stride`-th pixel.
    Depth noise biases plane fits (the noise lies along the rays), and the bias falls with the
    window: on 0.3 %-noise scenes (benchmarks/hha.py) 17 x 17 halves the gravity error.
    """
    fx, fy, cx, cy = _check_intrinsics(intrinsics)
    z = np.asarray(depth, dtype=np.float64)
    if z.ndim != 2 or min(z.shape) < 1:
        raise ValueError(f"depth must be an (H, W) array; got shape {z.shape}")
    valid = np.isfinite(z) & (z > 0)
    if (np.isfinite(z) & (z < 0)).any():
        raise ValueError(f"depth holds negative values (min {np.nanmin(z):g}); depth is >= 0")
    if not valid.any():
        raise ValueError("depth has no valid pixel (all 0 or not finite): nothing to compute")
    z = _fill_missing(np.where(valid, z, 0.0), valid)
    h, w = z.shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    p = np.stack([(cols - cx) * z / fx, (rows - cy) * z / fy, z], axis=-1)
    moments = _moments(p, valid)
    n, ok = _normals(p, moments, radius)
    ng, okg = _normals(p, moments, gravity_radius, stride)
    up = _gravity(ng[okg & valid[::stride, ::stride]])
    if not ok.all():  # no fit here (too few valid neighbours): nearest fitted normal
        n = _fill_missing(n, ok) if ok.any() else np.broadcast_to(up, n.shape).copy()
    along = p @ up  # metres up
    lowest = along[valid].min()
    ground = lowest if lowest <= -0.9 else -1.3  # Gupta: no floor in view -> 1.3 m below
    angle = np.degrees(np.arccos(np.clip(n @ up, -1.0, 1.0)))
    return HHAGeometry(p, n, up, along - ground, angle, ~valid)


def hha(depth, intrinsics, **kwargs) -> np.ndarray:
    """HHA image uint8 (H, W, 3) from `depth` (H, W) in METRES (0 = missing) and the camera's
    (fx, fy, cx, cy) in pixels; channels and method in the module doc. kwargs: see
    `estimate_geometry`.

    A 16-bit NYUDv2 depth PNG: ``hha(read_depth(path) / 1000, CAMERAS["nyud"])``.
    """
    g = estimate_geometry(depth, intrinsics, **kwargs)
    z_cm = np.maximum(g.points[..., 2] * 100.0, 100.0)  # Gupta: depth at least 1 m
    channels = np.stack([31000.0 / z_cm, g.height * 100.0, g.angle + 128.0 - 90.0], axis=-1)
    return np.clip(np.rint(channels), 0, 255).astype(np.uint8)
