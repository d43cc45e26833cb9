"""PASCAL VOC 2012 segmentation (FCN.md section 4), split files, and the paper's seg11valid.

Layout (VOCdevkit/VOC2012, or VOC2011)::

    root/JPEGImages/<id>.jpg
    root/SegmentationClass/<id>.png          palette PNG: index = class (0..20), 255 = ignore
    root/ImageSets/Segmentation/<split>.txt  one id per line (train, val, trainval, ...)

The checks every data set here shares (empty split, duplicate ids, ids with no file, image and
mask of different sizes) live in `PairedFiles`; SBD and folder data sets build on it.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..categories import VOC_CLASSES
from .io import ImageError, read_image, read_mask

__all__ = [
    "DatasetError",
    "PairedFiles",
    "VOCSegmentation",
    "check_files",
    "check_ids",
    "read_split",
    "seg11valid_ids",
    "write_split",
]

_SHOW = 5  # how many offending ids an error message lists


class DatasetError(ValueError):
    """A data set folder that does not have the expected layout or contents."""


def _listing(items: Sequence[str], n: int = _SHOW) -> str:
    shown = ", ".join(items[:n])
    return f"{shown}, ... ({len(items)} in all)" if len(items) > n else shown


def read_split(path: str | os.PathLike) -> list[str]:
    """The ids in a split file: the first word of each non-empty line, in order."""
    p = Path(path)
    try:
        text = p.read_text("utf-8-sig")  # a UTF-8 BOM (Windows editors) is not part of an id
    except FileNotFoundError:
        raise DatasetError(f"split file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read split file {p}: {e}") from e
    ids = [line.split()[0] for line in text.splitlines() if line.strip()]
    # an id names a file inside the data folder: one taken from a file never leads out of it
    escaping = [i for i in ids if "/" in i or "\\" in i or i.startswith("..")]
    if escaping:
        raise DatasetError(f"split file {p}: ids are file stems inside the data folder; "
                           f"{_listing(escaping)} would name a path (fcnseg never reads a path "
                           f"taken from a file's content): fix those lines")  # fmt: skip
    return ids


def write_split(path: str | os.PathLike, ids: Iterable[str]) -> None:
    """Write `ids` one per line, atomically (a temp file renamed into place)."""
    p = Path(path)
    ids = list(ids)
    bad = [i for i in ids if not i or i != i.strip() or len(i.split()) != 1]
    if bad:
        raise DatasetError(f"split {p}: ids must be single words; got {_listing(bad)}")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".part", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(f"{i}\n" for i in ids))
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def seg11valid_ids(voc2011_val_ids: Iterable[str], sbd_train_ids: Iterable[str]) -> list[str]:
    """The paper's validation set: VOC2011 segmentation val minus SBD train, order kept.

    With the real lists (1,111 VOC2011 val ids, 8,498 SBD train ids) this leaves 736 images.
    """
    train = set(sbd_train_ids)
    return [i for i in dict.fromkeys(voc2011_val_ids) if i not in train]


def check_ids(ids: Sequence[str], where: str) -> None:
    """Raise DatasetError for an empty id list, one with duplicates, or ids that are not text;
    `where` names its source. Ids are file stems, kept as written: 2008_000008 and 05005 are
    not the numbers 2008000008 and 5005, so a number is refused rather than turned back into
    a string that names another file."""
    not_text = [repr(i) for i in ids if not isinstance(i, str)]
    if not_text:
        raise DatasetError(
            f"{where}: ids must be text (file stems as written), got {_listing(not_text)}; "
            f"a number loses its leading zeros and underscores (05005 -> 5005): pass "
            f"strings, e.g. ids=['2008_000008']"
        )
    if not ids:
        raise DatasetError(f"{where} lists no ids: add one image id per line")
    dups = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dups:
        raise DatasetError(
            f"{where} lists {len(dups)} id(s) more than once: {_listing(dups)}. "
            f"Remove the duplicates: they would be sampled twice as often"
        )


def check_files(ids: Sequence[str], folder: Path, suffix: str, what: str, where: str) -> None:
    """Raise DatasetError listing the ids with no `folder/<id><suffix>`."""
    present = set(os.listdir(folder)) if folder.is_dir() else set()
    missing = [i for i in ids if f"{i}{suffix}" not in present]
    if missing:
        raise DatasetError(
            f"{len(missing)} of {len(ids)} ids in {where} have no {what} {folder}/<id>{suffix}: "
            f"{_listing(missing)}. Add the files, or remove those ids from the split"
        )


class PairedFiles(Dataset):
    """Images paired with label masks by id; items (image uint8 (3, H, W), target int64 (H, W)).

    Subclasses fill `ids`, `images`, `masks` and may override `read_target`.
    """

    ids: list[str]
    images: list[Path]
    masks: list[Path]
    class_names: tuple[str, ...]
    ignore_index: int = 255

    def __init__(self, transforms: Callable | None, class_names: Sequence[str]):
        self.transforms = transforms
        self.class_names = tuple(class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _pair_by_id(
        self,
        ids: Sequence[str] | None,
        split_file: Path,
        layout: str,
        images: tuple[Path, str],
        masks: tuple[Path, str, str],
    ) -> None:
        """Fill ids / images / masks from `ids` or else `split_file`, checking every file.

        images = (folder, suffix); masks = (folder, suffix, what the message calls a mask).
        """
        if ids is None:
            where = split_file
            if not where.is_file():
                found = sorted(p.stem for p in where.parent.glob("*.txt"))
                raise DatasetError(
                    f"no split file {where}; splits found: {', '.join(found) or 'none'}. {layout}"
                )
            ids = read_split(where)
        else:
            where = f"the {len(ids)} ids given"
        ids = list(ids)
        (image_dir, image_suffix), (mask_dir, mask_suffix, mask_what) = images, masks
        check_ids(ids, str(where))
        check_files(ids, image_dir, image_suffix, "image", str(where))
        check_files(ids, mask_dir, mask_suffix, mask_what, str(where))
        self.ids = ids
        self.images = [image_dir / f"{i}{image_suffix}" for i in ids]
        self.masks = [mask_dir / f"{i}{mask_suffix}" for i in ids]

    def __len__(self) -> int:
        return len(self.ids)

    def read_target(self, path: Path) -> np.ndarray:
        return read_mask(path, num_classes=self.num_classes, ignore_index=self.ignore_index)

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        image_path, mask_path = self.images[index], self.masks[index]
        image = read_image(image_path)
        target = self.read_target(mask_path)
        if image.shape[:2] != target.shape:
            (h, w), (mh, mw) = image.shape[:2], target.shape
            hint = (
                " The sizes are swapped: the photo probably carries an EXIF rotation (applied on "
                "reading) that the labelling tool ignored; rotate the mask to match."
                if (h, w) == (mw, mh)
                else ""
            )
            raise ImageError(
                f"image {image_path} is {w} x {h} but its mask {mask_path} is {mw} x {mh}: "
                f"a mask must label every pixel of its image; re-export the mask at the image "
                f"size.{hint}"
            )
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (3, H, W) uint8
        t = torch.from_numpy(target.astype(np.int64))  # (H, W), 255 = ignore
        if self.transforms is not None:
            return self.transforms(x, t)
        return x, t

    def verify(self) -> None:
        """Read every image and mask now; raise DatasetError listing the files that fail."""
        problems = []
        for i in range(len(self)):
            try:
                image = read_image(self.images[i], max_pixels=None)
                target = self.read_target(self.masks[i])
            except ImageError as e:
                problems.append(str(e))
                continue
            if image.shape[:2] != target.shape:
                problems.append(f"{self.images[i]} and {self.masks[i]} differ in size")
        if problems:
            shown = "\n  ".join(problems[:_SHOW])
            more = f"\n  ... and {len(problems) - _SHOW} more" if len(problems) > _SHOW else ""
            raise DatasetError(
                f"{len(problems)} of {len(self)} items cannot be read:\n  {shown}{more}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} items, {self.num_classes} classes)"


_VOC_LAYOUT = (
    "the VOC layout is root/JPEGImages/<id>.jpg, root/SegmentationClass/<id>.png, "
    "root/ImageSets/Segmentation/<split>.txt (root is VOCdevkit/VOC2012)"
)


def _voc_hint(root: Path) -> str:
    for sub in ("VOCdevkit/VOC2012", "VOC2012", "VOCdevkit/VOC2011", "VOC2011"):
        if (root / sub / "JPEGImages").is_dir():
            return f". Did you mean root={root / sub}?"
    return ""


class VOCStyleSet(PairedFiles):
    """A root folder, a split, the first `num_classes` of VOC's 21 classes (VOC, SBD).

    Subclasses give `name` and `layout` (for messages) and find their files in `_find`.
    """

    name: str
    layout: str

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        ids: Sequence[str] | None = None,
        transforms: Callable | None = None,
        num_classes: int = 21,
    ):
        if not 1 <= num_classes <= len(VOC_CLASSES):
            raise DatasetError(f"{self.name} has 1..{len(VOC_CLASSES)} classes; got {num_classes}")
        super().__init__(transforms, VOC_CLASSES[:num_classes])
        self.root, self.split = Path(root), split
        if not self.root.is_dir():
            raise DatasetError(f"{self.name} root {self.root} is not a folder: {self.layout}")
        self._find(ids)

    def _find(self, ids: Sequence[str] | None) -> None:
        raise NotImplementedError


class VOCSegmentation(VOCStyleSet):
    """One split of PASCAL VOC segmentation; 21 classes (VOC_CLASSES), 255 = ignore.

    `ids` (optional) replaces the split file, e.g. `seg11valid_ids(...)`. `transforms` is a
    paired transform applied to (image uint8 (3, H, W), target int64 (H, W)).
    """

    name, layout = "VOC", _VOC_LAYOUT

    def _find(self, ids: Sequence[str] | None) -> None:
        for sub in ("JPEGImages", "SegmentationClass"):
            if not (self.root / sub).is_dir():
                raise DatasetError(
                    f"VOC root {self.root} has no {sub}/: {_VOC_LAYOUT}{_voc_hint(self.root)}"
                )
        self._pair_by_id(
            ids,
            self.root / "ImageSets" / "Segmentation" / f"{self.split}.txt",
            _VOC_LAYOUT,
            (self.root / "JPEGImages", ".jpg"),
            (self.root / "SegmentationClass", ".png", "mask"),
        )
