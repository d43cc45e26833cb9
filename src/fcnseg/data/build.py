"""From a config's data spec to datasets and batches.

digits          the built-in digit scenes (options: n_train, n_val, size, seed, ...)
voc:ROOT        PASCAL VOC 2012 layout (JPEGImages, SegmentationClass, ImageSets)
sbd:ROOT        SBD (benchmark_RELEASE: dataset/img, dataset/cls/*.mat, train.txt)
folder:ROOT     your own data: images/, masks/, classes.txt
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["build_datasets", "collate_items", "make_loader", "open_dataset"]


def open_dataset(spec: str, split: str, options: dict | None = None, transforms=None):
    """One split of the dataset named by `spec`."""
    options = dict(options or {})
    kind, _, root = spec.partition(":")
    if kind == "digits":
        from .digits import DigitScenes

        n = options.pop("n_train" if split == "train" else "n_val", 3000 if split == "train"
                        else 300)  # fmt: skip
        options.pop("n_val" if split == "train" else "n_train", None)
        return DigitScenes(split, n, transforms=transforms, **options)
    if kind not in ("voc", "sbd", "folder"):
        raise ValueError(f"data '{spec}' unknown: use digits, voc:ROOT, sbd:ROOT or folder:ROOT")
    if not root:
        raise ValueError(f"data '{spec}': give a folder, e.g. voc:/data/VOCdevkit/VOC2012")
    if kind == "voc":
        from .voc import VOCSegmentation

        return VOCSegmentation(root, split, transforms=transforms, **options)
    if kind == "sbd":
        from .sbd import SBDSegmentation

        return SBDSegmentation(root, split, transforms=transforms, **options)
    if kind == "folder":
        from .folder import FolderSegmentation

        # "all": every image (a folder dataset need not have splits/)
        split_or_all = None if split == "all" else split
        return FolderSegmentation(root, split_or_all, transforms=transforms, **options)


def build_datasets(config) -> tuple:
    """(train set, val set, class names) for a TrainConfig."""
    train_tf = None
    if config.crop:
        from .transforms import RandomCrop

        train_tf = RandomCrop(config.crop)
    train = open_dataset(config.data, config.train_split, config.data_options, train_tf)
    val_spec = config.val_data or config.data
    val_options = config.data_options if val_spec == config.data else {}
    val = open_dataset(val_spec, config.val_split, val_options)
    names = list(getattr(train, "class_names", None) or range(config.num_classes or 0))
    if not names:
        raise ValueError(f"data '{config.data}' has no class names: pass num_classes")
    return train, val, names


def collate_items(dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Items -> (images (N, 3, H, W) uint8 or 0-255 float, targets (N, H, W) int64).

    Same-size items are stacked; others are padded (images with 0, targets with 255).
    """
    return _collate([dataset[i] for i in indices])


def make_loader(dataset, batch: int, preprocessing, workers: int = 0) -> Iterator:
    """Batches of (normalized float images, int64 targets), in order, for evaluation."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, num_workers=workers, collate_fn=_collate, shuffle=False
    )
    for x, t in loader:
        yield preprocessing.batch(x), t


def _collate(items):
    if len({tuple(x.shape) for x, _ in items}) == 1:
        return torch.stack([x for x, _ in items]), torch.stack([t.long() for _, t in items])
    from .transforms import pad_collate

    return pad_collate(items)
