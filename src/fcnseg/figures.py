"""The paper's refinement figure: input | FCN-32s | FCN-16s | FCN-8s | ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .categories import voc_palette
from .data.io import colorize
from .safety import save_figure

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
    """One row per dataset item: the input, each model's prediction, the ground truth.

    `models` maps a column title ("FCN-32s") to a model; items are (uint8 (3, H, W), target).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(models) + 2
    fig, axes = plt.subplots(len(indices), cols, figsize=(2.0 * cols, 2.0 * len(indices)),
                             dpi=100, squeeze=False)  # fmt: skip
    for model in models.values():
        model.eval().to(device)
    seen: set[int] = set()
    for row, i in enumerate(indices):
        image, target = dataset[i]
        panels = [("input", image.permute(1, 2, 0).numpy())]
        for title, model in models.items():
            x = model.preprocessing.batch(image[None].to(device))
            pred = model(x).argmax(1)[0].cpu().numpy()
            seen.update(np.unique(pred).tolist())
            panels.append((title, colorize(pred)))
        t = target.numpy()
        seen.update(np.unique(t[t != 255]).tolist())
        panels.append(("ground truth", colorize(t)))
        for ax, (title, img) in zip(axes[row], panels, strict=True):
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=10)
    if class_names:
        from matplotlib.patches import Patch

        palette = voc_palette() / 255.0
        handles = [Patch(color=palette[c], label=class_names[c]) for c in sorted(seen)
                   if c < len(class_names)]  # fmt: skip
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 11),
                   fontsize=8, frameon=False)  # fmt: skip
        fig.tight_layout(rect=(0, 0.05, 1, 1))
    else:
        fig.tight_layout()
    return save_figure(fig, path, what="comparison figure")
