"""Your own data: a folder of images, a folder of masks, and the class names.

Layout::

    root/classes.txt          one class name per line; line k names class k (k = 0, 1, ...)
    root/images/<stem>.jpg    any image read_image reads (.jpg .jpeg .png .bmp .tif .tiff .webp ...)
    root/masks/<stem>.png     class indices: palette or single-channel PNG; 255 = ignore
    root/splits/<split>.txt   optional: the stems of one split, one per line

Without a split every image is used, sorted by stem.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from .voc import DatasetError, PairedFiles, _listing, check_ids, read_split

__all__ = ["IMAGE_SUFFIXES", "FolderSegmentation", "read_classes"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")

_LAYOUT = (
    "expected root/classes.txt (one class name per line), root/images/<stem>.jpg|png|..., "
    "root/masks/<stem>.png and optionally root/splits/<split>.txt"
)


def read_classes(path: str | os.PathLike, ignore_index: int = 255) -> tuple[str, ...]:
    """Class names from classes.txt: one per line, blank lines at the end ignored."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(
            f"{p} is missing: write one class name per line (line 1 = class 0, usually "
            f"'background'); the number of lines is the number of classes. {_LAYOUT}"
        )
    lines = p.read_text("utf-8-sig").rstrip().splitlines()  # a BOM is no class name
    names = tuple(line.strip() for line in lines)
    if not names or not names[0]:
        raise DatasetError(f"{p} names no classes: write one class name per line")
    blank = [n + 1 for n, name in enumerate(names) if not name]
    if blank:
        raise DatasetError(f"{p}: lines {blank} are blank; every line must name a class")
    dups = sorted(n for n, c in Counter(names).items() if c > 1)
    if dups:
        raise DatasetError(f"{p}: class names appear more than once: {', '.join(dups)}")
    if len(names) > ignore_index:
        raise DatasetError(
            f"{p} names {len(names)} classes, but labels >= {ignore_index} are not classes "
            f"({ignore_index} = ignore): at most {ignore_index} classes"
        )
    return names


class FolderSegmentation(PairedFiles):
    """Images and masks paired by file stem; classes from classes.txt.

    Items are (image uint8 (3, H, W), target int64 (H, W)), or what `transforms` returns.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        *,
        transforms: Callable | None = None,
        ignore_index: int = 255,
    ):
        self.root, self.split = Path(root), split
        if not self.root.is_dir():
            raise DatasetError(f"data folder {self.root} does not exist: {_LAYOUT}")
        self.ignore_index = ignore_index
        super().__init__(transforms, read_classes(self.root / "classes.txt", ignore_index))
        images_dir, masks_dir = self.root / "images", self.root / "masks"
        for d in (images_dir, masks_dir):
            if not d.is_dir():
                raise DatasetError(f"data folder {self.root} has no {d.name}/ folder: {_LAYOUT}")

        images = _stems(images_dir, IMAGE_SUFFIXES, "image")
        masks = _stems(masks_dir, (".png",), "mask")
        if split is None:
            ids, where = sorted(images), f"{images_dir}"
            check_ids(ids, where)
            orphans = sorted(set(masks) - set(images))
            if orphans:
                raise DatasetError(
                    f"{len(orphans)} mask(s) in {masks_dir} have no image in {images_dir}: "
                    f"{_listing([masks[s].name for s in orphans])}. Add the images or remove "
                    f"the masks (a misnamed file?)"
                )
        else:
            where = self.root / "splits" / f"{split}.txt"
            if not where.is_file():
                found = sorted(p.stem for p in (self.root / "splits").glob("*.txt"))
                raise DatasetError(
                    f"no split file {where}; splits found: {', '.join(found) or 'none'}. "
                    f"Write one image stem per line there, or pass split=None to use all images"
                )
            ids = read_split(where)
            check_ids(ids, str(where))
            no_image = [i for i in ids if i not in images]
            if no_image:
                raise DatasetError(
                    f"{len(no_image)} of {len(ids)} ids in {where} have no image in "
                    f"{images_dir}: {_listing(no_image)}"
                )
        no_mask = [images[i].name for i in ids if i not in masks]
        if no_mask:
            raise DatasetError(
                f"{len(no_mask)} of {len(ids)} images have no mask {masks_dir}/<stem>.png: "
                f"{_listing(no_mask)}. Draw the masks, or leave those images out with a split file"
            )
        self.ids = list(ids)
        self.images = [images[i] for i in self.ids]
        self.masks = [masks[i] for i in self.ids]


def _stems(folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
    """stem -> file for the files in `folder`; hidden files skipped, others must fit."""
    found: dict[str, Path] = {}
    clashes, strangers = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.is_dir():
            continue
        p = Path(entry.path)
        if p.suffix.lower() not in suffixes:
            strangers.append(p.name)
        elif p.stem in found:
            clashes.append(f"{found[p.stem].name} / {p.name}")
        else:
            found[p.stem] = p
    if strangers:
        raise DatasetError(
            f"{folder} holds {len(strangers)} file(s) that are not {what}s "
            f"({' '.join(suffixes)}): {_listing(strangers)}. Move them elsewhere"
        )
    if clashes:
        raise DatasetError(
            f"{folder}: {len(clashes)} stem(s) name two files, so masks cannot be paired: "
            f"{_listing(clashes)}. Keep one file per stem"
        )
    return found
