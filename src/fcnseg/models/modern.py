"""What today's classifiers (ResNet, MobileNetV3, EfficientNet-Lite, timm trunks) share as FCN
trunks: their description as data (`ModernArch`), the paper's heads on their taps, batch norm
with frozen statistics, and the residual blocks' geometry.

The paper's recipe, unchanged: the classifier's last feature map (stride 32) is scored by a
zero-initialised 1x1 conv; FCN-16s / 8s add zero-initialised score layers on the stride-16 and
stride-8 features, fused by sum after 2x upsamplers initialised bilinear; a fixed bilinear
upsampler brings the scores back to the input, cropped where geometry.py says.

One difference from VGG16 is geometry, not method: these nets pad every conv by (k-1)/2 ("same"),
so position x of a stride-s map sits over input pixel s * x (VGG16's ceil pools: s * x + (s-1)/2).
A bilinear kernel of even size (the paper's 4 and 2f) is centred between two pixels and would put
the upsampled grid half a pixel off; its odd neighbour (3 and 2f - 1) is centred on one and lands
exactly. `paper_head` chooses those, and FCN derives every crop offset from the layers as always.

Batch norm (`bn`): "frozen" keeps each BN layer's running statistics fixed (the layer always
normalizes as in eval mode; its scale and shift still learn): the paper's batch-1 fine-tuning
cannot estimate batch statistics, and a small batch's estimate would overwrite the ImageNet ones.
"batch": ordinary BN (batch statistics in training), for training from scratch with batches.
"auto" (the default): frozen when the trunk starts from pretrained weights (`backbone_weights=`),
batch otherwise; `build_model` resolves it and records the choice in `model.options`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import IMAGENET_RGB, Preprocessing
from .backbones import Trunk
from .fcn import FCN, Head, Skip
from .geometry import CoordMap, compose

__all__ = [
    "BN_MODES",
    "BatchNorm",
    "ModernArch",
    "check_bn",
    "paper_fcn",
    "paper_head",
    "residual_map",
    "set_bn",
    "with_bn_counters",
]

BN_MODES = ("auto", "frozen", "batch")


def check_bn(bn: str) -> str:
    if bn not in BN_MODES:
        raise ValueError(f"bn={bn!r}: use 'frozen' (fixed statistics, fine-tuning), 'batch' "
                         f"(batch statistics, from scratch) or 'auto'")  # fmt: skip
    return bn


class BatchNorm(nn.BatchNorm2d):
    """nn.BatchNorm2d (same state-dict keys, so torchvision's files load) whose statistics can
    be frozen: with `frozen`, it normalizes by its running statistics in training too."""

    frozen: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.frozen:
            return super().forward(x)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            False, 0.0, self.eps)  # fmt: skip


def _eval_pre_hook(module: nn.Module, args) -> None:
    module.training = False  # this BN normalizes by its running statistics, always


def set_bn(model: nn.Module, bn: str) -> None:
    """Freeze ("frozen") or release ("batch") the statistics of every batch norm in `model`.

    fcnseg's own trunks use `BatchNorm`; a plain nn.BatchNorm2d (a timm trunk's) becomes one
    (same state); another subclass (timm's BatchNormAct2d) is kept in eval mode by a hook."""
    if bn not in ("frozen", "batch"):
        raise ValueError(f"bn must be resolved to 'frozen' or 'batch', got {bn!r}")
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = BatchNorm
        if isinstance(m, BatchNorm):
            m.frozen = bn == "frozen"
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            handle = m.__dict__.pop("_fcnseg_frozen", None)
            if handle is not None:
                handle.remove()
            if bn == "frozen":
                m.__dict__["_fcnseg_frozen"] = m.register_forward_pre_hook(_eval_pre_hook)


def with_bn_counters(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with a zero ``num_batches_tracked`` beside every BN's running statistics that
    lacks one (torchvision's files saved before PyTorch 0.4.1 have none; they are unused when
    BN momentum is set, as here)."""
    out = dict(state)
    for k in state:
        if k.endswith(".running_mean"):
            out.setdefault(k[: -len("running_mean")] + "num_batches_tracked",
                           torch.tensor(0, dtype=torch.long))  # fmt: skip
    return out


def residual_map(main: nn.Module | list, shortcut: nn.Module | list | None, what: str) -> CoordMap:
    """A residual block's map: its main path's, which must equal the shortcut's (identity when
    there is none), or the sum would add misaligned maps."""
    mains = list(main) if isinstance(main, list) else [main]
    m = compose(mains)
    s = compose([] if shortcut is None else list(shortcut) if isinstance(shortcut, list)
                else [shortcut])  # fmt: skip
    if m != s:
        raise ValueError(f"{what}: main path {m} and shortcut {s} are not aligned")
    return m


@dataclass(frozen=True)
class ModernArch:
    """A classifier family member as an FCN trunk: how to build it, which features to tap,
    and how its ImageNet state dict becomes the trunk's (a pure function, `to_fcn`)."""

    name: str  # "resnet18", the backbone word in the model names
    trunk: Callable[..., Trunk]  # keyword options (width, bn, ...) -> Trunk
    taps: tuple[str, str]  # the stride-16 and stride-8 features (FCN-16s's, FCN-8s's)
    to_fcn: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    preprocessing: Preprocessing = IMAGENET_RGB  # what its pretrained weights expect
    pad_to: int = 1  # pad the input to a multiple (TF "same" padding nets: 32)
    resolve: Callable[[Any], Any] = field(default=lambda source: source)  # name -> local file


def paper_head(variant: str, taps: tuple[str, str]) -> Head:
    """FCN-32s / 16s / 8s on a trunk with "same" convs: 3x3 2x upsamplers, (2f-1) final.

    The score and upsampling layers keep the reference's names (score_fr, upscore2, upscore8,
    ...) where they mean the same thing; a skip's score layer is named after its tap
    (score_layer3 where VGG16 has score_pool4), as is the upsampler of the scores fused there.
    """
    tap16, tap8 = taps
    s16 = Skip(tap16, f"score_{tap16}", "upscore2")
    s8 = Skip(tap8, f"score_{tap8}", f"upscore_{tap16}")
    skips, factor = {"fcn32s": ((), 32), "fcn16s": ((s16,), 16), "fcn8s": ((s16, s8), 8)}[variant]
    return Head(skips, f"upscore{factor}" if skips else "upscore", factor,
                final_kernel=2 * factor - 1, up_kernel=3)  # fmt: skip


def paper_fcn(arch: ModernArch, variant: str, num_classes: int, **options) -> FCN:
    """`variant` ("fcn32s", "fcn16s", "fcn8s") of the paper on `arch`'s trunk."""
    bn = check_bn(options.pop("bn", "auto"))
    model = FCN(arch.trunk(**options), paper_head(variant, arch.taps), num_classes,
                pad_to=arch.pad_to)  # fmt: skip
    model.bn_mode = bn  # "auto" is resolved by build_model, which knows about pretrained weights
    return model
