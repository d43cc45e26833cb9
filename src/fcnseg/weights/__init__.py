"""Pretrained weights: described as data, downloaded robustly, read from PyTorch or Caffe files.

- `preprocessing`: how images become the tensors a set of weights expects (`Preprocessing`).
- `registry`: the weights as data (`WEIGHTS`, the release's `REFERENCE_WEIGHTS`).
- `download`: urls tried in order, confirmation pages, resumes, checksums, the cache (`fetch`).
- `caffe`: `.caffemodel` files read with protobuf, without Caffe (`read_caffemodel`).
- `load`: any weights argument (name, url, file, dict, model) -> a state dict (`load_state`).
"""

from .caffe import (
    CaffeLayer,
    caffe_backbone,
    caffe_state_dict,
    read_caffemodel,
    read_layers,
)
from .download import DownloadError, cache_dir, fetch, verify
from .load import load_state
from .preprocessing import (
    CAFFE_BGR,
    EFFICIENTNET_LITE,
    GOOGLENET_RGB,
    IMAGENET_RGB,
    NYUD_BGR,
    NYUD_HHA,
    NYUD_LOG_DEPTH,
    SIFTFLOW_BGR,
    LogDepth,
    Preprocessing,
    prepare,
)
from .registry import REFERENCE_WEIGHTS, WEIGHTS, ReferenceWeights, Source, Weights

__all__ = [
    "CAFFE_BGR",
    "EFFICIENTNET_LITE",
    "GOOGLENET_RGB",
    "IMAGENET_RGB",
    "NYUD_BGR",
    "NYUD_HHA",
    "NYUD_LOG_DEPTH",
    "REFERENCE_WEIGHTS",
    "SIFTFLOW_BGR",
    "WEIGHTS",
    "CaffeLayer",
    "DownloadError",
    "LogDepth",
    "Preprocessing",
    "ReferenceWeights",
    "Source",
    "Weights",
    "cache_dir",
    "caffe_backbone",
    "caffe_state_dict",
    "fetch",
    "load_state",
    "prepare",
    "read_caffemodel",
    "read_layers",
    "verify",
]
