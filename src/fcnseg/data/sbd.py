"""SBD, the Semantic Boundaries Dataset (Hariharan et al. 2011): the paper's training set.

Layout (benchmark_RELEASE; root may also be its dataset/ folder)::

    root/dataset/img/<id>.jpg
    root/dataset/cls/<id>.mat       struct GTcls, field Segmentation: uint8 (H, W), 0..20
    root/dataset/{train,val}.txt    8,498 and 2,857 ids

Unlike VOC, SBD marks no object boundaries with 255; the value is still treated as ignore.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .io import ImageError, check_labels
from .voc import DatasetError, VOCStyleSet

__all__ = ["SBDSegmentation", "read_sbd_mat"]

_SBD_LAYOUT = (
    "the SBD layout is root/dataset/img/<id>.jpg, root/dataset/cls/<id>.mat, "
    "root/dataset/<split>.txt (root is benchmark_RELEASE)"
)


def read_sbd_mat(path: str | os.PathLike) -> np.ndarray:
    """SBD's class labels: `GTcls.Segmentation` of a .mat file, uint8 (H, W)."""
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"SBD label file {p}: no such file")
    if p.stat().st_size == 0:
        raise ImageError(f"SBD label file {p} is empty (0 bytes): copy or extract it again")
    import scipy.io  # here: importing fcnseg.data should not cost scipy's import time

    try:
        mat = scipy.io.loadmat(p, squeeze_me=True, struct_as_record=False)
    except Exception as e:  # scipy raises ValueError, TypeError, MatReadError, OSError, ...
        raise ImageError(
            f"SBD label file {p} is not a readable .mat file ({type(e).__name__}: {e}); "
            f"extract it again from benchmark.tgz"
        ) from e
    if "GTcls" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise ImageError(
            f"SBD label file {p} has no GTcls struct (it holds: {', '.join(keys) or 'nothing'}); "
            f"class labels are in dataset/cls/, instance labels (GTinst) in dataset/inst/"
        )
    seg = getattr(mat["GTcls"], "Segmentation", None)
    if seg is None:
        raise ImageError(f"SBD label file {p}: GTcls has no Segmentation field")
    seg = np.asarray(seg)
    if seg.ndim != 2 or seg.dtype.kind not in "ui":
        raise ImageError(
            f"SBD label file {p}: GTcls.Segmentation should be integer (H, W), got "
            f"{seg.dtype} {seg.shape}"
        )
    if seg.size and (seg.min() < 0 or seg.max() > 255):
        raise ImageError(f"SBD label file {p}: labels {seg.min()}..{seg.max()} exceed 0..255")
    return seg.astype(np.uint8)


class SBDSegmentation(VOCStyleSet):
    """One split ("train" or "val") of SBD; 21 classes (VOC_CLASSES), items as VOCSegmentation."""

    name, layout = "SBD", _SBD_LAYOUT

    def _find(self, ids: Sequence[str] | None) -> None:
        base = self.root / "dataset"
        if not base.is_dir() and (self.root / "img").is_dir():
            base = self.root  # root is benchmark_RELEASE/dataset itself
        for sub in ("img", "cls"):
            if not (base / sub).is_dir():
                hint = ""
                if (self.root / "benchmark_RELEASE").is_dir():
                    hint = f". Did you mean root={self.root / 'benchmark_RELEASE'}?"
                raise DatasetError(
                    f"SBD root {self.root} has no {base / sub}/: {_SBD_LAYOUT}{hint}"
                )
        self.base = base
        self._pair_by_id(
            ids,
            base / f"{self.split}.txt",
            _SBD_LAYOUT,
            (base / "img", ".jpg"),
            (base / "cls", ".mat", "label file"),
        )

    def read_target(self, path: Path) -> np.ndarray:
        labels = read_sbd_mat(path)
        check_labels(labels, self.num_classes, ignore_index=self.ignore_index, source=str(path))
        return labels
