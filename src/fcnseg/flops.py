"""Multiply-accumulates counted from layer shapes (no arithmetic: runs on the meta device)."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["count_macs"]


def count_macs(model: nn.Module, height: int, width: int) -> dict[str, int]:
    """MACs of each conv / transposed conv / linear layer for one (3, height, width) image."""
    meta = copy.deepcopy(model).to("meta").eval()
    macs: dict[str, int] = {}

    def hook(name):
        def fn(layer, inputs, output):
            x = inputs[0]
            if isinstance(layer, nn.ConvTranspose2d):  # every input pixel scatters a kernel
                k = layer.kernel_size[0] * layer.kernel_size[1]
                macs[name] = x[0].numel() * k * layer.out_channels // layer.groups
            elif isinstance(layer, nn.Conv2d):  # every output pixel gathers a kernel
                k = layer.kernel_size[0] * layer.kernel_size[1]
                macs[name] = output[0].numel() * k * layer.in_channels // layer.groups
            else:  # Linear
                macs[name] = output[0].numel() * layer.in_features

        return fn

    for name, layer in meta.named_modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            layer.register_forward_hook(hook(name))
    with torch.no_grad():
        meta(torch.empty(1, 3, height, width, device="meta"))
    return macs
