"""A training run's TensorBoard events (`fcnseg train --tensorboard`), in RUN/tb/.

Steps are log.csv's: every logged step gets train/loss, train/lr (train/lr_bias when the biases
have their own rate), train/images_per_s and train/data_wait_s (seconds the steps since the
previous logged one waited for data); every validation gets val/<metric>, val_iu/<class>
(val/<head>/..., val_iu/<head>/<class> for two-head nets), val/predictions (a fixed set of
validation images: input | prediction | ground truth, class colours) and val/confusion.
The run's config goes in once, as text and as hparams (with val/mean_iu as its metric).

Only rank 0 writes. Events are flushed at every checkpoint; a resumed run opens the folder
with purge_step = the checkpoint's step + 1, so readers drop what a killed run wrote past its
checkpoint and the stream has no duplicated or out-of-order step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

__all__ = ["INSTALL", "TensorBoardLog", "require_tensorboard"]

INSTALL = "pip install 'fcnseg[tb]'"
SHOWN = 4  # validation images in val/predictions
PANEL = 160  # their panel height, pixels


def require_tensorboard() -> None:
    """Fail before any training when the tensorboard package is missing, saying what to install."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ImportError(f"--tensorboard needs the tensorboard package: {INSTALL}") from None


class TensorBoardLog:
    """One stream of events; a no-op where `enabled` is False (ranks other than 0)."""

    def __init__(self, folder: Path, *, start: int, enabled: bool = True) -> None:
        self.writer = None
        self._shown: list[int] | None = None
        self._waited = 0.0
        if not enabled:
            return
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        # readers drop every earlier event at or past purge_step: a resumed run's steps after
        # its checkpoint, a new run's (--overwrite, or a restart) whole stream
        self.writer = SummaryWriter(str(folder), purge_step=start + 1 if start else 0,
                                    flush_secs=30)  # fmt: skip

    def config(self, resolved: dict) -> None:
        """The run's config as text and as hparams (written by a new run only)."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        text = json.dumps(resolved, indent=2, default=str)
        self.writer.add_text("config", f"```\n{text}\n```", 0)
        flat = {k: v if isinstance(v, int | float | str | bool) else json.dumps(v, default=str)
                for k, v in resolved.items() if v is not None}  # fmt: skip
        for summary in hparams(flat, {"val/mean_iu": math.nan}):
            self.writer.file_writer.add_summary(summary)

    def step(self, step: int, *, loss: float, lrs: list[float], images_per_s: float,
             data_wait: float) -> None:  # fmt: skip
        """One logged step; `data_wait`: this process's seconds waiting for data so far."""
        if self.writer is None:
            return
        w = self.writer
        w.add_scalar("train/loss", loss, step)
        w.add_scalar("train/lr", lrs[0], step)
        if len(lrs) > 1 and lrs[1] != lrs[0]:
            w.add_scalar("train/lr_bias", lrs[1], step)
        w.add_scalar("train/images_per_s", images_per_s, step)
        w.add_scalar("train/data_wait_s", data_wait - self._waited, step)
        self._waited = data_wait

    def validation(self, step: int, metrics: dict, result, class_names: list[str],
                   head_classes: dict | None) -> None:  # fmt: skip
        """Every metric and per-class IU; the confusion figure (per head). `result`:
        evaluate's matrix (a dict by head for two heads), `metrics` the engine's (flat)."""
        if self.writer is None:
            return
        from ..evaluate import confusion_figure

        heads = metrics.get("heads") or {"": metrics}
        matrices = {k: v.matrix for k, v in result.items()} if isinstance(result, dict) \
            else {"": result.matrix}  # fmt: skip
        names = dict(head_classes or {}) if len(heads) > 1 else {"": list(class_names)}
        for head, m in heads.items():
            pre = f"val/{head}/" if len(heads) > 1 else "val/"
            iu_pre = f"val_iu/{head}/" if len(heads) > 1 else "val_iu/"
            for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
                self.writer.add_scalar(pre + k, float(m[k]), step)
            for c, v in enumerate(np.asarray(m["iu"], dtype=float)):
                if not math.isnan(v):
                    self.writer.add_scalar(iu_pre + _tag(_name(names, head, c)), v, step)
            if head in matrices:
                fig = confusion_figure(matrices[head], _names(names, head, len(m["iu"])))
                self.writer.add_figure(pre + "confusion", fig, step, close=True)
        if len(heads) > 1:  # the first head's, under the one-head names too (hparams' metric)
            first = next(iter(heads.values()))
            for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
                self.writer.add_scalar(f"val/{k}", float(first[k]), step)

    @torch.inference_mode()
    def predictions(self, step: int, model, dataset, head: str | None, device) -> None:
        """val/predictions: the first SHOWN validation items, input | prediction | truth."""
        if self.writer is None:
            return
        from ..data.io import colorize
        from ..weights import prepare
        from .charts import palette, shown_input

        if self._shown is None:
            self._shown = list(range(min(SHOWN, len(dataset))))
        was = model.training
        model.eval()
        try:
            rows: dict[str, list[np.ndarray]] = {}
            for i in self._shown:
                image, target = dataset[i]
                x = {k: v[None] for k, v in image.items()} if isinstance(image, dict) \
                    else image[None]  # fmt: skip
                x = prepare(model.preprocessing, x)
                x = {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) \
                    else x.to(device)  # fmt: skip
                out = model(x)
                outs = out if isinstance(out, dict) else {head or "": out}
                targets = target if isinstance(target, dict) else {head or "": target}
                for h, scores in outs.items():
                    if h not in targets:
                        continue
                    pred = scores.argmax(1)[0].cpu().numpy()
                    t = np.asarray(targets[h])
                    pal = palette(int(scores.shape[1]))
                    truth = np.where(
                        (t == 255)[..., None], 0, colorize(np.where(t == 255, 0, t), pal)
                    )
                    panels = [shown_input(image), colorize(pred, pal), truth.astype(np.uint8)]
                    rows.setdefault(h, []).append(_row(panels))
        finally:
            model.train(was)
        for h, r in rows.items():
            tag = (
                f"val/{h}/predictions" if len(rows) > 1 or (h and h != head) else "val/predictions"
            )
            self.writer.add_image(tag, _stack(r), step, dataformats="HWC")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _name(names: dict, head: str, c: int) -> str:
    n = names.get(head) or names.get("") or []
    return str(n[c]) if c < len(n) else str(c)


def _names(names: dict, head: str, n: int) -> list[str]:
    return [_name(names, head, c) for c in range(n)]


def _tag(name: str) -> str:
    """A class name as a tag part: TensorBoard splits groups at '/'."""
    return name.replace("/", "_").replace(" ", "_") or "_"


def _row(panels: list[np.ndarray]) -> np.ndarray:
    """Panels side by side, each scaled to PANEL pixels high (nearest), 4 px apart."""
    from PIL import Image

    out = []
    for p in panels:
        h, w = p.shape[:2]
        pw = max(1, round(w * PANEL / h))
        im = Image.fromarray(np.ascontiguousarray(p)).resize((pw, PANEL), Image.Resampling.NEAREST)
        out += [np.asarray(im), np.full((PANEL, 4, 3), 255, np.uint8)]
    return np.concatenate(out[:-1], 1)


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    """Rows one under another, padded white to the widest, 4 px apart."""
    width = max(r.shape[1] for r in rows)
    padded = []
    for r in rows:
        pad = np.full((r.shape[0], width - r.shape[1], 3), 255, np.uint8)
        padded += [np.concatenate([r, pad], 1), np.full((4, width, 3), 255, np.uint8)]
    return np.concatenate(padded[:-1], 0)
