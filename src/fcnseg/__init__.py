"""fcnseg: Fully Convolutional Networks for semantic segmentation, faithfully in PyTorch."""

from .checkpoint import load_model
from .engine import TrainConfig, train, train_stages
from .evaluate import evaluate
from .fast import FastFCN
from .metrics import ConfusionMatrix
from .models import build_model, convolutionalize, list_models
from .predict import predict  # note: shadows the module name; import fcnseg.predict's helpers
from .weights import WEIGHTS, Preprocessing, Weights

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
    "convolutionalize",
    "evaluate",
    "list_models",
    "load_model",
    "predict",
    "train",
    "train_stages",
]
