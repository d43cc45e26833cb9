"""FCN models, their backbones, and convolutionalization."""

from .backbones import alexnet_classifier, vgg16_classifier
from .convolutionalize import convolutionalize, fc_to_conv
from .fcn import FCN, HEADS, Head, Skip
from .googlenet import googlenet_classifier
from .registry import build_model, list_models, load_checked, transfer

__all__ = [
    "FCN",
    "HEADS",
    "Head",
    "Skip",
    "alexnet_classifier",
    "build_model",
    "convolutionalize",
    "fc_to_conv",
    "googlenet_classifier",
    "list_models",
    "load_checked",
    "transfer",
    "vgg16_classifier",
]
