"""Depth images of scenes of known geometry, ray-cast through a pinhole camera (for HHA checks).

World: y up, the floor is y = 0; the camera sits `height` metres above it at x = z = 0, looks
along +z, pitched down by `pitch` degrees and rolled by `roll`. Surfaces: the floor, a wall
z = `wall` facing the camera, and optionally a box on the floor. Every pixel knows its true
height above the floor and its true angle between surface normal and up (0 for the floor and
the box top, 90 for the wall and the box sides): the truth that `fcnseg.data.hha` is checked
against (tests/test_hha.py, benchmarks/hha.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DepthScene", "interior", "render_scene"]

# surface ids in DepthScene.surface
FLOOR, WALL, BOX_TOP, BOX_SIDE = 1, 2, 3, 4


@dataclass
class DepthScene:
    depth: np.ndarray  # (H, W) metres along the optical axis (camera z)
    height: np.ndarray  # (H, W) true height above the floor, metres
    angle: np.ndarray  # (H, W) true angle between the surface normal and up, degrees
    up: np.ndarray  # (3,) true up in camera coordinates (x right, y down, z forward)
    surface: np.ndarray  # (H, W) int8: FLOOR, WALL, BOX_TOP, BOX_SIDE
    intrinsics: tuple[float, float, float, float]


def _rotation(pitch_deg: float, roll_deg: float) -> np.ndarray:
    """World-from-camera rotation: camera (x right, y down, z forward) -> world (y up)."""
    p, r = np.radians(pitch_deg), np.radians(roll_deg)
    flip = np.diag([1.0, -1.0, 1.0])  # camera y down -> world y up
    pitch = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    roll = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return pitch @ flip @ roll  # pitch > 0 looks down


def render_scene(
    intrinsics: tuple[float, float, float, float],
    size: tuple[int, int],
    *,
    pitch: float = 20.0,
    roll: float = 0.0,
    height: float = 1.4,
    wall: float = 4.0,
    box: tuple | None = None,
) -> DepthScene:
    """Ray-cast the scene at `size` (H, W). `box`: ((x0, x1), (0, top), (z0, z1)) in metres."""
    h, w = size
    fx, fy, cx, cy = intrinsics
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    d_cam = np.stack([(cols - cx) / fx, (rows - cy) / fy, np.ones_like(cols)], axis=-1)
    rot = _rotation(pitch, roll)
    d = d_cam @ rot.T  # world directions; the ray parameter t is the camera z (depth)
    origin = np.array([0.0, height, 0.0])
    best = np.full((h, w), np.inf)
    surface = np.zeros((h, w), np.int8)
    with np.errstate(divide="ignore", invalid="ignore"):
        for t, s in ((-origin[1] / d[..., 1], FLOOR), ((wall - origin[2]) / d[..., 2], WALL)):
            hit = (t > 0) & (t < best)
            best[hit], surface[hit] = t[hit], s
        if box is not None:  # the slab method
            lo, hi = np.array([b[0] for b in box]), np.array([b[1] for b in box])
            t1, t2 = (lo - origin) / d, (hi - origin) / d
            near, far = np.minimum(t1, t2).max(-1), np.maximum(t1, t2).min(-1)
            hit = (near <= far) & (near > 0) & (near < best)
            top = np.abs(origin[1] + near * d[..., 1] - hi[1]) < 1e-9
            best[hit] = near[hit]
            surface[hit] = np.where(top[hit], BOX_TOP, BOX_SIDE)
    if not (surface > 0).all():
        raise ValueError("some rays hit nothing: put the wall nearer or pitch the camera down")
    angle = np.where((surface == FLOOR) | (surface == BOX_TOP), 0.0, 90.0)
    up = rot.T @ np.array([0.0, 1.0, 0.0])
    world_y = origin[1] + best * d[..., 1]
    return DepthScene(best, world_y, angle, up, surface, tuple(map(float, intrinsics)))


def interior(surface: np.ndarray, margin: int = 6) -> np.ndarray:
    """Pixels whose whole (2 margin + 1)^2 neighbourhood shows one surface (no depth edge)."""
    from scipy import ndimage

    same = np.zeros(surface.shape, bool)
    for s in np.unique(surface):
        same |= ndimage.binary_erosion(surface == s, iterations=margin, border_value=1)
    return same
