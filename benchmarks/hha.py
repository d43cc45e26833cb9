"""HHA from depth (fcnseg.data.hha): accuracy on scenes of known geometry, and time per frame.

Renders 640 x 480 depth maps through NYUDv2's camera (fcnseg.data.depth_scenes: a floor seen
from a tilted camera, a wall, a box on the floor; each also with 0.3 % depth noise, millimetre
steps, about 5 % of pixels missing and none beyond 8 m, as a Kinect gives them), computes HHA,
and prints per scene: the gravity error (degrees), the angle and height errors on surface
interiors (pixels whose 13 x 13 neighbourhood shows one surface: median and 99th percentile),
and the seconds per frame (median of --repeat runs, after one warm-up). Last, a real depth
map: Middlebury 2014's Motorcycle as scikit-image ships it, its gravity error measured against
the plane of its level floor. Prints a table; asserts nothing.

    .venv/bin/python benchmarks/hha.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from fcnseg.data.depth_scenes import interior, render_scene
from fcnseg.data.hha import CAMERAS, estimate_geometry, hha

SCENES = {
    "floor, camera pitched 35, rolled 8": dict(pitch=35.0, roll=8.0, wall=50.0),
    "wall and floor, pitched 15, rolled -5": dict(pitch=15.0, roll=-5.0, wall=3.0),
    "box on the floor, pitched 25, rolled 3": dict(
        pitch=25.0, roll=3.0, wall=5.0, box=((-0.4, 0.5), (0, 0.6), (2.2, 2.9))
    ),
}


def degrade(depth: np.ndarray, seed: int = 0) -> np.ndarray:
    """0.3 % noise, millimetre steps, ~5 % of pixels set to 0, and all beyond 8 m (Kinect)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    noisy = np.rint(depth * (1 + rng.normal(0, 0.003, depth.shape)) * 1000) / 1000
    blobs = ndimage.uniform_filter(rng.random(depth.shape), 9) > 0.56
    holes = blobs | (rng.random(depth.shape) < 0.02)
    return np.where(holes | (depth > 8.0), 0.0, noisy)


def row(name: str, scene, depth: np.ndarray, repeat: int) -> str:
    k = scene.intrinsics
    g = estimate_geometry(depth, k)
    gravity = np.degrees(np.arccos(np.clip(g.up @ scene.up, -1, 1)))
    inner = interior(scene.surface) & ~g.missing
    angle_err = np.abs(g.angle - scene.angle)[inner]
    height_err = np.abs(g.height - scene.height)[inner] * 100  # cm
    hha(depth, k)  # warm-up
    wall, cpu = _time(lambda: hha(depth, k), repeat)
    return (
        f"| {name} | {g.missing.mean() * 100:.1f} | {gravity:.3f} | "
        f"{np.median(angle_err):.2f} / {np.percentile(angle_err, 99):.2f} | "
        f"{np.median(height_err):.2f} / {np.percentile(height_err, 99):.2f} | "
        f"{wall:.3f} | {cpu:.3f} |"
    )


def _time(fn, repeat: int) -> tuple[float, float]:
    """Median wall-clock and CPU seconds of `repeat` calls (the CPU time of this process is
    what an idle machine's wall clock would show: the work is single-threaded NumPy/SciPy)."""
    walls, cpus = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return float(np.median(walls)), float(np.median(cpus))


def real_row(repeat: int) -> str:
    """Middlebury 2014 Motorcycle (scikit-image's copy, 741 x 500): gravity against the floor's
    own plane (three floor patches), then the time per frame."""
    from skimage import data

    _, _, disp = data.stereo_motorcycle()
    f, cx, cy, doffs, baseline = 994.978, 311.193, 254.877, 31.086, 0.193001
    known = np.isfinite(disp)
    depth = np.where(known, f * baseline / (np.where(known, disp, 0) + doffs), 0.0)
    k = (f, f, cx, cy)
    g = estimate_geometry(depth, k)
    floor = np.zeros(depth.shape, bool)
    floor[440:500, 0:110] = floor[460:500, 250:480] = floor[420:500, 690:741] = True
    pts = g.points[floor & known] - g.points[floor & known].mean(0)
    normal = np.linalg.svd(pts, full_matrices=False)[2][-1]
    gravity = np.degrees(np.arccos(min(1.0, abs(float(normal @ g.up)))))
    floor_angle = np.median(g.angle[floor & known])
    hha(depth, k)
    wall, cpu = _time(lambda: hha(depth, k), repeat)
    return (
        f"| real: Middlebury Motorcycle, 741 x 500 | {(~known).mean() * 100:.1f} | "
        f"{gravity:.3f} (vs floor plane) | floor {floor_angle:.2f} (median) | - | "
        f"{wall:.3f} | {cpu:.3f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cpu = platform.processor() or platform.machine()
    print(f"HHA, 640 x 480, NYUDv2 camera; {os.cpu_count()} CPUs ({cpu}), NumPy {np.__version__}")
    print(f"load average {os.getloadavg()[0]:.1f} (wall times grow with it; CPU times less)")
    print()
    print(
        "| scene | missing % | gravity error (deg) | angle error median / p99 (deg) | "
        "height error median / p99 (cm) | s / frame | CPU s / frame |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, params in SCENES.items():
        scene = render_scene(CAMERAS["nyud"], (480, 640), **params)
        print(row(name, scene, scene.depth, args.repeat))
        print(row(name + " + noise, mm, holes", scene, degrade(scene.depth), args.repeat))
    print(real_row(args.repeat))


if __name__ == "__main__":
    main()
