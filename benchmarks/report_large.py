"""The evaluation report of a VOC-val-sized set: 1,449 images of 500x375, 21 classes.

Synthetic scenes (blocks of classes, 255 borders) and a tiny model (a 1x1 convolution whose
scores follow the image, so predictions are partly right): what is timed is fcnseg's own work,
per-image IU gathered while evaluating and the report folder written (index.html, charts,
gallery thumbnails, CSVs), not a network's forward pass.

    .venv/bin/python benchmarks/report_large.py [--n 1449] [--out /tmp/report_large]

Prints: evaluate without and with per-image scores (the overhead), the report's writing time,
its folder size and file count.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fcnseg.amp import machine_name
from fcnseg.evaluate import compute_metrics, evaluate
from fcnseg.report import PerImageScores
from fcnseg.report.evaluation import write_report

C, H, W = 21, 375, 500
NAMES = [f"class{i}" for i in range(C)]


class Scenes(torch.utils.data.Dataset):
    """Item i: uint8 (3, H, W) image whose colour encodes the class blocks, target (H, W)."""

    def __init__(self, n: int):
        self.n = n
        self.ids = [f"2008_{i:06d}" for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = np.random.default_rng(i)
        t = np.zeros((H, W), np.int64)
        for _ in range(3):
            y, x = g.integers(0, H - 60), g.integers(0, W - 60)
            t[y : y + g.integers(40, 200), x : x + g.integers(40, 250)] = g.integers(1, C)
        t[::50] = 255  # unlabelled borders
        image = np.stack([(t * 11) % 256, (t * 37) % 256, g.integers(0, 60, (H, W))])
        return torch.from_numpy(image.astype(np.uint8)), torch.from_numpy(t)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.score = nn.Conv2d(3, C, 1)

    def forward(self, x):
        return self.score(x.float() / 255)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1449)
    p.add_argument("--out", default="/tmp/report_large")
    args = p.parse_args()
    data, model = Scenes(args.n), Tiny().eval()

    def loader():
        return torch.utils.data.DataLoader(data, batch_size=16)

    t = time.perf_counter()
    evaluate(model, loader(), C)
    plain = time.perf_counter() - t
    per_image = PerImageScores(C, keep=8)
    t = time.perf_counter()
    cm = evaluate(model, loader(), C, per_image=per_image)
    scored = time.perf_counter() - t
    shutil.rmtree(args.out, ignore_errors=True)
    t = time.perf_counter()
    m = compute_metrics(cm)
    heads = {"": {"matrix": cm.matrix, "metrics": m, "names": NAMES}}
    write_report(Path(args.out), title="synthetic VOC-val-sized set", facts=[("images", args.n)],
                 rows=[{"name": "tiny", "metrics": m}], dataset=data, heads=heads,
                 per_image=per_image)  # fmt: skip
    written = time.perf_counter() - t
    files = [f for f in Path(args.out).rglob("*") if f.is_file()]
    size = sum(f.stat().st_size for f in files)
    page = (Path(args.out) / "index.html").stat().st_size
    cpu = machine_name()
    print(f"{args.n} images {W}x{H}, {C} classes; {cpu}; load {os.getloadavg()[0]:.1f}")
    print(f"evaluate: {plain:.1f} s; with per-image scores: {scored:.1f} s "
          f"(+{100 * (scored / plain - 1):.0f}%)")  # fmt: skip
    print(f"report written in {written:.1f} s: {size / 1e6:.2f} MB in {len(files)} files "
          f"(index.html {page / 1e3:.0f} kB)")  # fmt: skip


if __name__ == "__main__":
    main()
