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

`--memory`: peak memory and time of one `hha()` call per frame size (640x480, 2048x2048,
6000x6000 by default; `--sizes`), each in a fresh subprocess: the box-on-the-floor scene at
that size (NYUDv2's field of view, intrinsics scaled), with noise, holes and 20 pixels at 79 m
(sensor outliers), float64 metres, allocated before the baseline. Peak = the subprocess's
ru_maxrss minus its resident size just before the call (the depth frame itself is not counted),
also per pixel; time = wall-clock and CPU seconds of the call. A subprocess runs under an
address-space cap (`--cap-gb`, 8) so that a frame too big fails in MemoryError instead of
pushing a shared machine into swap. Prints lscpu's model name and the load average.

    .venv/bin/python benchmarks/hha.py --memory [--sizes 640x480,2048x2048] [--cap-gb 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
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


def big_frame(h: int, w: int) -> tuple[np.ndarray, tuple]:
    """The box-on-the-floor scene at (h, w), rendered in bands of rows (so that rendering
    needs little memory beside the frame), with 0.3 % noise, mm steps, ~3 % holes and 20
    pixels at 79 m; float64 metres, and the camera's intrinsics."""
    s = w / 640
    fx, fy, cx, cy = (v * s for v in CAMERAS["nyud"])
    cy = cy * (h / 480) / s  # the principal point stays at the same fraction of the frame
    depth = np.empty((h, w))
    rng = np.random.default_rng(0)
    for r0 in range(0, h, 64):
        r1 = min(h, r0 + 64)
        band = render_scene(
            (fx, fy, cx, cy - r0), (r1 - r0, w), **SCENES["box on the floor, pitched 25, rolled 3"]
        ).depth
        band = np.rint(band * (1 + rng.normal(0, 0.003, band.shape)) * 1000) / 1000
        band[rng.random(band.shape) < 0.03] = 0.0
        depth[r0:r1] = band
    hole = (slice(h // 3, h // 3 + h // 20), slice(w // 5, w // 5 + w // 15))
    depth[hole] = 0.0  # a blob of missing depth
    bottom = np.flatnonzero(depth[-1] > 0)[:20]
    depth[-1, bottom] = 79.0  # sensor outliers along rays that point at the floor
    return depth, (fx, fy, cx, cy)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_one(h: int, w: int) -> dict:
    """In this (fresh) process: render, warm up on a tiny frame, then one hha() call."""
    depth, k = big_frame(h, w)
    hha(depth[:48, :64].copy(), k)  # imports and first-call costs out of the measurement
    base = _rss_bytes()
    w0, c0 = time.perf_counter(), time.process_time()
    try:
        out = hha(depth, k)
        error = None
    except MemoryError as e:
        out, error = None, f"MemoryError ({e})"[:80]
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    res = {"size": f"{w}x{h}", "wall": wall, "cpu": cpu, "peak": peak, "error": error}
    if out is not None:
        res["height_255_pct"] = float((out[..., 1] == 255).mean() * 100)
    return res


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln)
    except (OSError, subprocess.CalledProcessError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} CPUs"


def memory_table(sizes: list[tuple[int, int]], cap_gb: float) -> None:
    print(f"HHA peak memory and time per frame; {machine()}; NumPy {np.__version__}")
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average (1 / 5 / 15 min) {load} at the start; address space capped at {cap_gb} GB")
    print()
    print("| frame | pixels | peak (MB) | bytes / pixel | s (wall) | CPU s | height = 255 (%) |")
    print("|---|---|---|---|---|---|---|")
    for h, w in sizes:
        cap = str(int(cap_gb * 2**30))
        code = (
            "import json, resource, sys; sys.path.insert(0, sys.argv[1]); "
            "resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2]))); "
            "import hha as b; print(json.dumps(b.measure_one(int(sys.argv[3]), int(sys.argv[4]))))"
        )
        here = os.path.dirname(os.path.abspath(__file__))
        run = subprocess.run(
            [sys.executable, "-c", code, here, cap, str(h), str(w)], capture_output=True, text=True
        )
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["no output"])[-1][:70]
            print(f"| {w} x {h} | {h * w:,} | failed: {last} | | | | |")
            continue
        r = json.loads(run.stdout.strip().splitlines()[-1])
        if r["error"]:
            print(
                f"| {w} x {h} | {h * w:,} | {r['error']} | | {r['wall']:.2f} | {r['cpu']:.2f} | |"
            )
            continue
        print(
            f"| {w} x {h} | {h * w:,} | {r['peak'] / 2**20:.0f} | {r['peak'] / (h * w):.0f} | "
            f"{r['wall']:.2f} | {r['cpu']:.2f} | {r['height_255_pct']:.1f} |"
        )
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average at the end {load}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--memory", action="store_true", help="peak memory and time per frame size")
    ap.add_argument("--sizes", default="640x480,2048x2048,6000x6000", help="WxH,WxH,...")
    ap.add_argument("--cap-gb", type=float, default=8.0, help="address-space cap per size")
    args = ap.parse_args()
    if args.memory:
        sizes = [tuple(int(v) for v in s.split("x"))[::-1] for s in args.sizes.split(",")]
        memory_table(sizes, args.cap_gb)
        return
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
