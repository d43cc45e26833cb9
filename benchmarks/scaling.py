"""Scaling around the model: images/s of training and evaluation for 1 and 2 processes and 0, 1
and 2 data workers, on VOC-like JPEG inputs (500x375, written by this script), with the seconds
each training run's steps waited for their images.

    python benchmarks/scaling.py [--images 32] [--steps 8] [--width 0.125]

Each run is `fcnseg train` / `fcnseg eval` in a fresh process (torchrun for 2 processes), as a
user runs them; the figures are those the commands print. The model is a thin FCN-8s (width
0.125, "same" layout) so that decoding is a visible share of a step; the real nets at full width
make the data side relatively cheaper. Prints a markdown table and the CPU it ran on.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fcnseg.amp import machine_name


def write_dataset(root: Path, n: int) -> None:
    """A folder data set: n noisy 500x375 JPEG photos with 5-class masks, train = val."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\na\nb\nc\nd\n")
    for i in range(n):
        h, w = (375, 500) if i % 2 else (500, 375)
        smooth = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        photo = Image.fromarray(smooth).resize((w, h), Image.BILINEAR)
        noisy = np.asarray(photo, np.int16) + rng.integers(-20, 21, (h, w, 3))
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(root / "images" / f"{i}.jpg",
                                                                   quality=90)  # fmt: skip
        mask = (np.asarray(photo)[..., 0] // 52).astype(np.uint8)
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")


def run(cmd: list[str]) -> tuple[str, float]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--width", type=float, default=0.125)
    args = p.parse_args()
    fcnseg = [sys.executable, "-m", "fcnseg"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "voc-like"
        write_dataset(data, args.images)
        spec = f"folder:{data}"
        for nproc in (1, 2):
            for workers in (0, 1, 2):
                out = Path(tmp) / f"run-{nproc}-{workers}"
                cmd = [*fcnseg, "train", "--model", "fcn8s_vgg16", "--width", str(args.width),
                       "--layout", "same", "--recipe", "modern", "--data", spec,
                       "--train-split", "all", "--val-split", "all", "--crop", "320",
                       "--batch-size", str(args.batch), "--steps", str(args.steps),
                       "--eval-every", "0", "--workers", str(workers), "--nproc", str(nproc),
                       "--out", str(out)]  # fmt: skip
                stdout, wall = run(cmd)
                m = re.search(r"([\d.]+) images/s, ([\d.]+) s waiting for data", stdout)
                rate, wait = (float(m.group(1)), float(m.group(2))) if m else (float("nan"),) * 2
                ev_cmd = [*fcnseg, "eval", str(out / "last.pt"), "--data", spec, "--split",
                          "all", "--batch-size", "2", "--workers", str(workers), "--nproc",
                          str(nproc)]  # fmt: skip
                ev_out, _ = run(ev_cmd)
                e = re.search(r"\(([\d.]+) images/s", ev_out)
                rows.append((nproc, workers, rate, wait, wall, float(e.group(1)) if e else None))
                print(rows[-1], flush=True)
    print(
        f"\nCPU: {machine_name()}; {os.cpu_count()} cores; load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(
        f"thin FCN-8s (width {args.width}, same layout), crop 320, batch {args.batch}, "
        f"{args.steps} steps, {args.images} JPEGs 500x375\n"
    )
    print(
        "| processes | data workers | train images/s | s waiting for data (rank 0) | "
        "train wall s | eval images/s |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for nproc, workers, rate, wait, wall, ev in rows:
        print(
            f"| {nproc} | {workers} | {rate:.2f} | {wait:.2f} | {wall:.1f} | "
            f"{ev if ev is not None else float('nan'):.2f} |"
        )


if __name__ == "__main__":
    main()
