"""Evaluation: one confusion matrix over a loader, and the tables and figures that report it."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .metrics import ConfusionMatrix
from .safety import atomic_write, save_figure
from .threads import step_threads

__all__ = [
    "compute_metrics",
    "confusion_figure",
    "evaluate",
    "format_per_class",
    "format_table",
    "load_confusion",
    "plot_confusion",
    "save_confusion",
    "scored_subset",
    "select_head",
    "to_device",
]

# The paper's column order (Table 1 onwards), as (metrics key, header).
COLUMNS = (
    ("pixel_acc", "pixel acc."),
    ("mean_acc", "mean acc."),
    ("mean_iu", "mean IU"),
    ("fw_iu", "f.w. IU"),
)


def evaluate(
    model: nn.Module,
    loader: Iterable,
    num_classes: int | dict[str, int],
    *,
    device: str | torch.device = "cpu",
    ignore_index: int = 255,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
    per_image=None,
) -> ConfusionMatrix | dict[str, ConfusionMatrix]:
    """Run `model` over `loader` and accumulate its argmax predictions in a ConfusionMatrix.

    The loader yields (images float (N, 3, H, W), targets int64 (N, H, W)); targets hold
    `ignore_index` where images were padded, so padding is never scored. The model runs in
    eval mode under `torch.inference_mode` (autocast to `amp_dtype` when given) and must return
    scores (N, num_classes, H, W). Its training flag is restored afterwards, also on error.
    A model with several inputs takes a dict of images; one with several heads (SIFT Flow's
    sem + geo) returns a dict of scores, `num_classes` and the targets are dicts by head, and
    the result is a dict of matrices by head.

    The matrix is this process's only: under torch.distributed with a sharded loader, call
    `.all_reduce()` on the result before `.compute()`.

    `per_image` (e.g. fcnseg.report.PerImageScores): its `update(head, pred, target)` gets each
    batch's argmax predictions as they are scored (head "" for one head), in loader order, so
    per-image scores come from this pass, not a second one.
    """
    device = torch.device(device)
    heads = dict(num_classes) if isinstance(num_classes, dict) else {"": num_classes}
    cms = {k: ConfusionMatrix(n, ignore_index) for k, n in heads.items()}
    was_training = model.training
    model.eval()
    # on a CPU shared with other programs: the faster of torch's threads and the free cores
    threads = step_threads(device, model)
    try:
        with torch.inference_mode():
            for batch in _progress(loader, progress):
                images, targets = _unpack(batch)
                images = to_device(images, device)
                with threads(), torch.autocast(device.type, dtype=amp_dtype,
                                               enabled=amp_dtype is not None):  # fmt: skip
                    scores = model(images)
                if isinstance(scores, dict) and set(scores) == {"out"}:  # {"out": ...} heads
                    scores = scores["out"]
                if "" in heads:
                    scores, targets = {"": scores}, {"": targets}
                if not isinstance(scores, dict) or not isinstance(targets, dict):
                    raise ValueError("a model with several heads needs targets by head (a dict)")
                for k, cm in cms.items():
                    t = targets[k].to(device, non_blocking=True)
                    _check_scores(scores[k], t, heads[k], ignore_index)
                    pred = scores[k].argmax(1)
                    cm.update(pred, t)
                    if per_image is not None:
                        per_image.update(k, pred, t)
    finally:
        model.train(was_training)
    return cms.get("", cms)


class _Head(nn.Module):
    """One output of a several-head model (SIFT Flow's sem or geo), as a one-head model."""

    def __init__(self, model: nn.Module, head: str):
        super().__init__()
        self.model, self.head = model, head
        self.preprocessing = model.preprocessing
        self.name = f"{getattr(model, 'name', type(model).__name__)} ({head})"
        self.num_classes = model.num_classes[head]

    def forward(self, x):
        return self.model(x)[self.head]


def select_head(model: nn.Module, head: str | None) -> nn.Module:
    """`model` scoring only its output `head` (None: the model as it is)."""
    if head is None:
        return model
    heads = model.num_classes if isinstance(getattr(model, "num_classes", None), dict) else {}
    if head not in heads:
        raise ValueError(f"{getattr(model, 'name', 'the model')} has no head {head!r} (heads: "
                         f"{', '.join(heads) or 'one, unnamed'})")  # fmt: skip
    return _Head(model, head)


def to_device(x, device: torch.device, memory_format=None):
    """A tensor, or a dict of tensors (several inputs or heads), moved to `device`."""
    if isinstance(x, dict):
        return {k: to_device(v, device, memory_format) for k, v in x.items()}
    x = x.to(device, non_blocking=True)
    return x if memory_format is None else x.contiguous(memory_format=memory_format)


def scored_subset(dataset):
    """The items the paper scores: all but those the dataset marks unscored (SIFT Flow's two
    unannotated images, `dataset.scored(i)` False)."""
    scored = getattr(dataset, "scored", None)
    if scored is None:
        return dataset
    keep = [i for i in range(len(dataset)) if scored(i)]
    return dataset if len(keep) == len(dataset) else torch.utils.data.Subset(dataset, keep)


def compute_metrics(result, dataset=None) -> dict:
    """Metrics of `evaluate`'s result: one dict, or for several heads {head: metrics}; the
    semantic head leaves out the classes the dataset marks absent from its test set (SIFT Flow:
    `excluded_class_indices`), as the paper scored it."""
    exclude = tuple(getattr(dataset, "excluded_class_indices", ()) or ())
    if isinstance(result, dict):
        return {k: cm.compute(exclude if k == "sem" else ()) for k, cm in result.items()}
    return result.compute(exclude)


def format_table(rows: dict[str, dict], *, percent: bool = True) -> str:
    """A markdown table in the paper's order: model | pixel acc. | mean acc. | mean IU | f.w. IU.

    Values are percentages with one decimal, as the paper prints them (percent=False: fractions
    with four decimals). NaN (nothing labelled) shows as "n/a".
    """
    header = "| model | " + " | ".join(h for _, h in COLUMNS) + " |"
    lines = [header, "|---|" + "---:|" * len(COLUMNS)]
    for name, metrics in rows.items():
        missing = [k for k, _ in COLUMNS if k not in metrics]
        if missing:
            raise ValueError(
                f"row {name!r} lacks {missing}; pass ConfusionMatrix.compute() results "
                f"(keys {[k for k, _ in COLUMNS]})"
            )
        cells = [_number(metrics[k], percent) for k, _ in COLUMNS]
        lines.append(f"| {_cell(name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_per_class(metrics: dict, class_names: Sequence[str], *, percent: bool = True) -> str:
    """A markdown table of per-class IU and accuracy, with a closing row of the means.

    A class with no pixel in the ground truth has no accuracy and, if never predicted either,
    no IU: those cells show "n/a" (and are skipped by the means, as in the paper).
    """
    iu, acc = np.asarray(metrics["iu"]), np.asarray(metrics["acc"])
    if len(class_names) != len(iu):
        raise ValueError(
            f"{len(class_names)} class names for {len(iu)} classes; pass one name per class"
        )
    lines = ["| class | IU | acc. |", "|---|---:|---:|"]
    for name, u, a in zip(class_names, iu, acc, strict=True):
        lines.append(f"| {_cell(name)} | {_number(u, percent)} | {_number(a, percent)} |")
    mean_iu, mean_acc = _number(metrics["mean_iu"], percent), _number(metrics["mean_acc"], percent)
    lines.append(f"| **mean** | {mean_iu} | {mean_acc} |")
    return "\n".join(lines)


def plot_confusion(
    matrix: np.ndarray | torch.Tensor | ConfusionMatrix,
    class_names: Sequence[str] | None,
    path: str | Path,
    *,
    normalize: str | None = "true",
) -> Path:
    """Draw the confusion matrix as a PNG and return its path (parent folders are created).

    normalize: "true" divides each row by its ground-truth total (the diagonal is per-class
    accuracy), "pred" each column, "all" the whole matrix, None shows raw counts. Up to 30
    classes get a number in each cell (percent, or counts with normalize=None). Drawing uses
    matplotlib's Agg canvas directly, so no display is needed and pyplot is untouched.
    """
    fig = confusion_figure(matrix, class_names, normalize=normalize)
    return save_figure(fig, path, what="confusion matrix plot", dpi=100)


def confusion_figure(
    matrix: np.ndarray | torch.Tensor | ConfusionMatrix,
    class_names: Sequence[str] | None,
    *,
    normalize: str | None = "true",
):
    """plot_confusion's heat map as a matplotlib Figure (for TensorBoard, or saving elsewhere)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = _matrix(matrix)
    n = m.shape[0]
    names = _names(class_names, n)
    if normalize not in ("true", "pred", "all", None):
        raise ValueError(f"normalize must be 'true', 'pred', 'all' or None, got {normalize!r}")
    m = m.astype(np.float64)
    if normalize is None:
        shown = m
    else:
        totals = {"true": m.sum(1, keepdims=True), "pred": m.sum(0, keepdims=True)}
        denom = np.broadcast_to(totals.get(normalize, m.sum()), m.shape)
        shown = np.divide(m, denom, out=np.zeros_like(m), where=denom > 0)
    size = min(max(4.0, 0.45 * n + 2.5), 40.0)
    fig = Figure(figsize=(size, size * 0.9))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    top = 1.0 if normalize else max(float(shown.max()), 1.0)
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=top, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), names, rotation=90)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    title = {"true": "rows normalized", "pred": "columns normalized", "all": "fractions"}
    ax.set_title(f"confusion matrix ({title.get(normalize, 'pixel counts')})")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                text = f"{100 * shown[i, j]:.0f}" if normalize else f"{int(m[i, j])}"
                dark = shown[i, j] > 0.6 * top
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")  # fmt: skip
    fig.tight_layout()
    return fig


def save_confusion(
    matrix: np.ndarray | torch.Tensor | ConfusionMatrix,
    class_names: Sequence[str] | None,
    path: str | Path,
) -> Path:
    """Write the raw counts as CSV: a header of prediction names, one row per ground-truth class.

    `load_confusion(path)` reads it back. Parent folders are created; returns the path.
    """
    m = _matrix(matrix)
    names = _names(class_names, m.shape[0])
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["ground truth \\ prediction", *names])
    for name, row in zip(names, m, strict=True):
        writer.writerow([name, *(int(v) for v in row)])
    return atomic_write(path, lambda f: f.write(text.getvalue().encode()), what="confusion CSV")


def load_confusion(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Read a `save_confusion` CSV: (int64 matrix, class names)."""
    with Path(path).open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or len(rows) != len(rows[0]):
        raise ValueError(f"{path}: not a square confusion-matrix CSV written by save_confusion")
    names = rows[0][1:]
    try:
        m = np.array([[int(v) for v in r[1:]] for r in rows[1:]], dtype=np.int64)
    except ValueError as e:
        raise ValueError(f"{path}: a count is not an integer ({e})") from None
    return m.reshape(len(names), len(names)), names


def _unpack(batch) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, dict):
        return batch["image"], batch["target"]
    if isinstance(batch, list | tuple) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(
        f"the loader yielded a {type(batch).__name__}; it must yield (images, targets) pairs"
    )


def _check_scores(
    scores: torch.Tensor, targets: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> None:
    """Shapes, class count and finiteness: a batch that cannot be scored is refused, not scored."""
    labelled = targets[targets != ignore_index]
    if labelled.numel() and int(labelled.max()) >= num_classes:
        raise ValueError(
            f"the data holds label {int(labelled.max())}, but the model scores {num_classes} "
            f"classes (0..{num_classes - 1}): evaluate a checkpoint trained on this data's classes"
        )
    if scores.ndim != 4 or scores.shape[1] != num_classes:
        raise ValueError(
            f"the model returned shape {tuple(scores.shape)}; expected (N, {num_classes}, H, W) "
            f"with num_classes={num_classes} (does the checkpoint match the dataset?)"
        )
    if scores.shape[:1] + scores.shape[2:] != targets.shape:
        raise ValueError(
            f"scores of shape {tuple(scores.shape)} do not cover targets of shape "
            f"{tuple(targets.shape)}; the model must return one score map per pixel (N, C, H, W)"
        )
    if not torch.isfinite(scores).all():
        raise ValueError(
            "the model gives NaN or infinite scores on this batch: its weights or preprocessing "
            "are broken (a diverged checkpoint?); nothing was scored"
        )


def _progress(loader: Iterable, enabled: bool) -> Iterable:
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc="evaluate", unit="batch", dynamic_ncols=True)


def _matrix(matrix: np.ndarray | torch.Tensor | ConfusionMatrix) -> np.ndarray:
    if isinstance(matrix, ConfusionMatrix):
        return np.asarray(matrix.matrix)
    m = matrix.cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"a confusion matrix is square (C, C), got shape {m.shape}")
    return m


def _names(class_names: Sequence[str] | None, n: int) -> list[str]:
    if not class_names:
        return [str(i) for i in range(n)]
    if len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names for a {n}x{n} matrix; pass {n} names")
    return [str(c) for c in class_names]


def _number(v: float, percent: bool) -> str:
    v = float(v)
    if math.isnan(v):
        return "n/a"
    return f"{100 * v:.1f}" if percent else f"{v:.4f}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")
