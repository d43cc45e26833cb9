"""The paper's refinement figure: input | FCN-32s | FCN-16s | FCN-8s | ground truth."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .categories import voc_palette
from .data.io import colorize
from .safety import save_figure
from .weights import prepare

__all__ = ["compare_figure"]


@torch.inference_mode()
def compare_figure(
    models: dict[str, nn.Module],
    dataset,
    indices: list[int],
    path: str | Path,
    *,
    class_names: list[str] | None = None,
    device: str | torch.device = "cpu",
) -> Path:
    """One row per dataset item (per item and head for two-head nets: sem, then geo): the input,
    each model's prediction, the ground truth; a legend of the classes shown, by name.

    `models` maps a column title ("FCN-32s") to a model. Items are as the datasets give them:
    the image uint8 (3, H, W), colour + depth in 4 channels, or a dict by input (the colour
    image is shown); the target (H, W), or a dict by head. Class names: the dataset's
    `head_classes` per head, else `class_names`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head_names = dict(getattr(dataset, "head_classes", None) or {})
    only_head = next(iter(head_names)) if len(head_names) == 1 else None
    items = [dataset[i] for i in indices]
    rows = [(n, head) for n, (_, t) in enumerate(items)
            for head in (list(t) if isinstance(t, dict) else [only_head])]  # fmt: skip
    several = len({h for _, h in rows}) > 1
    for model in models.values():
        model.eval().to(device)
    outputs = [{title: _forward(title, m, image, device) for title, m in models.items()}
               for image, _ in items]  # fmt: skip
    seen: dict[str | None, set[int]] = {h: set() for _, h in rows}
    panels_by_row = []
    for n, head in rows:
        image, target = items[n]
        panels = [("input", _shown(image))]
        for title, out in outputs[n].items():
            if isinstance(out, dict) and head not in out:
                raise ValueError(f"{title} has heads {', '.join(out)} but the data gives one "
                                 f"target per image: pass --data-option task="
                                 f"{' or task='.join(out)}")  # fmt: skip
            pred = (out[head] if isinstance(out, dict) else out).argmax(1)[0].cpu().numpy()
            seen[head].update(np.unique(pred).tolist())
            panels.append((title, colorize(pred)))
        t = (target[head] if isinstance(target, dict) else target).numpy()
        seen[head].update(np.unique(t[t != 255]).tolist())
        panels.append(("ground truth", colorize(t)))
        panels_by_row.append(panels)
    handles = _legend(seen, head_names, class_names, several)
    cols = len(models) + 2
    ncol = max(1, min(len(handles), int(2.0 * cols / 1.5)))  # ~1.5 inches per name
    legend_h = 0.2 * math.ceil(len(handles) / ncol) + 0.15 if handles else 0.0
    height = 2.0 * len(rows) + legend_h
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.0 * cols, height), dpi=100,
                             squeeze=False)  # fmt: skip
    for r, panels in enumerate(panels_by_row):
        for ax, (title, img) in zip(axes[r], panels, strict=True):
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=10)
        if several:
            axes[r][0].set_ylabel(rows[r][1], fontsize=10)
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, legend_h / height, 1, 1))
    else:
        fig.tight_layout()
    return save_figure(fig, path, what="comparison figure")


def _forward(title: str, model: nn.Module, image, device):
    """The model's scores for one item's image (a tensor, or a dict by input)."""
    x = {k: v[None].to(device) for k, v in image.items()} if isinstance(image, dict) \
        else image[None].to(device)  # fmt: skip
    try:
        x = prepare(model.preprocessing, x)
    except ValueError as e:
        raise ValueError(f"{title} cannot take this data's images ({e}): compare nets of "
                         f"the same inputs, on their training data") from None  # fmt: skip
    return model(x)


def _shown(image) -> np.ndarray:
    """An item's image as uint8 (H, W, 3): the colour image of several inputs (a dict's
    "color", the first 3 of colour + depth's 4 channels), a depth map in grey."""
    if isinstance(image, dict):
        image = image.get("color", next(iter(image.values())))
    x = image.float()
    if x.shape[0] == 1:  # depth alone: its range in grey
        lo, hi = float(x.min()), float(x.max())
        x = ((x - lo) / max(hi - lo, 1e-6) * 255).expand(3, -1, -1)
    return x[:3].clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _legend(seen: dict, head_names: dict, class_names, several: bool) -> list:
    from matplotlib.patches import Patch

    palette = voc_palette() / 255.0
    handles = []
    for head, classes in seen.items():
        names = head_names.get(head) or class_names
        if not names:
            continue
        for c in sorted(classes):
            if c < len(names):
                label = f"{names[c]} ({head})" if several else str(names[c])
                handles.append(Patch(color=palette[c], label=label))
    return handles
