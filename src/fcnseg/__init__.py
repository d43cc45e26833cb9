"""fcnseg: Fully Convolutional Networks for semantic segmentation, faithfully in PyTorch."""

from .models import build_model, convolutionalize, list_models
from .weights import WEIGHTS, Preprocessing, Weights

__version__ = "0.1.0"

__all__ = [
    "WEIGHTS",
    "Preprocessing",
    "Weights",
    "__version__",
    "build_model",
    "convolutionalize",
    "list_models",
]
