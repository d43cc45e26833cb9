"""Per-image scores, gathered while `evaluate` runs (no second pass), and the worst and best
images kept for the report's gallery.

An image's IU is the paper's mean IU on that image alone: over the classes present in its
ground truth or its prediction (labelled pixels only), n_cc / (t_c + p_c - n_cc), averaged.
An image without a labelled pixel has no score (NaN) and never enters the gallery.
"""

from __future__ import annotations

import csv
import dataclasses
import heapq
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..safety import atomic_write

__all__ = ["ImageScore", "PerImageScores", "read_per_image", "write_per_image"]


@dataclass
class ImageScore:
    order: int  # the image's place in the scored items (the loader's order)
    mean_iu: float
    pixel_acc: float
    labelled: int  # labelled pixels
    classes: list[int] = field(default_factory=list)  # classes in its ground truth


class PerImageScores:
    """Collects each image's IU and pixel accuracy per head; keeps the predictions and targets
    of the `keep` worst and `keep` best images (per head) for the gallery.

    Images arrive in loader order: `order` k is item k of the scored items (of this process's
    share under --nproc, until `gathered`), so the report reads its input image back from the
    dataset.
    """

    def __init__(self, num_classes: int | dict[str, int], *, keep: int = 8,
                 ignore_index: int = 255) -> None:  # fmt: skip
        self.heads = dict(num_classes) if isinstance(num_classes, dict) else {"": num_classes}
        self.keep, self.ignore_index = keep, ignore_index
        self.scores: dict[str, list[ImageScore]] = {k: [] for k in self.heads}
        # heaps of (key, order): worst keeps the highest -IU on top to drop, best the lowest IU
        self._worst: dict[str, list] = {k: [] for k in self.heads}
        self._best: dict[str, list] = {k: [] for k in self.heads}
        self._kept: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {
            k: {} for k in self.heads
        }

    def update(self, head: str, pred: torch.Tensor, target: torch.Tensor) -> None:
        """One batch of one head: pred and target (N, H, W) class indices (255: not scored)."""
        c = self.heads[head]
        n = pred.shape[0]
        valid = target != self.ignore_index
        offset = torch.arange(n, device=pred.device).view(n, 1, 1) * c
        t = (target.clamp(0, c - 1) + offset)[valid]
        p = (pred.clamp(0, c - 1) + offset)[valid]
        gt = torch.bincount(t, minlength=n * c).view(n, c).double()
        pr = torch.bincount(p, minlength=n * c).view(n, c).double()
        tp = torch.bincount(t[t == p], minlength=n * c).view(n, c).double()
        union = gt + pr - tp
        iu = torch.where(union > 0, tp / union.clamp(min=1), torch.nan)
        labelled = gt.sum(1)
        mean_iu = iu.nanmean(1).cpu().numpy()
        acc = (tp.sum(1) / labelled.clamp(min=1)).cpu().numpy()
        labelled = labelled.cpu().numpy()
        present = (gt > 0).cpu().numpy()
        scores = self.scores[head]
        dtype = torch.uint8 if c <= 256 else torch.int32
        for i in range(n):
            order = len(scores)
            ok = labelled[i] > 0
            s = ImageScore(order, float(mean_iu[i]) if ok else math.nan,
                           float(acc[i]) if ok else math.nan, int(labelled[i]),
                           np.flatnonzero(present[i]).tolist())  # fmt: skip
            scores.append(s)
            if ok and self.keep:
                self._offer(
                    head,
                    s,
                    lambda i=i: (
                        pred[i].to(dtype).cpu().numpy(),
                        target[i].cpu().numpy().astype(np.int32),
                    ),
                )

    def gathered(self, dist) -> PerImageScores | None:
        """Every process's scores in one, on rank 0 (None on the others), under a sharded
        evaluation (fcnseg.feed.Dist.shard: process r scores items r, r + world, ...): each
        image's `order` becomes its place among all the scored items, and the worst and best
        images are chosen again among every process's kept ones."""
        if dist.world == 1:
            return self
        w, r = dist.world, dist.rank
        mine = {h: ([dataclasses.replace(s, order=s.order * w + r) for s in self.scores[h]],
                    {o * w + r: maps for o, maps in self._kept[h].items()})
                for h in self.heads}  # fmt: skip
        parts = dist.gather([mine])
        if r:
            return None
        out = PerImageScores(self.heads, keep=self.keep, ignore_index=self.ignore_index)
        for h in self.heads:
            scores = sorted((s for p in parts for s in p[h][0]), key=lambda s: s.order)
            if [s.order for s in scores] != list(range(len(scores))):
                raise RuntimeError("per-image scores of a sharded evaluation do not cover "
                                   "every scored image once: rerun without --nproc")  # fmt: skip
            out.scores[h] = scores
            for p in parts:
                for order, maps in p[h][1].items():
                    out._offer(h, scores[order], lambda maps=maps: maps)
        return out

    def _offer(self, head: str, s: ImageScore, maps) -> None:
        """Keep `s` among the worst or best images if it belongs there; `maps()` gives its
        (prediction, target) arrays, asked for only then."""
        kept = self._kept[head]
        took = False
        for heap, key in ((self._worst[head], -s.mean_iu), (self._best[head], s.mean_iu)):
            if len(heap) < self.keep:
                heapq.heappush(heap, (key, -s.order))
                took = True
            elif (key, -s.order) > heap[0]:
                _, dropped = heapq.heapreplace(heap, (key, -s.order))
                took = True
                self._release(head, -dropped)
        if took:
            kept[s.order] = maps()

    def _release(self, head: str, order: int) -> None:
        """Forget an image's maps once neither heap holds it."""
        held = {-o for _, o in self._worst[head]} | {-o for _, o in self._best[head]}
        if order not in held:
            self._kept[head].pop(order, None)

    def rename(self, names: dict[str, str]) -> None:
        """Heads renamed ({"": "sem"}: a one-head model scored on one named head's data)."""
        for store in (self.heads, self.scores, self._worst, self._best, self._kept):
            for old, new in names.items():
                store[new] = store.pop(old)

    def worst(self, head: str) -> list[ImageScore]:
        """The kept worst images, worst first."""
        scores = self.scores[head]
        return [scores[-o] for _, o in sorted(self._worst[head], reverse=True)]

    def best(self, head: str) -> list[ImageScore]:
        """The kept best images, best first."""
        scores = self.scores[head]
        return [scores[-o] for _, o in sorted(self._best[head], reverse=True)]

    def maps(self, head: str, order: int) -> tuple[np.ndarray, np.ndarray]:
        """(prediction, target) of a kept image, at the batch's (padded) size."""
        return self._kept[head][order]


def write_per_image(path: Path, scores: list[ImageScore], ids: list[str],
                    class_names: list[str]) -> Path:  # fmt: skip
    """CSV: one row per image, worst first: id, mean IU, pixel accuracy, labelled pixels and
    the classes in its ground truth (names joined by ';')."""
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(["image", "mean_iu", "pixel_acc", "labelled_pixels", "classes"])
    for s in sort_scores(scores):
        names = ";".join(class_names[c] if c < len(class_names) else str(c) for c in s.classes)
        w.writerow([ids[s.order], _num(s.mean_iu), _num(s.pixel_acc), s.labelled, names])
    return atomic_write(path, lambda f: f.write(text.getvalue().encode()), what="per-image CSV")


def read_per_image(path: Path) -> list[dict]:
    """write_per_image's rows back as dicts (mean_iu, pixel_acc as floats, NaN when empty)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("mean_iu", "pixel_acc"):
            r[k] = float(r[k]) if r[k] else math.nan
        r["labelled_pixels"] = int(r["labelled_pixels"])
    return rows


def sort_scores(scores: list[ImageScore]) -> list[ImageScore]:
    """Worst first; images without a score last."""
    return sorted(scores, key=lambda s: (math.isnan(s.mean_iu), s.mean_iu, s.order))


def _num(v: float) -> str:
    return "" if math.isnan(v) else f"{v:.5f}"
