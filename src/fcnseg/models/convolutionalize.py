"""Convolutionalization: a classifier's fully connected layers become convolutions.

- VGG16 / AlexNet (torchvision layout): fc6 (C*k*k -> 4096) becomes a k x k conv on the last
  pool (k = 7 / 6), fc7 and fc8 become 1x1 convs. On a 224 input the result is the classifier's
  logits; on a larger one, a (N, 1000, h, w) map whose (i, j) is the classifier's head on the
  k x k pool5 window at (i, j): the classifier slid over the image at stride 32, computed once.
- Global-average-pool classifiers (GoogLeNet, ResNet, EfficientNet-Lite): the last Linear
  becomes a 1x1 conv applied *before* the pooling, giving a class heatmap whose spatial mean
  is exactly the classifier's logits (a linear layer commutes with averaging).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .. import kernels

__all__ = [
    "FullyConvClassifier", "GemmConv2d", "GlobalPoolHeatmap", "convolutionalize", "fc_to_conv",
]  # fmt: skip


class GemmConv2d(nn.Conv2d):
    """A convolutionalized fully connected layer (stride 1, no padding), run as one GEMM.

    im2col then the classifier's own matrix product over every window at once: the same
    numbers as the conv, ~3x faster on CPU for fc6 on the small maps it sees (oneDNN's direct
    kernels run AlexNet's 6x6 fc6 on a 14x14 map at ~60 GFLOP/s). Large maps (> 4096 positions,
    where im2col's copy would be big), other devices, and tracing/export use the plain conv.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] - self.kernel_size[0] + 1, x.shape[-1] - self.kernel_size[1] + 1
        plain = (
            x.device.type != "cpu"
            or h * w > 4096
            or torch.jit.is_tracing()
            or torch.jit.is_scripting()
            or torch.onnx.is_in_onnx_export()
        )
        if plain or self.stride != (1, 1) or self.padding != (0, 0) or self.groups != 1:
            return super().forward(x)
        return kernels.conv_as_gemm(x, self.weight, self.bias)


@torch.no_grad()
def fc_to_conv(linear: nn.Linear, in_channels: int, kernel: int) -> nn.Conv2d:
    """Linear(in_channels * kernel^2 -> out) as Conv2d(in_channels -> out, kernel).

    The weight is reshaped in the order the classifier flattened its input, (C, H, W).
    """
    out_f, in_f = linear.weight.shape
    if in_f != in_channels * kernel * kernel:
        raise ValueError(
            f"Linear has {in_f} inputs, not {in_channels} x {kernel} x {kernel} = "
            f"{in_channels * kernel * kernel}: wrong kernel or channel count"
        )
    # Built where the Linear lives (device and dtype), and not randomly initialised first:
    # every value is overwritten below.
    conv = nn.utils.skip_init(
        GemmConv2d,
        in_channels,
        out_f,
        kernel,
        bias=linear.bias is not None,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )
    conv.weight.copy_(linear.weight.reshape(out_f, in_channels, kernel, kernel))
    if linear.bias is not None:
        conv.bias.copy_(linear.bias)
    return conv


class FullyConvClassifier(nn.Module):
    """features (the classifier's own, shared geometry) -> convolutionalized head."""

    def __init__(self, features: nn.Module, head: nn.Sequential, stride: int = 32):
        super().__init__()
        self.features = features
        self.head = head
        self.stride = stride  # one output step = 32 input pixels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (N, 1000, h, w) class scores


class _FeaturesMethod(nn.Module):
    """Wraps a classifier whose trunk is a method (EfficientNet's ``extract_features``)."""

    def __init__(self, net: nn.Module, method: str):
        super().__init__()
        self.net = net
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.net, self.method)(x)


class _SequentialUntil(nn.Module):
    """The classifier's children in order, up to its global pooling (aux heads skipped)."""

    def __init__(self, net: nn.Module, stop: str):
        super().__init__()
        self.net = net
        self.names = []
        for name, _ in net.named_children():
            if name == stop:
                break
            if not name.startswith("aux"):
                self.names.append(name)
        self.transform_input = bool(getattr(net, "transform_input", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform_input:  # torchvision GoogLeNet's own input re-normalisation
            mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
            x = x * (std / 0.5).view(1, 3, 1, 1).to(x) + ((mean - 0.5) / 0.5).view(1, 3, 1, 1).to(x)
        for name in self.names:
            x = getattr(self.net, name)(x)
        return x


class GlobalPoolHeatmap(nn.Module):
    """features -> 1x1 conv (the classifier's last Linear) -> (N, classes, h, w) heatmap."""

    def __init__(self, features: nn.Module, fc: nn.Linear):
        super().__init__()
        self.features = features
        self.score = fc_to_conv(fc, fc.in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's logits: the heatmap averaged over space."""
        return self(x).mean(dim=(2, 3))


def _kernel_of(avgpool: nn.Module) -> int:
    size = getattr(avgpool, "output_size", None)
    if isinstance(size, int):
        return size
    if isinstance(size, tuple) and len(set(size)) == 1 and size[0] is not None:
        return int(size[0])
    raise ValueError(f"cannot read the fc6 window from avgpool {avgpool!r}")


def _fc_head(classifier: nn.Module) -> FullyConvClassifier:
    k = _kernel_of(classifier.avgpool)
    layers: list[nn.Module] = []
    first = True
    for m in classifier.classifier:
        if isinstance(m, nn.Linear):
            if first:  # fc6: a k x k conv over the last pool's channels
                channels, rem = divmod(m.in_features, k * k)
                if rem:
                    raise ValueError(f"fc6 inputs {m.in_features} are not a multiple of {k}x{k}")
                layers.append(fc_to_conv(m, channels, k))
                first = False
            else:  # fc7, fc8: 1x1 convs
                layers.append(fc_to_conv(m, m.in_features, 1))
        elif isinstance(m, nn.ReLU | nn.Dropout | nn.Identity):
            layers.append(copy.deepcopy(m))
        else:
            raise TypeError(f"unexpected layer in the classifier head: {m!r}")
    features = copy.deepcopy(classifier.features)
    return FullyConvClassifier(features, nn.Sequential(*layers), stride=32)


def convolutionalize(classifier: nn.Module) -> nn.Module:
    """A fully convolutional copy of `classifier` mapping (N, 3, H, W) to (N, classes, h, w).

    Accepts torchvision-layout VGG / AlexNet (``features``, ``avgpool``, ``classifier``),
    global-pooling classifiers with ``avgpool`` + ``fc`` (GoogLeNet, ResNet), and
    EfficientNet(-Lite) with ``extract_features`` + ``_fc``. The input model is not modified.
    """
    if all(hasattr(classifier, a) for a in ("features", "avgpool", "classifier")):
        return _fc_head(classifier).train(classifier.training)
    net = copy.deepcopy(classifier)
    if hasattr(net, "extract_features") and isinstance(getattr(net, "_fc", None), nn.Linear):
        return GlobalPoolHeatmap(_FeaturesMethod(net, "extract_features"), net._fc).train(
            classifier.training
        )
    if hasattr(net, "avgpool") and isinstance(getattr(net, "fc", None), nn.Linear):
        return GlobalPoolHeatmap(_SequentialUntil(net, "avgpool"), net.fc).train(
            classifier.training
        )
    raise TypeError(
        f"don't know how to convolutionalize {type(classifier).__name__}: expected torchvision's "
        "VGG/AlexNet layout (features, avgpool, classifier), a global-pool classifier "
        "(avgpool + fc), or EfficientNet (extract_features + _fc)"
    )
