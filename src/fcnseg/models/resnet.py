"""ResNet-18/34/50 in torchvision's module layout, so torchvision's files load without torchvision.

Two uses: the ImageNet classifier (`resnet_classifier`, keys ``conv1``, ``bn1``,
``layer1.0.conv1`` ... ``fc``: ``resnet18-f37072fd.pth`` loads with strict=True), and the FCN
trunk (`resnet_trunk`: the same modules up to ``layer4``, so the file's keys are the FCN's but
``fc.*``). ResNet-50 is torchvision's v1.5 (stride on the 3x3 conv). `dilated=True` is
torchvision's ``replace_stride_with_dilation=[False, True, True]``: layer3 and layer4 keep stride
8 and dilate their convs by 2 and 4 instead (the design of torchvision's ``fcn_resnet50``).

Scale and channels (ResNet-18 / 50): conv1 + maxpool 1/4, 64; layer1 1/4, 64 / 256; layer2 1/8,
128 / 512; layer3 1/16, 256 / 1024; layer4 1/32, 512 / 2048. Every conv pads (k-1)/2 x dilation,
so position x of a stride-s map sits over input pixel s * x (see modern.paper_head).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .backbones import Trunk, scaled
from .geometry import CoordMap
from .modern import BatchNorm, ModernArch, residual_map, with_bn_counters

__all__ = ["RESNETS", "BasicBlock", "Bottleneck", "ResNet", "resnet_classifier", "resnet_trunk"]


def _conv(c_in: int, c_out: int, k: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride, padding=(k - 1) // 2 * dilation, dilation=dilation,
                     bias=False)  # fmt: skip


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = _conv(c_in, planes, 3, stride, dilation)
        self.bn1 = BatchNorm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3, 1, dilation)
        self.bn2 = BatchNorm(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)

    def coord_map(self) -> CoordMap:
        return residual_map([self.conv1, self.conv2], self.downsample, "BasicBlock")


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = _conv(c_in, planes, 1)
        self.bn1 = BatchNorm(planes)
        self.conv2 = _conv(planes, planes, 3, stride, dilation)
        self.bn2 = BatchNorm(planes)
        self.conv3 = _conv(planes, planes * 4, 1)
        self.bn3 = BatchNorm(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)

    def coord_map(self) -> CoordMap:
        return residual_map([self.conv1, self.conv2, self.conv3], self.downsample, "Bottleneck")


# depth -> (block, blocks per layer)
_DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
           50: (Bottleneck, (3, 4, 6, 3))}  # fmt: skip


def _layers(depth: int, width: float, dilated: bool) -> tuple[OrderedDict, dict[str, int]]:
    """conv1 ... layer4 as torchvision builds them (its `_make_layer`), and each one's channels."""
    block, counts = _DEPTHS[depth]
    c = scaled(64, width)
    mods: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(3, c, 7, 2, 3, bias=False),  # 1/2
        bn1=BatchNorm(c),
        relu=nn.ReLU(inplace=True),
        maxpool=nn.MaxPool2d(3, 2, 1),  # 1/4
    )
    channels = {"conv1": c, "bn1": c, "relu": c, "maxpool": c}
    dilation = 1
    for i, (n, planes) in enumerate(zip(counts, (64, 128, 256, 512), strict=True)):
        stride, previous = (1 if i == 0 else 2), dilation
        if dilated and i >= 2:  # layer3, layer4: stride 1, dilation 2 then 4
            dilation, stride = dilation * stride, 1
        p = scaled(planes, width)
        down = None
        if stride != 1 or c != p * block.expansion:
            down = nn.Sequential(nn.Conv2d(c, p * block.expansion, 1, stride, bias=False),
                                 BatchNorm(p * block.expansion))  # fmt: skip
        blocks = [block(c, p, stride, down, previous)]
        c = p * block.expansion
        blocks += [block(c, p, dilation=dilation) for _ in range(n - 1)]
        mods[f"layer{i + 1}"] = nn.Sequential(*blocks)
        channels[f"layer{i + 1}"] = c
    for m in mods.values():
        for layer in m.modules():
            if isinstance(layer, nn.Conv2d):  # torchvision's init
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    return mods, channels


class ResNet(nn.Module):
    """torchvision's ResNet: conv1 -> bn1 -> relu -> maxpool -> layer1..4 -> avgpool -> fc."""

    def __init__(self, depth: int, num_classes: int = 1000, width: float = 1.0):
        super().__init__()
        mods, channels = _layers(depth, width, dilated=False)
        for name, m in mods.items():
            self.add_module(name, m)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels["layer4"], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet_classifier(depth: int = 18, *, num_classes: int = 1000, width: float = 1.0) -> ResNet:
    """ResNet-`depth` in torchvision's layout (width 1 loads torchvision's file strictly)."""
    if depth not in _DEPTHS:
        raise ValueError(f"ResNet depth {depth}: fcnseg has {', '.join(map(str, _DEPTHS))}")
    return ResNet(depth, num_classes, width)


def resnet_trunk(depth: int, *, width: float = 1.0, dilated: bool = False,
                 fcn_head: bool = False) -> Trunk:  # fmt: skip
    """ResNet-`depth` up to layer4 as an FCN trunk (taps layer2 1/8, layer3 1/16).

    `fcn_head`: torchvision's ``FCNHead`` before the score layer (3x3 conv to 512 channels, BN,
    ReLU, dropout 0.1; named score_conv ... so that backbone loading leaves them at their init):
    with `dilated`, the ``fcn_resnet50`` design, whose 1x1 classifier is our score_fr.
    """
    layers, channels = _layers(depth, width, dilated)
    out = "layer4"
    if fcn_head:
        c = scaled(512, width)
        layers["score_conv"] = nn.Conv2d(channels["layer4"], c, 3, padding=1, bias=False)
        nn.init.kaiming_normal_(layers["score_conv"].weight, mode="fan_out", nonlinearity="relu")
        layers["score_bn"] = BatchNorm(c)
        layers["score_relu"] = nn.ReLU(inplace=True)
        layers["score_drop"] = nn.Dropout(0.1)
        channels["score_drop"] = c
        out = "score_drop"
    return Trunk(layers, channels, out)


def _drop_fc(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ResNet state dict -> the trunk's: the same keys without fc (the 1000 classes)."""
    if "conv1.weight" not in state or "layer4.0.conv1.weight" not in state:
        raise KeyError(f"not a torchvision ResNet state dict (it has no conv1 / layer4 keys; "
                       f"its first keys: {list(state)[:4]})")  # fmt: skip
    return with_bn_counters({k: v for k, v in state.items() if not k.startswith("fc.")})


def _arch(depth: int, dilated: bool = False) -> ModernArch:
    def trunk(*, width: float = 1.0) -> Trunk:
        return resnet_trunk(depth, width=width, dilated=dilated, fcn_head=dilated)

    return ModernArch(f"resnet{depth}", trunk, ("layer3", "layer2"), _drop_fc)


RESNETS = {d: _arch(d) for d in _DEPTHS}
DILATED_RESNET50 = _arch(50, dilated=True)
