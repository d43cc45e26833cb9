"""The report's pictures: the sorted per-class bar chart, the per-image IU histogram (matplotlib,
Agg, no display), and the gallery's thumbnails (Pillow): input | prediction | ground truth |
error map in one strip."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from ..categories import voc_palette
from ..safety import atomic_write, save_figure

__all__ = ["class_bars", "iu_histogram", "palette", "shown_input", "strip"]

PANEL = 160  # thumbnail height of each panel of a gallery strip, pixels


def palette(n: int) -> np.ndarray:
    """n class colours (VOC's colour map), (max(n, 256), 3) uint8."""
    return voc_palette(max(n, 256))


def class_bars(names: list[str], iu, acc, gt_pixels, path: Path, title: str) -> Path:
    """Per-class IU (bars) and accuracy (dots), sorted by IU, worst at the top; the ground
    truth's pixel count beside each name. Classes without an IU (absent) at the bottom."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    iu, acc = np.asarray(iu, dtype=float), np.asarray(acc, dtype=float)
    order = sorted(range(len(names)), key=lambda c: (np.isnan(iu[c]), iu[c] if iu[c] == iu[c]
                                                      else 0.0))  # fmt: skip
    order = order[::-1]  # barh draws bottom-up: worst ends at the top
    n = len(names)
    fig = Figure(figsize=(7.0, min(max(2.0, 0.22 * n + 1.0), 60.0)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y = np.arange(n)
    ax.barh(y, np.nan_to_num(iu[order]), color="tab:blue", label="IU")
    ax.plot(acc[order], y, "o", color="tab:orange", markersize=3, label="accuracy")
    labels = [f"{names[c]} ({_count(gt_pixels[c])})" for c in order]
    ax.set_yticks(y, labels, fontsize=7 if n > 30 else 8)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel("IU (bars), accuracy (dots); ground-truth pixels in brackets")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, what="per-class chart", dpi=90)


def iu_histogram(values: list[float], path: Path, title: str) -> Path:
    """How many images reach each per-image IU (20 bins over 0..1)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 2.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    v = [x for x in values if not math.isnan(x)]
    ax.hist(v, bins=20, range=(0, 1), color="tab:blue")
    ax.set_xlabel("per-image mean IU")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, what="per-image IU histogram", dpi=90)


def shown_input(image) -> np.ndarray:
    """A dataset item's image as uint8 (H, W, 3): the colour image of several inputs (NYUDv2's
    colour + HHA), the first 3 of colour + depth's 4 channels, a depth map in grey."""
    import torch

    if isinstance(image, dict):
        image = image.get("color", next(iter(image.values())))
    x = torch.as_tensor(image).float()
    if x.shape[0] == 1:
        lo, hi = float(x.min()), float(x.max())
        x = ((x - lo) / max(hi - lo, 1e-6) * 255).expand(3, -1, -1)
    return x[:3].clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def strip(image: np.ndarray, pred: np.ndarray, target: np.ndarray, num_classes: int,
          ignore_index: int = 255) -> Image.Image:  # fmt: skip
    """input | prediction | ground truth | errors (red: wrong, white: right, grey: not
    scored), each PANEL pixels high, as one RGB image. pred/target are cropped to the image."""
    h, w = image.shape[:2]
    pred, target = pred[:h, :w], target[:h, :w]
    pal = palette(num_classes)
    scored = target != ignore_index
    gt = np.where(scored[..., None], pal[np.where(scored, target, 0).clip(0, len(pal) - 1)], 0)
    errors = np.full((h, w, 3), 160, np.uint8)
    errors[scored] = 255
    errors[scored & (pred != target)] = (220, 20, 20)
    panels = [image, pal[pred.clip(0, len(pal) - 1)], gt.astype(np.uint8), errors]
    pw = max(1, round(w * PANEL / h))
    pw, ph = (min(pw, 2 * PANEL), PANEL)
    gap = 4
    out = Image.new("RGB", (4 * pw + 3 * gap, ph), (255, 255, 255))
    for k, p in enumerate(panels):
        im = Image.fromarray(np.ascontiguousarray(p, dtype=np.uint8))
        resample = Image.Resampling.BILINEAR if k == 0 else Image.Resampling.NEAREST
        out.paste(im.resize((pw, ph), resample), (k * (pw + gap), 0))
    return out


def save_png(im: Image.Image, path: Path) -> Path:
    return atomic_write(path, lambda f: im.save(f, format="PNG", optimize=True), what="thumbnail")


def _count(n: float) -> str:
    n = float(n)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{int(n)}"
