"""MobileNetV3-Large in torchvision's module layout (``mobilenet_v3_large-8738ca79.pth``).

As a classifier (`mobilenet_v3_large_classifier`: ``features.0`` ... ``features.16``, ``avgpool``,
``classifier``) and as an FCN trunk whose layers are ``features_0`` ... ``features_16`` (FCN
layers are top-level modules, so the dot becomes an underscore: `torchvision_mobilenet_to_fcn`).

Scale and channels: features_0 1/2, 16; features_3 1/4, 24; features_6 1/8, 40 (FCN-8s's tap);
features_12 1/16, 112 (FCN-16s's tap); features_15 1/32, 160; features_16 1/32, 960 (the 1x1
conv before the classifier's pooling: the trunk's output, like VGG16's fc7). Convs pad (k-1)/2,
so position x of a stride-s map sits over input pixel s * x.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
from torch import nn

from .backbones import Trunk
from .geometry import CoordMap
from .modern import BatchNorm, ModernArch, residual_map, with_bn_counters

__all__ = ["MOBILENET_V3_LARGE", "MobileNetV3", "mobilenet_v3_large_classifier"]

# torchvision's _mobilenet_v3_conf("mobilenet_v3_large"): in, kernel, expanded, out, SE, act, stride
_LARGE = (
    (16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1), (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
)  # fmt: skip


def _divisible(v: float, divisor: int = 8) -> int:
    """torchvision's _make_divisible: round to a multiple of 8, never 10% below v."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _cna(c_in, c_out, k, stride=1, groups=1, act: type[nn.Module] | None = nn.Hardswish):
    """torchvision's Conv2dNormActivation: conv (no bias) -> BN (eps 1e-3) -> activation."""
    layers = [nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, groups=groups, bias=False),
              BatchNorm(c_out, eps=0.001, momentum=0.01)]  # fmt: skip
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, c: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return s * x

    def coord_map(self) -> CoordMap:
        return residual_map([], None, "SqueezeExcitation")  # a per-channel scale: identity


class InvertedResidual(nn.Module):
    def __init__(self, c_in, k, expanded, c_out, se, act, stride):
        super().__init__()
        a = nn.Hardswish if act == "HS" else nn.ReLU
        layers = [] if expanded == c_in else [_cna(c_in, expanded, 1, act=a)]
        layers.append(_cna(expanded, expanded, k, stride, groups=expanded, act=a))
        if se:
            layers.append(SqueezeExcitation(expanded, _divisible(expanded // 4)))
        layers.append(_cna(expanded, c_out, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y + x if self.use_res_connect else y

    def coord_map(self) -> CoordMap:
        if self.use_res_connect:
            return residual_map(self.block, None, "InvertedResidual")
        return residual_map(self.block, self.block, "InvertedResidual")


def _features(width: float) -> tuple[list[nn.Module], list[int]]:
    """features.0 ... features.16 and each one's output channels."""
    c = _divisible(16 * width)
    feats: list[nn.Module] = [_cna(3, c, 3, 2)]
    chans = [c]
    for c_in, k, exp, c_out, se, act, s in _LARGE:
        c_in, exp, c_out = (_divisible(v * width) for v in (c_in, exp, c_out))
        feats.append(InvertedResidual(c_in, k, exp, c_out, se, act, s))
        chans.append(c_out)
    feats.append(_cna(chans[-1], 6 * chans[-1], 1))
    chans.append(6 * chans[-1])
    for m in feats:  # torchvision's init
        for layer in m.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out")
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
    return feats, chans


class MobileNetV3(nn.Module):
    def __init__(self, num_classes: int = 1000, width: float = 1.0, dropout: float = 0.2):
        super().__init__()
        feats, chans = _features(width)
        self.features = nn.Sequential(*feats)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last = _divisible(1280 * width)
        self.classifier = nn.Sequential(
            nn.Linear(chans[-1], last),
            nn.Hardswish(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(last, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def mobilenet_v3_large_classifier(*, num_classes: int = 1000, width: float = 1.0) -> MobileNetV3:
    """MobileNetV3-Large in torchvision's layout (width 1 loads its file strictly)."""
    return MobileNetV3(num_classes, width)


def mobilenet_v3_large_trunk(*, width: float = 1.0) -> Trunk:
    feats, chans = _features(width)
    layers = OrderedDict((f"features_{i}", m) for i, m in enumerate(feats))
    channels = {f"features_{i}": c for i, c in enumerate(chans)}
    return Trunk(layers, channels, "features_16")


_KEY = re.compile(r"^features\.(\d+)\.")


def torchvision_mobilenet_to_fcn(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """features.N.* -> features_N.*; the classifier (1280 + 1000 classes) is dropped."""
    if "features.0.0.weight" not in state or "features.16.0.weight" not in state:
        raise KeyError(f"not a torchvision MobileNetV3-Large state dict (no features.0 / "
                       f"features.16 keys; its first keys: {list(state)[:4]})")  # fmt: skip
    return with_bn_counters(
        {_KEY.sub(r"features_\1.", k): v for k, v in state.items() if _KEY.match(k)}
    )


MOBILENET_V3_LARGE = ModernArch(
    "mobilenet_v3_large",
    mobilenet_v3_large_trunk,
    ("features_12", "features_6"),
    torchvision_mobilenet_to_fcn,
)
