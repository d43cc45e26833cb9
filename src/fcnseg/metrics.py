"""The paper's four metrics from one confusion matrix, and the output-stride upper bound.

FCN section 5: n_ij counts pixels of ground-truth class i predicted as class j, t_i = sum_j n_ij,
and pixels labelled `ignore_index` (255, object borders in VOC) are left out.

    pixel accuracy   sum_i n_ii / sum_i t_i
    mean accuracy    (1/n_cl) sum_i n_ii / t_i
    mean IU          (1/n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii)
    f.w. IU          (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)

One matrix is accumulated over the whole set and the metrics computed once at the end (not a
mean of per-image scores). Undefined terms are skipped as the reference's NaN-aware mean does:
mean accuracy skips classes with t_i = 0, mean IU skips classes whose union is 0 (absent from
both ground truth and prediction), f.w. IU sums over classes with t_i > 0. A class that is only
predicted has IU 0 and counts in mean IU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

__all__ = ["ConfusionMatrix", "downsample_upsample", "upper_bound"]

Array = np.ndarray | torch.Tensor


class ConfusionMatrix:
    """Accumulates n_ij over any number of `update` calls; `compute` gives the four metrics.

    `matrix` is an int64 numpy array (num_classes, num_classes): rows are ground truth, columns
    are predictions. Updates run `torch.bincount` on the inputs' device; only the small matrix
    comes back to the CPU.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._m = np.zeros((num_classes, num_classes), dtype=np.int64)

    def __repr__(self) -> str:
        return (f"ConfusionMatrix(num_classes={self.num_classes}, "
                f"ignore_index={self.ignore_index}, pixels={int(self._m.sum())})")  # fmt: skip

    @property
    def matrix(self) -> np.ndarray:
        """Read-only view of n_ij (rows ground truth i, columns prediction j), int64."""
        view = self._m.view()
        view.flags.writeable = False
        return view

    def reset(self) -> None:
        self._m[:] = 0

    def update(self, pred: Array, target: Array) -> None:
        """Add one batch. `pred` and `target` hold class indices of the same shape (any dims).

        Pixels whose target is `ignore_index` are skipped, and their prediction is not looked at.
        A target value outside [0, num_classes) that is not `ignore_index`, or a prediction
        outside that range at a labelled pixel, raises ValueError naming the values.
        """
        p, t = _as_index_tensor(pred, "pred"), _as_index_tensor(target, "target")
        if p.shape != t.shape:
            raise ValueError(
                f"pred has shape {tuple(p.shape)} but target has shape {tuple(t.shape)}; pass "
                "class indices (argmax over the class dimension) of the target's shape"
            )
        p, t = p.reshape(-1).to(t.device).long(), t.reshape(-1).long()
        if self.ignore_index is not None:
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
        n = self.num_classes
        for name, v in (("target", t), ("pred", p)):
            bad = (v < 0) | (v >= n)
            if bool(bad.any()):
                values = torch.unique(v[bad]).tolist()
                shown = values[:10] + (["..."] if len(values) > 10 else [])
                hint = f" and is not ignore_index={self.ignore_index}" if name == "target" else ""
                raise ValueError(
                    f"{name} holds values {shown} outside [0, {n}){hint}; check num_classes "
                    f"({n}) and the label encoding (e.g. palette colours not mapped to indices)"
                )
        counts = torch.bincount(t * n + p, minlength=n * n)
        self._m += counts.reshape(n, n).cpu().numpy()

    def compute(self, exclude: Sequence[int] = ()) -> dict:
        """pixel_acc, mean_acc, mean_iu, fw_iu (floats in [0, 1]); iu and acc per class.

        Per-class values are float64 arrays with NaN where undefined (acc: t_i = 0; iu: union
        0). With no labelled pixel at all every value is NaN: there is nothing to score.
        `exclude`: classes left out of the mean accuracy and mean IU (their per-class values
        are NaN): the paper's SIFT Flow scores leave out the classes absent from its test set.
        """
        m = self._m.astype(np.float64)
        tp, gt, pred = np.diag(m), m.sum(1), m.sum(0)
        union = gt + pred - tp
        total = gt.sum()
        acc = _divide(tp, gt)
        iu = _divide(tp, union)
        acc[list(exclude)] = iu[list(exclude)] = np.nan
        seen = (gt > 0) & ~np.isnan(iu)
        return {
            "pixel_acc": float(tp.sum() / total) if total else float("nan"),
            "mean_acc": _nanmean(acc),
            "mean_iu": _nanmean(iu),
            "fw_iu": float((gt[seen] * iu[seen]).sum() / total) if total else float("nan"),
            "iu": iu,
            "acc": acc,
        }

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another accumulator's counts (from another worker or process); returns self."""
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"can only merge a ConfusionMatrix, got {type(other).__name__}")
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"cannot merge a matrix with num_classes={other.num_classes}, ignore_index="
                f"{other.ignore_index} into one with num_classes={self.num_classes}, "
                f"ignore_index={self.ignore_index}; build both with the same settings"
            )
        self._m += other._m
        return self

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.merge(other)

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.copy().merge(other)

    def copy(self) -> ConfusionMatrix:
        new = ConfusionMatrix(self.num_classes, self.ignore_index)
        new._m[:] = self._m
        return new

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrices of all processes (torch.distributed); a no-op when not initialized.

        Every process must call it. With the NCCL backend the sum runs on the current CUDA
        device. Returns self.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        buf = torch.from_numpy(self._m.copy()).to(device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        self._m[:] = buf.cpu().numpy()
        return self

    def state_dict(self) -> dict:
        """Plain tensors and ints: `torch.load(..., weights_only=True)` reads it back."""
        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "matrix": torch.from_numpy(self._m.copy()),
        }

    def load_state_dict(self, state: dict) -> None:
        """Replace the counts with saved ones; the saved settings must match this matrix's."""
        missing = {"num_classes", "ignore_index", "matrix"} - set(state)
        if missing:
            raise ValueError(f"confusion-matrix state lacks {sorted(missing)}; got {sorted(state)}")
        saved = (state["num_classes"], state["ignore_index"])
        if saved != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"saved state has num_classes={saved[0]}, ignore_index={saved[1]}; this matrix "
                f"has num_classes={self.num_classes}, ignore_index={self.ignore_index}. Use "
                "ConfusionMatrix.from_state_dict(state) to rebuild it with the saved settings"
            )
        m = np.asarray(torch.as_tensor(state["matrix"]).cpu().numpy(), dtype=np.int64)
        if m.shape != self._m.shape or (m < 0).any():
            raise ValueError(
                f"saved matrix has shape {m.shape} (min {m.min() if m.size else 'n/a'}); expected "
                f"non-negative counts of shape {self._m.shape}"
            )
        self._m[:] = m

    @classmethod
    def from_state_dict(cls, state: dict) -> ConfusionMatrix:
        cm = cls(state["num_classes"], state["ignore_index"])
        cm.load_state_dict(state)
        return cm


def downsample_upsample(
    label: Array, factor: int, ignore_index: int = 255, *, method: str = "mode"
) -> Array:
    """Ground truth downsampled by `factor` and upsampled back: the paper's upper bound.

    The map (..., H, W) is cut into factor x factor blocks aligned at the top-left corner (the
    last row and column of blocks are partial when H or W is not a multiple of `factor`). Each
    block gets one label, as the single output location of a stride-`factor` net covering it
    would, and nearest upsampling paints that label back over the block. The result has the
    input's shape, type, dtype and device.

    method="mode" (default): the most frequent non-ignore label of the block (ties go to the
        smaller class index). It is the best single label for the block's pixels, so it is what
        a stride-`factor` net could at best produce, and pixel accuracy can only grow as the
        factor shrinks through nested grids (32 -> 16 -> 8).
    method="nearest": the label at the block's centre pixel (index start + size // 2), i.e.
        plain nearest-neighbour resampling; a centre labelled `ignore_index` falls back to the
        block's mode, since a net always predicts a class.

    Ignore pixels never become the prediction: they hold no class to predict and are left out
    of scoring anyway. A block with no labelled pixel predicts class 0 (background); all of
    its pixels are ignore, so that choice is never scored. The output is therefore a valid
    prediction for `ConfusionMatrix.update(output, label)`.
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int (an output stride), got {factor!r}")
    if method not in ("mode", "nearest"):
        raise ValueError(f"method must be 'mode' or 'nearest', got {method!r}")
    is_tensor = isinstance(label, torch.Tensor)
    arr = label.detach().cpu().numpy() if is_tensor else np.asarray(label)
    if arr.ndim < 2 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(
            f"label must be an integer map of shape (..., H, W), got dtype {arr.dtype} and "
            f"shape {arr.shape}"
        )
    *lead, h, w = arr.shape
    x = arr.reshape(-1, h, w).astype(np.int64)
    n, f = x.shape[0], factor
    hb, wb = -(-h // f), -(-w // f)
    padded = np.full((n, hb * f, wb * f), ignore_index, dtype=np.int64)
    padded[:, :h, :w] = x
    blocks = padded.reshape(n, hb, f, wb, f).transpose(0, 1, 3, 2, 4).reshape(-1, f * f)
    valid = blocks != ignore_index
    labels = blocks[valid]
    if labels.size and labels.min() < 0:
        raise ValueError(
            f"label holds negative values {np.unique(labels[labels < 0])[:10].tolist()} "
            f"that are not ignore_index={ignore_index}"
        )
    k = int(labels.max()) + 1 if labels.size else 1
    rows = np.nonzero(valid)[0]  # block of each labelled pixel, in the order of `labels`
    counts = np.bincount(rows * k + labels, minlength=blocks.shape[0] * k)
    grid = counts.reshape(-1, k).argmax(1).reshape(n, hb, wb)  # all-ignore block -> 0
    if method == "nearest":
        cy = np.minimum(np.arange(hb) * f + np.minimum(f, h - np.arange(hb) * f) // 2, h - 1)
        cx = np.minimum(np.arange(wb) * f + np.minimum(f, w - np.arange(wb) * f) // 2, w - 1)
        centre = x[:, cy][:, :, cx]
        grid = np.where(centre == ignore_index, grid, centre)
    out = grid.repeat(f, axis=1).repeat(f, axis=2)[:, :h, :w].reshape(*lead, h, w)
    out = out.astype(arr.dtype)
    if is_tensor:
        return torch.from_numpy(out).to(label.device)
    return out


def upper_bound(
    targets: Iterable[Array],
    num_classes: int,
    factors: Iterable[int] = (32, 16, 8),
    ignore_index: int = 255,
    *,
    method: str = "mode",
) -> dict[int, dict]:
    """Metrics of `downsample_upsample(target, f)` against each target, per factor f.

    One confusion matrix per factor is accumulated over the whole set (each target read once),
    so the numbers compare with the paper's 32 -> 86.1, 16 -> 92.8, 8 -> 96.4 mean IU on VOC.
    Targets are label maps (H, W) or batches (N, H, W), numpy or torch.
    """
    factors = list(factors)
    if not factors:
        raise ValueError("factors is empty; pass output strides such as (32, 16, 8)")
    cms = {f: ConfusionMatrix(num_classes, ignore_index) for f in factors}
    for target in targets:
        for f, cm in cms.items():
            cm.update(downsample_upsample(target, f, ignore_index, method=method), target)
    return {f: cm.compute() for f, cm in cms.items()}


def _as_index_tensor(x: Array, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        a = np.asarray(x)
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise ValueError(_dtype_message(name, a.dtype, a.shape))
        t = torch.from_numpy(a.astype(np.int64, copy=False))
    if t.is_floating_point() or t.is_complex():
        raise ValueError(_dtype_message(name, t.dtype, tuple(t.shape)))
    return t


def _dtype_message(name: str, dtype: object, shape: tuple) -> str:
    return (
        f"{name} must hold integer class indices, got dtype {dtype} of shape {shape}; "
        "for scores of shape (N, C, H, W) pass scores.argmax(1)"
    )


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.full_like(a, np.nan), where=b > 0)


def _nanmean(v: np.ndarray) -> float:
    defined = v[~np.isnan(v)]
    return float(defined.mean()) if defined.size else float("nan")
