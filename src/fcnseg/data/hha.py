"""HHA: depth as three 8-bit channels (Gupta, Girshick, Arbelaez, Malik, ECCV 2014; FCN.md 9).

`hha(depth, intrinsics)` -> uint8 (H, W, 3), channels in the order of Gupta's code (and of the
release's HHA PNGs):

    0  horizontal disparity   31000 / max(z in cm, 100), i.e. 310 / max(z, 1 m); 255 at z <= 1.22 m
    1  height above ground    in cm: 0 at the lowest point of the scene, 255 at 2.55 m and above
    2  angle to gravity       angle in degrees between the surface normal and "up", plus 38
                              (so 38 = a floor or table top, 128 = a wall, 218 = a ceiling)

Steps (NumPy/SciPy, vectorized over pixels), as in Gupta's `saveHHA`/`processDepthImage`:

1. back-project every pixel through the pinhole camera: x = (col - cx) z / fx,
   y = (row - cy) z / fy (col, row 0-based; camera x right, y down, z forward; metres);
2. surface normals: the least-squares plane through the valid points of a square window around
   each pixel (box-filtered sums give each window's covariance; its smallest eigenvector, in
   closed form), turned to face the camera;
3. gravity: start from the camera's own up, (0, -1, 0); repeatedly take the direction that is
   most parallel to the normals within `angle` of it (floors, table tops, ceilings) and most
   perpendicular to those within `angle` of perpendicular (walls): the eigenvector of
   sum(walls n n^T) - sum(floors n n^T) with the smallest eigenvalue; 5 rounds at 45 degrees,
   then 5 at 15 (Gupta's schedule);
4. height = p . up - the ground's p . up. Gupta's ground is the lowest point of the image
   (`prctile(h(:), 0)`); here it is the lowest valid point that lies no more than 0.5 m below
   the 1st percentile of the valid points' heights (`_OUTLIER_GAP`, `_OUTLIER_PERCENTILE`):
   the one departure from Gupta's code. A few sensor outliers (pixels read at 79 m along rays
   that point down at the floor) lie tens of metres below the floor, and with Gupta's rule
   every real pixel's height would encode as 255. Points that far below, if fewer than 1 % of
   the valid pixels, are left out (their own height encodes as 0); a lower floor seen on 1 %
   of the pixels or more is the ground, as in Gupta's code. Then Gupta's rule: if the ground
   is less than 0.9 m below the camera (no floor in view), it is taken 1.3 m below it.

Missing depth (0, or not finite) is FILLED: such a pixel takes the depth of the nearest valid
pixel for all three channels, and is left out of the normal fits and of the gravity estimate.
The output never holds NaN. An image with no valid depth at all is an error.

Memory and time: `hha` works on bands of rows (about 1/32 of the frame each, the windows' rows
above and below included, on two threads for frames of 1 M pixels and more) and keeps only
float32 depth and heights, masks and the uint8 result for the whole frame: about 25-40 bytes
per pixel at its peak (a 6000 x 6000 frame needs ~1 GB) where the whole-frame float64
version took ~650; the window sums stay float64 (the covariance is a difference of nearly
equal sums). Its output equals the whole-frame version's within 1 level (rounding) and does
not depend on the banding (benchmarks/hha.py --memory, tests/test_hha.py).
`estimate_geometry` returns whole-frame float64 arrays (~100 bytes per pixel), for analysis.

`read_depth(path)` reads a 16-bit depth PNG (NYUDv2: millimetres) as uint16 (H, W).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .hha_planes import _bands, _fill_nearest, _fit_normals, _map_bands, _points, _window_sums
from .io import DEFAULT_MAX_PIXELS, ImageError, _open

__all__ = [
    "CAMERAS",
    "HHAGeometry",
    "estimate_geometry",
    "hha",
    "hha_file",
    "parse_intrinsics",
    "read_depth",
]

# camera intrinsics (fx, fy, cx, cy) in pixels. NYUDv2's colour camera (640 x 480), to which
# the dataset's depth maps are registered (FCN.md section 9; the NYU toolbox's values).
CAMERAS = {"nyud": (518.857901, 519.469611, 325.582449, 253.736166)}

_SIXTEEN = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Gupta's schedule for the gravity estimate: (angle threshold in degrees, rounds)
_GRAVITY_SCHEDULE = ((45.0, 5), (15.0, 5))
# the ground ignores points more than _OUTLIER_GAP metres below this percentile (module doc)
_OUTLIER_PERCENTILE = 1.0
_OUTLIER_GAP = 0.5


def read_depth(
    path: str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    data: bytes | None = None,
):
    """The 16-bit single-channel depth PNG at `path` as uint16 (H, W), values as stored;
    `data`: the file's bytes already in memory (an upload; `path` then only names it)."""
    p = Path(path)
    with _open(p, max_pixels, "depth image", data) as im:
        if im.mode not in _SIXTEEN:
            raise ImageError(
                f"depth image {p} has pixel mode {im.mode!r}; depth must be a 16-bit "
                f"single-channel PNG (values as stored, e.g. millimetres). An 8-bit or colour "
                f"picture of depth has lost the values: use the original depth file"
            )
        a = np.array(im)
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise ImageError(f"depth image {p}: values {a.min()}..{a.max()} exceed 0..65535")
    return a.astype(np.uint16)


@dataclass
class HHAGeometry:
    """What `hha` computes before encoding (`estimate_geometry`); float64 arrays, metres and
    degrees, no NaN."""

    points: np.ndarray  # (H, W, 3) camera coordinates (x right, y down, z forward), filled
    normals: np.ndarray  # (H, W, 3) unit normals facing the camera
    up: np.ndarray  # (3,) unit vector against gravity, camera coordinates
    height: np.ndarray  # (H, W) metres above the ground
    angle: np.ndarray  # (H, W) degrees between normal and up
    missing: np.ndarray  # (H, W) bool: depth was missing here (filled from the nearest pixel)


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


def _prepare(depth, intrinsics):
    """Checked intrinsics, the depth as float32 metres with missing pixels filled from the
    nearest valid one, and the valid mask."""
    k = _check_intrinsics(intrinsics)
    z = np.asarray(depth)
    if z.ndim != 2 or min(z.shape) < 1:
        raise ValueError(f"depth must be an (H, W) array; got shape {z.shape}")
    if not (np.issubdtype(z.dtype, np.floating) or np.issubdtype(z.dtype, np.integer)):
        raise ValueError(f"depth must hold numbers (metres); got dtype {z.dtype}")
    z = z.astype(np.float32)  # metres: float32 keeps 0.1 um at 10 m
    finite = np.isfinite(z)
    valid = finite & (z > 0)
    if (finite & (z < 0)).any():
        raise ValueError(f"depth holds negative values (min {np.nanmin(z):g}); depth is >= 0")
    del finite
    if not valid.any():
        raise ValueError("depth has no valid pixel (all 0 or not finite): nothing to compute")
    z[~valid] = 0.0
    _fill_nearest(z, valid)
    return k, z, valid


def _gravity_normals(z, valid, k, radius: int, stride: int) -> np.ndarray:
    """(3, N) well-posed normals of the (2 radius + 1)^2 windows at valid pixels on the
    every-`stride`-th grid, band by band."""

    def band(r0: int, r1: int) -> np.ndarray:
        sums = _window_sums(z, valid, k, radius, r0, r1, stride)
        n, ok = _fit_normals(sums, _points(z, k, r0, r1, stride), radius)
        return n[:, ok & valid[r0:r1:stride, ::stride]]

    return np.concatenate(_map_bands(band, z.shape, stride), axis=1)


def _gravity(normals: np.ndarray) -> np.ndarray:
    """Gupta's iterative estimate of "up" from (3, N) unit normals; camera coordinates."""
    up = np.array([0.0, -1.0, 0.0])  # the camera's own up (y points down)
    count = normals.shape[1]
    for angle, rounds in _GRAVITY_SCHEDULE:
        cos_t, sin_t = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        for _ in range(rounds):
            sim = np.abs(up @ normals)
            # +1 for the normals within `angle` of perpendicular (walls), -1 for those within
            # `angle` of up (floors): sum(walls n n^T) - sum(floors n n^T)
            weight = (sim < sin_t).astype(np.float64)
            weight -= sim > cos_t
            if not weight.any():
                break
            # a tiny pull toward the current estimate breaks ties (e.g. a lone frontal wall
            # leaves any up in its plane equally good): 1e-6 of the normals' count
            prior = 1e-6 * count * np.outer(up, up)
            _, vecs = np.linalg.eigh((normals * weight) @ normals.T - prior)
            new = vecs[:, 0]  # smallest eigenvalue
            up = new * (1.0 if new @ up >= 0 else -1.0)
    return up / np.linalg.norm(up)


def _ground(along: np.ndarray, valid: np.ndarray) -> float:
    """The height (metres along up) that counts as 0: the lowest valid point that lies no more
    than _OUTLIER_GAP below the _OUTLIER_PERCENTILE-th percentile of the valid points; then
    Gupta's rule: if that is less than 0.9 m below the camera (no floor in view), 1.3 m below."""
    vals = along[valid]
    kth = int(_OUTLIER_PERCENTILE / 100 * (len(vals) - 1))
    floor = float(np.partition(vals, kth)[kth]) - _OUTLIER_GAP
    lowest = float(np.min(vals, where=vals >= floor, initial=np.inf))
    return lowest if lowest <= -0.9 else -1.3


def _scene(depth, intrinsics, radius, gravity_radius, stride):
    k, z, valid = _prepare(depth, intrinsics)
    if not (isinstance(stride, int) and stride >= 1):
        raise ValueError(f"stride must be an integer >= 1; got {stride!r}")
    up = _gravity(_gravity_normals(z, valid, k, gravity_radius, stride))
    return k, z, valid, up


def estimate_geometry(
    depth, intrinsics, *, radius: int = 3, gravity_radius: int = 8, stride: int = 2
) -> HHAGeometry:
    """Points, normals, gravity, height and angle from `depth` in metres (0 = missing).

    `radius`: half-width of the normal fit window for the angle channel (7 x 7, as Gupta's
    code); the gravity estimate uses smoother normals (`gravity_radius`, 17 x 17, where Gupta
    used 11 x 11 on depth the NYU toolbox had already smoothed) on every `stride`-th pixel.
    Depth noise biases plane fits (the noise lies along the rays), and the bias falls with the
    window: on 0.3 %-noise scenes (benchmarks/hha.py) 17 x 17 halves the gravity error.

    For analysis: it returns whole-frame float64 arrays (~100 bytes per pixel); `hha` computes
    the same channels band by band in a fraction of that.
    """
    k, z, valid, up = _scene(depth, intrinsics, radius, gravity_radius, stride)
    h, w = z.shape
    points = np.empty((h, w, 3))
    normals = np.empty((h, w, 3))
    ok = np.empty((h, w), bool)
    for r0, r1 in _bands(h, w, 1):
        p = _points(z, k, r0, r1)
        n, ok[r0:r1] = _fit_normals(_window_sums(z, valid, k, radius, r0, r1, 1), p, radius)
        points[r0:r1], normals[r0:r1] = np.moveaxis(p, 0, -1), np.moveaxis(n, 0, -1)
    if not ok.any():
        normals[:] = up
    else:
        _fill_nearest(normals, ok)  # no fit here (too few valid neighbours): nearest fitted normal
    along = points @ up  # metres up
    angle = np.degrees(np.arccos(np.clip(normals @ up, -1.0, 1.0)))
    return HHAGeometry(points, normals, up, along - _ground(along, valid), angle, ~valid)


def hha(depth, intrinsics, **kwargs) -> np.ndarray:
    """HHA image uint8 (H, W, 3) from `depth` (H, W) in METRES (0 = missing) and the camera's
    (fx, fy, cx, cy) in pixels; channels and method in the module doc. kwargs: see
    `estimate_geometry` (radius, gravity_radius, stride).

    A 16-bit NYUDv2 depth PNG: ``hha(read_depth(path) / 1000, CAMERAS["nyud"])``.
    """
    radius = kwargs.pop("radius", 3)
    gravity_radius = kwargs.pop("gravity_radius", 8)
    stride = kwargs.pop("stride", 2)
    if kwargs:
        raise TypeError(f"hha() got unexpected keyword arguments {sorted(kwargs)}")
    k, z, valid, up = _scene(depth, intrinsics, radius, gravity_radius, stride)
    h, w = z.shape
    out = np.empty((h, w, 3), np.uint8)
    ok = np.empty((h, w), bool)
    along = np.empty((h, w), np.float32)

    def band(r0: int, r1: int) -> None:
        p = _points(z, k, r0, r1)
        n, ok[r0:r1] = _fit_normals(_window_sums(z, valid, k, radius, r0, r1, 1), p, radius)
        cos = np.clip(np.tensordot(up, n, 1), -1.0, 1.0)
        out[r0:r1, :, 2] = _byte(np.degrees(np.arccos(cos)) + 128.0 - 90.0)
        along[r0:r1] = np.tensordot(up, p, 1)
        out[r0:r1, :, 0] = _byte(31000.0 / np.maximum(p[2] * 100.0, 100.0))  # Gupta: z >= 1 m

    _map_bands(band, (h, w), 1)
    angle = out[..., 2]
    if not ok.any():  # no fit anywhere: every normal is up, angle 0
        angle[:] = _byte(np.full(1, 128.0 - 90.0))[0]
    else:
        _fill_nearest(angle, ok)  # no fit here: the nearest fitted normal's angle
    ground = _ground(along, valid)
    for r0, r1 in _bands(h, w, 1):
        out[r0:r1, :, 1] = _byte((along[r0:r1].astype(np.float64) - ground) * 100.0)
    return out


def _byte(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def parse_intrinsics(text: str | None, camera: str | None) -> tuple[float, float, float, float]:
    """--intrinsics "fx,fy,cx,cy" or --camera NAME (one of CAMERAS) -> the four numbers."""
    if (text is None) == (camera is None):
        raise ValueError(
            "give the camera: --intrinsics fx,fy,cx,cy (pixels) or --camera "
            f"{'|'.join(CAMERAS)}, one of the two"
        )
    if camera is not None:
        if camera not in CAMERAS:
            raise ValueError(f"--camera {camera!r} unknown: known cameras are {', '.join(CAMERAS)}")
        return CAMERAS[camera]
    parts = text.split(",")
    try:
        values = tuple(float(v) for v in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ValueError(
            f"--intrinsics {text!r}: write four numbers fx,fy,cx,cy, e.g. 518.9,519.5,325.6,253.7"
        )
    return _check_intrinsics(values)


def hha_file(
    depth_path: str | os.PathLike,
    out: str | os.PathLike,
    intrinsics,
    *,
    depth_scale: float = 0.001,
    overwrite: bool = False,
) -> np.ndarray:
    """Read a 16-bit depth PNG, write its HHA PNG to `out` (temp file + rename); return it.

    `depth_scale`: metres per stored unit (0.001: millimetres, as NYUDv2). `out` may not be
    the input, and may not exist unless `overwrite`.
    """
    from PIL import Image

    from ..safety import atomic_write, check_outputs

    if not (np.isfinite(depth_scale) and depth_scale > 0):
        raise ValueError(f"--depth-scale must be > 0 (metres per stored unit); got {depth_scale}")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"HHA output {out}: HHA images are written as PNG; name it *.png")
    check_outputs([(out, "HHA image")], [depth_path], overwrite=overwrite)
    depth = read_depth(depth_path).astype(np.float32)
    depth *= np.float32(depth_scale)  # metres; float32: 4 bytes a pixel, 0.1 um at 10 m
    image = hha(depth, intrinsics)
    atomic_write(out, lambda f: Image.fromarray(image).save(f, format="PNG"), what="HHA image")
    return image
