"""Independent functional oracle of the Caffe reference FCN VGG16 layout.

Written from the project's FCN.md (sections 2 and 3) only; it shares no code with ``fcnseg``
on purpose. Parameter names and shapes follow the widely used PyTorch port of the reference
release (wkentaro/pytorch-fcn), so a model whose ``state_dict`` matches these keys can load that
port's weights. Everything here is ``torch.nn.functional`` plus slicing; the crop offsets are the
reference's hard-coded numbers, not derived from any geometry helper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

VARIANTS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce")

# VGG16 trunk: (block, number of 3x3 convs, output channels at width 1).
VGG_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
VGG_CHANNELS = tuple(c for _, _, c in VGG_BLOCKS)
FC_CHANNELS = 4096
FC6_KERNEL = 7
IN_CHANNELS = 3
CONV1_PADDING = 100

# Reference crop offsets (Caffe "crop" layers of the reference release).
CROP_32S = 19
CROP_16S_POOL4 = 5
CROP_16S = 27
CROP_8S_POOL4 = 5
CROP_8S_POOL3 = 9
CROP_8S = 31

# FCN-8s at-once (TPAMI): fixed scaling of the skip features before their score layers.
ATONCE_POOL4_SCALE = 0.01
ATONCE_POOL3_SCALE = 0.0001

# Transposed convolutions per variant: name -> (kernel, stride).
UPSAMPLERS = {
    "fcn32s": {"upscore": (64, 32)},
    "fcn16s": {"upscore2": (4, 2), "upscore16": (32, 16)},
    "fcn8s": {"upscore2": (4, 2), "upscore_pool4": (4, 2), "upscore8": (16, 8)},
    "fcn8s_atonce": {"upscore2": (4, 2), "upscore_pool4": (4, 2), "upscore8": (16, 8)},
}


def scaled(c: int, width: float) -> int:
    """Channel count of the trunk at a given width multiplier."""
    return max(1, round(c * width))


def conv_names() -> list[str]:
    return [f"conv{b}_{i}" for b, n, _ in VGG_BLOCKS for i in range(1, n + 1)]


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def reference_shapes(variant: str, num_classes: int, width: float) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the port's state dict for one variant."""
    _check_variant(variant)
    shapes: dict[str, tuple[int, ...]] = {}
    cin = IN_CHANNELS
    for b, n, c in VGG_BLOCKS:
        cout = scaled(c, width)
        for i in range(1, n + 1):
            shapes[f"conv{b}_{i}.weight"] = (cout, cin, 3, 3)
            shapes[f"conv{b}_{i}.bias"] = (cout,)
            cin = cout
    fc = scaled(FC_CHANNELS, width)
    shapes["fc6.weight"] = (fc, cin, FC6_KERNEL, FC6_KERNEL)
    shapes["fc6.bias"] = (fc,)
    shapes["fc7.weight"] = (fc, fc, 1, 1)
    shapes["fc7.bias"] = (fc,)
    shapes["score_fr.weight"] = (num_classes, fc, 1, 1)
    shapes["score_fr.bias"] = (num_classes,)
    if variant != "fcn32s":
        c4 = scaled(VGG_CHANNELS[3], width)
        shapes["score_pool4.weight"] = (num_classes, c4, 1, 1)
        shapes["score_pool4.bias"] = (num_classes,)
    if variant in ("fcn8s", "fcn8s_atonce"):
        c3 = scaled(VGG_CHANNELS[2], width)
        shapes["score_pool3.weight"] = (num_classes, c3, 1, 1)
        shapes["score_pool3.bias"] = (num_classes,)
    for name, (k, _) in UPSAMPLERS[variant].items():
        shapes[f"{name}.weight"] = (num_classes, num_classes, k, k)
    return shapes


def reference_state_dict(
    variant: str, num_classes: int, width: float, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Random float32 parameters with exactly the port's keys and shapes.

    Convolutions: He-scaled normal weights, small random biases. Score layers are random and
    non-zero (unlike the reference's zero init) so every branch shows in the output. Transposed
    convolutions get random (not bilinear) weights, so their exact placement and stride matter.
    """
    sd: dict[str, torch.Tensor] = {}
    for key, shape in reference_shapes(variant, num_classes, width).items():
        name = key.rsplit(".", 1)[0]
        if key.endswith(".bias"):
            t = 0.1 * torch.randn(shape, generator=generator, dtype=torch.float32)
        elif name in UPSAMPLERS[variant]:
            k, s = UPSAMPLERS[variant][name]
            # Each output pixel sums over num_classes * (k / s)**2 taps.
            std = 1.0 / math.sqrt(num_classes * (k / s) ** 2)
            t = std * torch.randn(shape, generator=generator, dtype=torch.float32)
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            t = math.sqrt(2.0 / fan_in) * torch.randn(
                shape, generator=generator, dtype=torch.float32
            )
        sd[key] = t
    return sd


def _conv(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor, padding: int = 0):
    return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], stride=1, padding=padding)


def _up(sd: dict[str, torch.Tensor], variant: str, name: str, x: torch.Tensor) -> torch.Tensor:
    _, stride = UPSAMPLERS[variant][name]
    return F.conv_transpose2d(x, sd[f"{name}.weight"], bias=None, stride=stride)


def _crop(x: torch.Tensor, offset: int, h: int, w: int) -> torch.Tensor:
    if x.shape[2] < offset + h or x.shape[3] < offset + w:
        raise ValueError(f"cannot crop {tuple(x.shape)} at offset {offset} to {h}x{w}")
    return x[:, :, offset : offset + h, offset : offset + w]


def reference_trunk(sd: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """VGG16 trunk + fc6/fc7 + score_fr in inference mode (dropout is identity)."""
    feats: dict[str, torch.Tensor] = {}
    h = x
    for b, n, _ in VGG_BLOCKS:
        for i in range(1, n + 1):
            pad = CONV1_PADDING if (b, i) == (1, 1) else 1
            h = F.relu(_conv(sd, f"conv{b}_{i}", h, padding=pad))
        h = F.max_pool2d(h, kernel_size=2, stride=2, ceil_mode=True)
        feats[f"pool{b}"] = h
    h = F.relu(_conv(sd, "fc6", h, padding=0))
    h = F.relu(_conv(sd, "fc7", h, padding=0))
    feats["score_fr"] = _conv(sd, "score_fr", h, padding=0)
    return feats


def reference_forward(variant: str, sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Reference FCN forward pass; returns (N, C, H, W) logits for an (N, 3, H, W) input."""
    _check_variant(variant)
    H, W = x.shape[2], x.shape[3]
    sd = {k: v.to(dtype=x.dtype, device=x.device) for k, v in sd.items()}
    f = reference_trunk(sd, x)
    score = f["score_fr"]

    if variant == "fcn32s":
        up = _up(sd, variant, "upscore", score)
        return _crop(up, CROP_32S, H, W).contiguous()

    atonce = variant == "fcn8s_atonce"
    pool4 = f["pool4"] * ATONCE_POOL4_SCALE if atonce else f["pool4"]
    upscore2 = _up(sd, variant, "upscore2", score)
    sp4 = _conv(sd, "score_pool4", pool4)
    sp4 = _crop(sp4, CROP_16S_POOL4 if variant == "fcn16s" else CROP_8S_POOL4, *upscore2.shape[2:])
    fuse_pool4 = upscore2 + sp4

    if variant == "fcn16s":
        up = _up(sd, variant, "upscore16", fuse_pool4)
        return _crop(up, CROP_16S, H, W).contiguous()

    pool3 = f["pool3"] * ATONCE_POOL3_SCALE if atonce else f["pool3"]
    upscore_pool4 = _up(sd, variant, "upscore_pool4", fuse_pool4)
    sp3 = _conv(sd, "score_pool3", pool3)
    sp3 = _crop(sp3, CROP_8S_POOL3, *upscore_pool4.shape[2:])
    fuse_pool3 = upscore_pool4 + sp3
    up = _up(sd, variant, "upscore8", fuse_pool3)
    return _crop(up, CROP_8S, H, W).contiguous()
