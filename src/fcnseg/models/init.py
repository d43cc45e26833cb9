"""Weight initialisation for FCN heads: bilinear upsampling kernels and zero score layers."""

from __future__ import annotations

import torch
from torch import nn

from .upsample import ClassUpsample

__all__ = ["bilinear_kernel", "bilinear_upsampler", "init_bilinear_", "zero_init_"]


def bilinear_kernel(kernel_size: int) -> torch.Tensor:
    """The reference's 2-D bilinear filter of size k (FCN.md section 2), shape (k, k), float64.

    factor = (k + 1) // 2; center = factor - 1 for odd k, factor - 0.5 for even k;
    w[i, j] = (1 - |i - center| / factor) * (1 - |j - center| / factor).
    """
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    r = 1 - (torch.arange(kernel_size, dtype=torch.float64) - center).abs() / factor
    return r[:, None] * r[None, :]


@torch.no_grad()
def init_bilinear_(layer: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    """Bilinear kernel on the channel diagonal (class c -> class c), zeros elsewhere; no bias."""
    c_in, c_out_per_group, kh, kw = layer.weight.shape
    if kh != kw or layer.groups != 1 or c_in != c_out_per_group:
        raise ValueError(
            "bilinear init needs a square, ungrouped C->C transposed conv, "
            f"got {tuple(layer.weight.shape)}"
        )
    layer.weight.zero_()
    kernel = bilinear_kernel(kh).to(layer.weight.dtype)
    idx = torch.arange(c_in)
    layer.weight[idx, idx] = kernel
    if layer.bias is not None:
        layer.bias.zero_()
    return layer


def bilinear_upsampler(
    channels: int, factor: int, kernel_size: int | None = None, padding: int = 0, trainable=True
) -> ClassUpsample:
    """A stride-`factor` transposed conv (default kernel 2 x factor), bilinear, no bias.

    A `ClassUpsample`: an `nn.ConvTranspose2d` with the same (C, C, k, k) weight that runs per
    class (grouped, C times less work) while its kernel is diagonal and its weight needs no
    gradient, and as the dense op otherwise (see fcnseg.models.upsample).
    """
    k = 2 * factor if kernel_size is None else kernel_size
    layer = ClassUpsample(channels, channels, k, stride=factor, padding=padding, bias=False)
    init_bilinear_(layer)
    layer.weight.requires_grad_(trainable)
    return layer


@torch.no_grad()
def zero_init_(layer: nn.Conv2d) -> nn.Conv2d:
    """Score layers start at zero (the paper: 'class scoring layer zero-initialized')."""
    layer.weight.zero_()
    if layer.bias is not None:
        layer.bias.zero_()
    return layer
