"""GoogLeNet (Inception v1) in torchvision's module layout, so its weight file loads as is.

Used two ways: as an ImageNet classifier (``googlenet_classifier``), and as the FCN-32s trunk
(``googlenet_trunk``: conv1 ... inception5b, stride 32, 1024 channels; the paper drops the
final average pooling). torchvision's file was trained with ``transform_input=True``: we fold
that into the weights' preprocessing (RGB, mean 0.5, std 0.5) instead of the network.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .backbones import Trunk
from .geometry import IDENTITY, CoordMap, coord_map

__all__ = ["GoogLeNet", "googlenet_classifier", "googlenet_trunk"]


class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))

    def coord_map(self) -> CoordMap:
        return coord_map(self.conv)


class Inception(nn.Module):
    """Four stride-1, centred branches concatenated (torchvision's 3x3 in the "5x5" branch)."""

    def __init__(self, c_in, ch1, ch3red, ch3, ch5red, ch5, pool_proj):
        super().__init__()
        self.branch1 = BasicConv2d(c_in, ch1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(c_in, ch3red, kernel_size=1),
            BasicConv2d(ch3red, ch3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(c_in, ch5red, kernel_size=1),
            BasicConv2d(ch5red, ch5, kernel_size=3, padding=1),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(c_in, pool_proj, kernel_size=1),
        )
        self.out_channels = ch1 + ch3 + ch5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([b(x) for b in branches], 1)

    def coord_map(self) -> CoordMap:
        return IDENTITY  # every branch is stride 1 and centred


class InceptionAux(nn.Module):
    """Auxiliary classifier (training-time only); kept so torchvision's file loads strictly."""

    def __init__(self, c_in: int, num_classes: int, dropout: float = 0.7):
        super().__init__()
        self.conv = BasicConv2d(c_in, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(nn.functional.adaptive_avg_pool2d(x, (4, 4)))
        x = self.dropout(torch.relu(self.fc1(torch.flatten(x, 1))))
        return self.fc2(x)


def _stem_and_inceptions() -> OrderedDict[str, nn.Module]:
    # Scale and channels at each step, for a 224 input:
    return OrderedDict(
        conv1=BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3),  # 1/2, 64
        maxpool1=nn.MaxPool2d(3, stride=2, ceil_mode=True),  # 1/4
        conv2=BasicConv2d(64, 64, kernel_size=1),
        conv3=BasicConv2d(64, 192, kernel_size=3, padding=1),  # 1/4, 192
        maxpool2=nn.MaxPool2d(3, stride=2, ceil_mode=True),  # 1/8
        inception3a=Inception(192, 64, 96, 128, 16, 32, 32),  # 256
        inception3b=Inception(256, 128, 128, 192, 32, 96, 64),  # 480
        maxpool3=nn.MaxPool2d(3, stride=2, ceil_mode=True),  # 1/16
        inception4a=Inception(480, 192, 96, 208, 16, 48, 64),  # 512
        inception4b=Inception(512, 160, 112, 224, 24, 64, 64),
        inception4c=Inception(512, 128, 128, 256, 24, 64, 64),
        inception4d=Inception(512, 112, 144, 288, 32, 64, 64),  # 528
        inception4e=Inception(528, 256, 160, 320, 32, 128, 128),  # 832
        maxpool4=nn.MaxPool2d(2, stride=2, ceil_mode=True),  # 1/32
        inception5a=Inception(832, 256, 160, 320, 32, 128, 128),
        inception5b=Inception(832, 384, 192, 384, 48, 128, 128),  # 1/32, 1024
    )


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 1000, aux_logits: bool = False, dropout: float = 0.2):
        super().__init__()
        for name, module in _stem_and_inceptions().items():
            self.add_module(name, module)
        self.aux1 = InceptionAux(512, num_classes) if aux_logits else None
        self.aux2 = InceptionAux(528, num_classes) if aux_logits else None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for name in _stem_and_inceptions():
            x = getattr(self, name)(x)
        return x  # (N, 1024, H/32, W/32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.forward_features(x))
        return self.fc(self.dropout(torch.flatten(x, 1)))


def googlenet_classifier(*, num_classes: int = 1000, aux_logits: bool = False) -> GoogLeNet:
    """GoogLeNet in torchvision's layout (``googlenet-1378be20.pth`` loads with aux_logits=True)."""
    return GoogLeNet(num_classes=num_classes, aux_logits=aux_logits)


def googlenet_trunk() -> Trunk:
    layers = _stem_and_inceptions()
    layers["drop5"] = nn.Dropout(0.2)  # the classifier's dropout, kept before the score layer
    return Trunk(layers, {"inception5b": 1024, "drop5": 1024}, out="drop5")
