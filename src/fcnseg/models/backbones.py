"""VGG16, AlexNet and CaffeNet, described once as data and built two ways.

1. As an FCN trunk whose modules carry the reference's layer names (``conv1_1`` ... ``fc7``),
   in the Caffe geometry (conv1 padding 100, ceil-mode pools) or the modern "same" one;
   optionally with another input channel count, renamed layers (``conv1_1_bgrd``) or a
   suffix on every name (``conv1_1color``), as the reference release's NYUDv2 nets have.
2. As an ImageNet classifier in torchvision's module layout (``features``, ``avgpool``,
   ``classifier``), whose state-dict keys match torchvision's published weight files.

``torchvision_to_fcn`` is the surgery between the two: it renames ``features.N`` to the
reference names and reshapes fc6/fc7 from matrices into convolutions (a pure function).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from ..safety import check_range

__all__ = [
    "ALEXNET",
    "CAFFENET",
    "LRN",
    "VGG16",
    "Arch",
    "Conv",
    "Pool",
    "Trunk",
    "alexnet_classifier",
    "build_trunk",
    "scaled",
    "torchvision_to_fcn",
    "vgg16_classifier",
]


@dataclass(frozen=True)
class Conv:
    name: str
    out: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1  # CaffeNet's conv2/4/5: two halves, as it was split over two GPUs


@dataclass(frozen=True)
class Pool:
    name: str
    kernel: int
    stride: int


@dataclass(frozen=True)
class LRN:
    """Caffe's across-channel local response normalization (k = 1), point-wise in space."""

    name: str
    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75


@dataclass(frozen=True)
class Arch:
    """A plain conv/pool feature extractor followed by two fully connected layers (fc6, fc7)."""

    name: str
    features: tuple[Conv | Pool | LRN, ...]
    fc_kernel: int  # fc6 sees a fc_kernel x fc_kernel window of the last pool (avgpool size)
    fc_width: int  # 4096
    taps: dict[str, int]  # feature name -> stride, for the skips (pool3: 8, pool4: 16)
    dropout_first: bool  # torchvision AlexNet puts Dropout before each Linear, VGG after


def _vgg_features(blocks: tuple[tuple[int, ...], ...]) -> tuple[Conv | Pool, ...]:
    layers: list[Conv | Pool] = []
    for b, chans in enumerate(blocks, start=1):
        layers += [Conv(f"conv{b}_{i}", c, 3, padding=1) for i, c in enumerate(chans, start=1)]
        layers.append(Pool(f"pool{b}", 2, 2))
    return tuple(layers)


VGG16 = Arch(
    name="vgg16",
    features=_vgg_features(((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3)),
    fc_kernel=7,
    fc_width=4096,
    taps={"pool3": 8, "pool4": 16},
    dropout_first=False,
)

# torchvision's AlexNet (the "one weird trick" variant its weights were trained with):
# 64/192/384/256/256 channels, no LRN, no grouped convs. Same geometry as Caffe's AlexNet.
ALEXNET = Arch(
    name="alexnet",
    features=(
        Conv("conv1", 64, 11, stride=4, padding=2),
        Pool("pool1", 3, 2),
        Conv("conv2", 192, 5, padding=2),
        Pool("pool2", 3, 2),
        Conv("conv3", 384, 3, padding=1),
        Conv("conv4", 256, 3, padding=1),
        Conv("conv5", 256, 3, padding=1),
        Pool("pool5", 3, 2),
    ),
    fc_kernel=6,
    fc_width=4096,
    taps={},
    dropout_first=True,
)

# CaffeNet, the reference's FCN-AlexNet trunk (FCN.md 8): 96/256/384/384/256 channels, LRN
# after pool1 and pool2 (not before, as in the original AlexNet), conv2/4/5 in two groups.
# Only the reference layout is meaningful for it (no torchvision classifier exists).
CAFFENET = Arch(
    name="caffenet",
    features=(
        Conv("conv1", 96, 11, stride=4, padding=0),
        Pool("pool1", 3, 2),
        LRN("norm1"),
        Conv("conv2", 256, 5, padding=2, groups=2),
        Pool("pool2", 3, 2),
        LRN("norm2"),
        Conv("conv3", 384, 3, padding=1),
        Conv("conv4", 384, 3, padding=1, groups=2),
        Conv("conv5", 256, 3, padding=1, groups=2),
        Pool("pool5", 3, 2),
    ),
    fc_kernel=6,
    fc_width=4096,
    taps={},
    dropout_first=True,
)


WIDTH_RANGE = (1 / 64, 8.0)  # the width multipliers every builder takes (as the CLI's --width)


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fc_memory(c_in: int, fc: int, kernel: int, width: float) -> None:
    """fc6 + fc7 grow with width squared (width 8: ~28 GB of VGG16 parameters): refuse a width
    whose fc layers alone would take more than half this machine's memory, before allocating."""
    need = 4 * (c_in * fc * kernel * kernel + fc * fc)  # float32 weights
    have = _physical_memory()
    if have and need > have // 2:
        raise ValueError(
            f"width={width:g} makes fc6 and fc7 alone {need / 2**30:.1f} GiB of float32 "
            f"parameters, more than half of this machine's {have / 2**30:.0f} GiB of memory: "
            f"use a smaller width (1 is the paper's nets)"
        )


def scaled(channels: int, width: float) -> int:
    """Channel count under the `width` multiplier (keeps the topology, shrinks the compute)."""
    check_range("width", width, *WIDTH_RANGE)  # nan, 0, 100 (a 4 TB fc6) refused here
    return max(1, round(channels * width))


@dataclass
class Trunk:
    """Named layers run in order, the channels of every named output, and the last one.

    Names are the final module names (renamed and suffixed); `suffix` is what was appended,
    so a head finds its tap "pool4" of a suffixed trunk at ``"pool4" + suffix``.
    """

    layers: OrderedDict[str, nn.Module]
    channels: dict[str, int]
    out: str
    in_channels: int = 3
    suffix: str = ""


def build_trunk(
    arch: Arch,
    *,
    width: float = 1.0,
    layout: str = "reference",
    dropout: float = 0.5,
    in_channels: int = 3,
    rename: dict[str, str] | None = None,
    suffix: str = "",
) -> Trunk:
    """The classifier as an FCN trunk with reference layer names, up to fc7 (+ ReLU, dropout).

    reference: the first conv is padded by 100 and fc6 is unpadded (Caffe FCN); "same": the
    first conv keeps its own padding and fc6 is padded by k//2, so the output stride is exact.
    Pools use ceil mode in both, as Caffe did. `in_channels` is the input's channel count
    (NYUDv2 colour + depth: 4), `rename` maps layer names to others (``conv1_1`` ->
    ``conv1_1_bgrd``), and `suffix` is appended to every name (two-stream nets: ``"color"``).
    """
    if layout not in ("reference", "same"):
        raise ValueError(f"layout must be 'reference' or 'same', got {layout!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    rename = rename or {}
    unknown = set(rename) - {s.name for s in arch.features} - {"fc6", "fc7"}
    if unknown:
        raise ValueError(f"rename names layers {sorted(unknown)} that {arch.name} does not have")

    def final(name: str) -> str:
        return rename.get(name, name) + suffix

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels: dict[str, int] = {}
    c_in = in_channels
    for i, spec in enumerate(arch.features):
        if isinstance(spec, Conv):
            pad = 100 if (i == 0 and layout == "reference") else spec.padding
            c_out = scaled(spec.out, width)
            if c_in % spec.groups or c_out % spec.groups:
                raise ValueError(
                    f"{spec.name}: {c_in} -> {c_out} channels do not split into "
                    f"{spec.groups} groups; choose a width giving even counts"
                )
            conv = nn.Conv2d(c_in, c_out, spec.kernel, spec.stride, pad, groups=spec.groups)
            layers[final(spec.name)] = conv
            layers[final(spec.name.replace("conv", "relu"))] = nn.ReLU(inplace=True)
            c_in = c_out
        elif isinstance(spec, LRN):  # Caffe: x / (1 + alpha/size * sum x^2)^beta, as torch's
            layers[final(spec.name)] = nn.LocalResponseNorm(spec.size, spec.alpha, spec.beta, 1.0)
        else:
            layers[final(spec.name)] = nn.MaxPool2d(spec.kernel, spec.stride, ceil_mode=True)
        channels[final(spec.name)] = c_in
    fc = scaled(arch.fc_width, width)
    check_fc_memory(c_in, fc, arch.fc_kernel, width)
    fc6_pad = arch.fc_kernel // 2 if layout == "same" else 0
    layers[final("fc6")] = nn.Conv2d(c_in, fc, arch.fc_kernel, padding=fc6_pad)
    layers[final("relu6")] = nn.ReLU(inplace=True)
    layers[final("drop6")] = nn.Dropout(dropout)  # element-wise, as Caffe's dropout
    layers[final("fc7")] = nn.Conv2d(fc, fc, 1)
    layers[final("relu7")] = nn.ReLU(inplace=True)
    layers[final("drop7")] = nn.Dropout(dropout)
    channels.update({final("fc6"): fc, final("fc7"): fc, final("drop7"): fc})
    for layer in layers.values():  # He init: a 15-layer ReLU stack trained from scratch learns;
        if isinstance(layer, nn.Conv2d):  # PyTorch's default init shrinks the signal to ~0
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return Trunk(layers, channels, final("drop7"), in_channels, suffix)


# ---------------------------------------------------------------- torchvision-layout classifiers


class Classifier(nn.Module):
    """torchvision's VGG / AlexNet module layout: features -> avgpool -> flatten -> classifier."""

    def __init__(self, features: nn.Sequential, avgpool: nn.Module, classifier: nn.Sequential):
        super().__init__()
        self.features = features
        self.avgpool = avgpool
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _torchvision_features(arch: Arch, width: float) -> tuple[nn.Sequential, dict[str, int]]:
    """features as torchvision builds it (floor-mode pools); also the index of each conv."""
    modules: list[nn.Module] = []
    index: dict[str, int] = {}
    c_in = 3
    for spec in arch.features:
        if isinstance(spec, LRN) or (isinstance(spec, Conv) and spec.groups != 1):
            raise ValueError(f"{arch.name} has no torchvision layout (LRN / grouped convs)")
        if isinstance(spec, Conv):
            index[spec.name] = len(modules)
            c_out = scaled(spec.out, width)
            modules += [
                nn.Conv2d(c_in, c_out, spec.kernel, spec.stride, spec.padding),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        else:
            modules.append(nn.MaxPool2d(spec.kernel, spec.stride))
    return nn.Sequential(*modules), index


def _classifier_head(arch: Arch, width: float, num_classes: int, dropout: float) -> nn.Sequential:
    last = [s for s in arch.features if isinstance(s, Conv)][-1]
    c, fc, k = scaled(last.out, width), scaled(arch.fc_width, width), arch.fc_kernel
    if arch.dropout_first:  # AlexNet: [Dropout, fc6, ReLU, Dropout, fc7, ReLU, fc8]
        layers = [nn.Dropout(dropout), nn.Linear(c * k * k, fc), nn.ReLU(inplace=True),
                  nn.Dropout(dropout), nn.Linear(fc, fc), nn.ReLU(inplace=True),
                  nn.Linear(fc, num_classes)]  # fmt: skip
    else:  # VGG: [fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8]
        layers = [nn.Linear(c * k * k, fc), nn.ReLU(inplace=True), nn.Dropout(dropout),
                  nn.Linear(fc, fc), nn.ReLU(inplace=True), nn.Dropout(dropout),
                  nn.Linear(fc, num_classes)]  # fmt: skip
    return nn.Sequential(*layers)


def _fc_indices(arch: Arch) -> tuple[int, int]:
    """Index of fc6 and fc7 inside torchvision's ``classifier`` Sequential."""
    return (1, 4) if arch.dropout_first else (0, 3)


def _classifier(arch: Arch, num_classes: int, width: float, dropout: float) -> Classifier:
    features, _ = _torchvision_features(arch, width)
    k = arch.fc_kernel
    return Classifier(features, nn.AdaptiveAvgPool2d((k, k)),
                      _classifier_head(arch, width, num_classes, dropout))  # fmt: skip


def vgg16_classifier(*, num_classes: int = 1000, width: float = 1.0, dropout: float = 0.5):
    """VGG16 in torchvision's layout: loads ``vgg16-397923af.pth`` with strict=True (width 1)."""
    return _classifier(VGG16, num_classes, width, dropout)


def alexnet_classifier(*, num_classes: int = 1000, width: float = 1.0, dropout: float = 0.5):
    """AlexNet in torchvision's layout: loads ``alexnet-owt-7be5be79.pth`` with strict=True."""
    return _classifier(ALEXNET, num_classes, width, dropout)


def torchvision_to_fcn(
    state: dict[str, torch.Tensor], arch: Arch
) -> tuple[OrderedDict[str, torch.Tensor], list[str]]:
    """Rename a torchvision classifier's state dict to the FCN trunk's reference names.

    features.N.{weight,bias} -> convX_Y.*; classifier fc6 (out, C*k*k) -> fc6 (out, C, k, k),
    following the classifier's (C, H, W) flatten order; fc7 (out, in) -> (out, in, 1, 1).
    Returns the new state dict and the source keys it did not use (fc8, the 1000-way layer).
    """
    _, index = _torchvision_features(arch, 1.0)
    i6, i7 = _fc_indices(arch)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    used: set[str] = set()

    def take(src: str) -> torch.Tensor:
        if src not in state:
            raise KeyError(
                f"{arch.name} weights lack '{src}': this is not a torchvision {arch.name} state "
                f"dict (its first keys: {list(state)[:4]})"
            )
        used.add(src)
        return state[src]

    for name, idx in index.items():
        out[f"{name}.weight"] = take(f"features.{idx}.weight")
        out[f"{name}.bias"] = take(f"features.{idx}.bias")
    c_last = out[f"{list(index)[-1]}.weight"].shape[0]
    k = arch.fc_kernel
    w6 = take(f"classifier.{i6}.weight")
    if w6.shape[1] != c_last * k * k:
        raise ValueError(
            f"fc6 of the {arch.name} weights has {w6.shape[1]} inputs, expected "
            f"{c_last}x{k}x{k} = {c_last * k * k}"
        )
    out["fc6.weight"] = w6.reshape(w6.shape[0], c_last, k, k)
    out["fc6.bias"] = take(f"classifier.{i6}.bias")
    w7 = take(f"classifier.{i7}.weight")
    out["fc7.weight"] = w7.reshape(*w7.shape, 1, 1)
    out["fc7.bias"] = take(f"classifier.{i7}.bias")
    return out, [k for k in state if k not in used]
