"""From a config's data spec to datasets and batches.

digits          the built-in digit scenes (options: n_train, n_val, size, seed, ...)
digits-rgbd     RGB-D digit scenes (options as digits, plus modality and task as nyud/siftflow)
voc:ROOT        PASCAL VOC 2012 layout (JPEGImages, SegmentationClass, ImageSets)
sbd:ROOT        SBD (benchmark_RELEASE: dataset/img, dataset/cls/*.mat, train.txt)
folder:ROOT     your own data: images/, masks/, classes.txt
nyud:ROOT       NYUDv2 (option modality: color, hha, depth, color-depth, color-hha)
siftflow:ROOT   SIFT Flow (option task: sem, geo, both)
context:ROOT    PASCAL-Context 59 (option annotations=DIR: where trainval/ and labels.txt are)

Multi-modal items (nyud color-hha: image a dict by modality) and two-task items (siftflow
both: target a dict by head) are batched key by key (`collate_items`).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import torch

__all__ = [
    "DATA_HELP",
    "build_datasets",
    "collate_items",
    "make_loader",
    "modality_of",
    "net_data_options",
    "open_dataset",
]

# the built-in scene sets: module, class, default train and val sizes (imported on first use)
_SYNTHETIC = {
    "digits": (".digits", "DigitScenes", 3000, 300),
    "digits-rgbd": (".digits_rgbd", "DigitScenesRGBD", 2000, 200),
}


# what --data takes (the help of train, eval and compare)
DATA_HELP = (
    "digits | digits-rgbd | voc:ROOT | sbd:ROOT | folder:ROOT | nyud:ROOT | siftflow:ROOT | "
    "context:ROOT (PASCAL-Context 59)"
)
# the data sets whose items a net shapes: kind -> {option: its default}; the net's inputs set
# "modality", its heads set "task" (e.g. nyud-fcn32s-hha reads HHA, siftflow-fcn32s both tasks)
_NET_OPTIONS = {
    "nyud": {"modality": "color"},
    "digits-rgbd": {"modality": "color", "task": "sem"},
    "siftflow": {"task": "both"},
}


def modality_of(inputs) -> str:
    """A net's input names -> the data option that gives them: ("color", "hha") -> "color-hha",
    ("color", "depth") -> "color-depth", ("image",) -> "color" (one colour photo)."""
    return "-".join("color" if k == "image" else k for k in inputs)


def net_data_options(
    spec: str,
    options: dict,
    *,
    net: str,
    inputs=None,
    heads=None,
    others: dict | None = None,
) -> dict:
    """`options` for data `spec` with what the net decides filled in: its inputs set the
    modality (nyud:, digits-rgbd), its heads the task (siftflow:, digits-rgbd).

    inputs: the net's input names in order (None: a plain net, one image of any modality);
    heads: its output heads (None: one). A given option that contradicts the net is refused;
    `others` ({(option, value): net name}) names the net made for the value given, for the
    error. A two-head net given task=sem or geo trains and scores that head alone (the caller
    picks it from the task); a one-head net needs task=sem or task=geo.
    """
    options = dict(options)
    kind = spec.partition(":")[0]
    takes = _NET_OPTIONS.get(kind, {})
    others = others or {}
    if inputs is not None:
        want = modality_of(inputs)
        given = options.get("modality")
        if "modality" not in takes and want != "color":
            raise ValueError(f"{net} takes {' + '.join(inputs)} input, but data '{spec}' "
                             f"gives colour images only: use nyud:ROOT or digits-rgbd")  # fmt: skip
        if given is not None and given != want:
            alt = others.get(("modality", given))
            alt = f", or use --model {alt}, made for modality={given}" if alt else ""
            raise ValueError(f"data option modality={given} contradicts {net}, which takes "
                             f"{' + '.join(inputs)} input (modality={want}): drop the option "
                             f"(the net sets it){alt}")  # fmt: skip
        if "modality" in takes:
            options["modality"] = want
    if "task" in takes:
        given = options.get("task", takes["task"] if heads is None else "both")
        if heads is None and given == "both":
            alt = others.get(("task", "both"))
            alt = f", or use a two-head net (e.g. --model {alt})" if alt else ""
            how = "gives" if "task" in options else "gives by default"
            raise ValueError(f"{net} has one output, and data '{spec}' {how} two targets "
                             f"(task=both): pass --data-option task=sem or task=geo (the "
                             f"classes of one head){alt}")  # fmt: skip
        if heads is not None and given not in (*heads, "both"):
            raise ValueError(f"data option task={given} is not a head of {net} (heads: "
                             f"{', '.join(heads)}): drop the option to train and score both "
                             f"heads, or pass task={' or task='.join(heads)} for one")  # fmt: skip
        options["task"] = given
    return options


def open_dataset(spec: str, split: str, options: dict | None = None, transforms=None):
    """One split of the dataset named by `spec`."""
    options = dict(options or {})
    kind, _, root = spec.partition(":")
    if "ids" in options:  # file stems, as written: one (the command line's) or a list
        from .voc import check_ids

        ids = options["ids"]
        options["ids"] = [ids] if isinstance(ids, str) else list(ids)
        check_ids(options["ids"], f"data '{spec}' option ids")
    if kind in _SYNTHETIC:
        module, name, n_train, n_val = _SYNTHETIC[kind]
        cls = getattr(importlib.import_module(module, __package__), name)
        train = split == "train"
        n = options.pop("n_train" if train else "n_val", n_train if train else n_val)
        options.pop("n_val" if train else "n_train", None)
        return _construct(cls, spec, split, n, transforms=transforms,
                          also=("n_train", "n_val"), **options)  # fmt: skip
    if kind not in ("voc", "sbd", "folder", *_RELEASE_SETS):
        raise ValueError(
            f"data '{spec}' unknown: use digits, digits-rgbd, voc:ROOT, sbd:ROOT, folder:ROOT, "
            f"nyud:ROOT, siftflow:ROOT or context:ROOT"
        )
    if not root:
        raise ValueError(f"data '{spec}': give a folder, e.g. voc:/data/VOCdevkit/VOC2012")
    if kind in _RELEASE_SETS:
        return _open_release_set(kind, root, split, options, transforms)
    if kind == "voc":
        from .voc import VOCSegmentation

        return _construct(VOCSegmentation, spec, root, split, transforms=transforms, **options)
    if kind == "sbd":
        from .sbd import SBDSegmentation

        return _construct(SBDSegmentation, spec, root, split, transforms=transforms, **options)
    if kind == "folder":
        from .folder import FolderSegmentation

        # "all": every image (a folder dataset need not have splits/)
        split_or_all = None if split == "all" else split
        return _construct(FolderSegmentation, spec, root, split_or_all, transforms=transforms,
                          **options)  # fmt: skip


def _construct(cls, spec: str, *args, also: tuple[str, ...] = (), **options):
    """cls(*args, **options), with unknown option names refused by name (and the closest)."""
    import difflib
    import inspect

    valid = [n for n in inspect.signature(cls).parameters if n not in ("root", "split",
             "transforms", "n")] + list(also)  # fmt: skip
    for name in options:
        if name not in valid and name != "transforms":
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"data '{spec}': unknown option '{name}'{hint}; its options are "
                             f"{', '.join(valid) or 'none'}")  # fmt: skip
    return cls(*args, **options)


# the paper's other data sets: kind -> (module, class, {option: what it sets})
_RELEASE_SETS = {
    "nyud": ("nyud", "NYUDSegmentation", {
        "modality": "color, hha, depth, color-depth or color-hha",
        "ids": "item ids instead of the split list"}),
    "siftflow": ("siftflow", "SIFTFlowSegmentation", {
        "task": "sem, geo or both", "ids": "item ids instead of the split list"}),
    "context": ("context", "ContextSegmentation", {
        "annotations": "folder of trainval/*.mat and labels.txt (default ROOT)",
        "ids": "item ids instead of the split file"}),
}  # fmt: skip


def _open_release_set(kind: str, root: str, split: str, options: dict, transforms):
    import importlib

    from .release import check_options

    module, cls, valid = _RELEASE_SETS[kind]
    check_options(f"{kind}:{root}", options, valid)
    dataset = getattr(importlib.import_module(f".{module}", __package__), cls)
    return dataset(root, split, transforms=transforms, **options)


def build_datasets(config, for_net=None) -> tuple:
    """(train set, val set, class names) for a TrainConfig.

    for_net: (spec, options) -> options, what the net decides (`net_data_options`), applied to
    the validation data too."""
    train_tf = None
    if config.crop:
        from .transforms import RandomCrop

        train_tf = RandomCrop(config.crop)
    for_net = for_net or (lambda spec, options: options)
    options = for_net(config.data, config.data_options)
    train = open_dataset(config.data, config.train_split, options, train_tf)
    val_spec = config.val_data or config.data
    val_options = options if val_spec == config.data else for_net(val_spec, {})
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


class WorkerFailure:
    """An error raised in a DataLoader worker, sent back as an item so that the main process
    raises it as itself (same type, same one-line message naming the file), not as torch's
    "Caught ImageError in DataLoader worker process 1. Original Traceback ..."."""

    def __init__(self, error: Exception):
        self.type, self.message = type(error), str(error)

    def reraise(self):
        try:
            error = self.type(self.message)
        except Exception:  # an exception class that wants other arguments
            error = RuntimeError(self.message)
        raise error from None


class CatchErrors(torch.utils.data.Dataset):
    """`dataset` whose items are a WorkerFailure where reading them raised (for workers)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            return self.dataset[i]
        except Exception as e:
            return WorkerFailure(e)


class Relayed:
    """Iterates `loader`, raising each WorkerFailure it yields in this process."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for item in self.loader:
            if isinstance(item, WorkerFailure):
                item.reraise()
            yield item


def make_loader(dataset, batch: int, preprocessing, workers: int = 0) -> Iterator:
    """Batches of (normalized float images, int64 targets), in order, for evaluation. An item
    that cannot be read raises the same error with any number of `workers`."""
    loader = torch.utils.data.DataLoader(
        CatchErrors(dataset) if workers else dataset, batch_size=batch, num_workers=workers,
        collate_fn=_collate_or_failure, shuffle=False,
    )  # fmt: skip
    from ..weights import prepare

    for x, t in Relayed(loader):
        yield prepare(preprocessing, x), t


def _collate_or_failure(items):
    failed = [it for it in items if isinstance(it, WorkerFailure)]
    return failed[0] if failed else _collate(items)


def _collate(items):
    images, targets = items[0]
    if isinstance(images, dict) or isinstance(targets, dict):
        return _collate_dicts(items)
    if len({tuple(x.shape) for x, _ in items}) == 1:
        return torch.stack([x for x, _ in items]), torch.stack([t.long() for _, t in items])
    from .transforms import pad_collate

    return pad_collate(items)


def _collate_dicts(items):
    """Items whose image and/or target are dicts -> batches of the same dicts, key by key.

    Each key is batched as a plain item would be (stacked, or padded when sizes differ); an
    image dict pairs each modality with the first target (or the first target head), which
    only sets the padding, and a target dict pairs each head with the first image.
    """
    first_image, first_target = items[0]

    def keys(x, what):
        if not isinstance(x, dict):
            return None
        if any(set(it[what]) != set(x) for it in items):
            raise ValueError(
                f"collate: items have different {'image' if what == 0 else 'target'} keys"
            )
        return list(x)

    image_keys, target_keys = keys(first_image, 0), keys(first_target, 1)

    def plain_target(t):
        return t[target_keys[0]] if target_keys else t

    def plain_image(x):
        return x[image_keys[0]] if image_keys else x

    if image_keys:
        images = {k: _collate([(x[k], plain_target(t)) for x, t in items])[0] for k in image_keys}
    else:
        images = _collate([(x, plain_target(t)) for x, t in items])[0]
    if target_keys:
        targets = {k: _collate([(plain_image(x), t[k]) for x, t in items])[1] for k in target_keys}
    else:
        targets = _collate([(plain_image(x), t) for x, t in items])[1]
    return images, targets
