"""fcnseg: Fully Convolutional Networks for semantic segmentation, faithfully in PyTorch."""

from .checkpoint import load_model
from .engine import TrainConfig, train, train_stages
from .evaluate import evaluate
from .fast import FastFCN
from .metrics import ConfusionMatrix
from .models import build_model, convolutionalize, list_models
from .models.reference import build_reference, reference_nets
from .predict import predict  # note: shadows the module name; import fcnseg.predict's helpers
from .weights import WEIGHTS, Preprocessing, Weights, read_caffemodel

__version__ = "0.1.0"

__all__ = [
    "WEIGHTS",
    "ConfusionMatrix",
    "FastFCN",
    "Preprocessing",
    "TrainConfig",
    "Weights",
    "__version__",
    "build_model",
    "build_reference",
    "convolutionalize",
    "evaluate",
    "list_models",
    "load_model",
    "predict",
    "read_caffemodel",
    "reference_nets",
    "train",
    "train_stages",
]
