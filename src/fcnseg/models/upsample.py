"""FCN's C -> C upsamplers, computed per class whenever that is exactly the same operation.

A bilinear upsampler is a transposed conv whose (C, C, k, k) kernel is zero off the channel
diagonal: class c only ever feeds class c. Run densely it multiplies C - 1 zeros for every
useful product (FCN-32s' fixed 64x64 upscore was 68% of a digit-scenes training step under
bf16 on an AMX Xeon, issue 12). `ClassUpsample` keeps the dense (C, C, k, k) weight, so the
state dict is unchanged (keys, shapes, no bias; strict loading of reference and ported files
works), and runs a grouped transposed conv on the diagonal (C, 1, k, k) instead when

* the kernel is diagonal (checked once per weight version, see below), and
* no gradient of the weight is needed: it is frozen (requires_grad False) or autograd is off
  (evaluation, inference, FastFCN, export).

Both paths compute the same sums (the dense one adds exact zeros), so outputs and input
gradients agree to rounding. Under bf16/fp16 (autocast or half weights) the per-class op
computes in float32 and returns the dense op's dtype: oneDNN's grouped transposed conv is
~30x slower in bf16 than in fp32, while the dense one in bf16 was the cliff of issue 12.

A learnable upsampler in training stays dense on purpose: the dense op's weight gradient has
non-zero off-diagonal entries (dL/dW[c, o] correlates class c's input with class o's output
gradient), which an optimizer then applies, so the kernel stops being diagonal after one
step; a per-class op would silently train a different model.
Any non-diagonal kernel (a trained 2x upsampler, a user's file) falls back to the dense op.

The diagonality check is cached per weight tensor, keyed on its data pointer and version
counter: in-place updates (optimizer steps, load_state_dict, `init_bilinear_`) bump the
version; writing through `weight.data` does not, so after such a write call `refresh()`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClassUpsample", "diagonal_kernel"]


def diagonal_kernel(weight: torch.Tensor) -> torch.Tensor | None:
    """The per-class kernel (C, 1, k, k) of a (C, C, k, k) weight that is zero off the
    channel diagonal, or None if any off-diagonal entry is non-zero (or it is not C -> C)."""
    if weight.dim() != 4 or weight.shape[0] != weight.shape[1]:
        return None
    c = weight.shape[0]
    eye = torch.eye(c, dtype=torch.bool, device=weight.device)[:, :, None, None]
    if bool(weight.detach().masked_fill(eye, 0).any()):
        return None
    return _diag(weight.detach())


def _diag(weight: torch.Tensor) -> torch.Tensor:
    # (C, C, k, k) -> diagonal (k, k, C) -> (C, 1, k, k)
    return weight.diagonal(dim1=0, dim2=1).permute(2, 0, 1).unsqueeze(1).contiguous()


class ClassUpsample(nn.ConvTranspose2d):
    """`nn.ConvTranspose2d` (C -> C, groups 1) that runs per class when that is exact.

    Built by `fcnseg.models.init.bilinear_upsampler`; parameters, state dict, repr and
    geometry are those of the ConvTranspose2d it subclasses.
    """

    _cache: tuple | None = None  # (weight, its storage, data_ptr, version, kernel or None)

    def refresh(self) -> None:
        """Forget the cached diagonality check (needed only after writes via `.data`)."""
        self._cache = None

    def per_class_kernel(self) -> torch.Tensor | None:
        """The (C, 1, k, k) kernel when the weight is diagonal, else None (cached)."""
        w = self.weight
        if self.groups != 1 or self.in_channels != self.out_channels or self.in_channels < 2:
            return None
        if w.is_inference():  # no version counter: check every time (cheap)
            return diagonal_kernel(w)
        c = self._cache
        if c is not None and c[0] is w and c[2] == w.data_ptr() and c[3] == w._version:
            return c[4]
        kernel = diagonal_kernel(w)
        # holding the storage keeps its address from being reused by another tensor (e.g.
        # after `.to()` swaps the parameter's data), so the pointer identifies the data
        self._cache = (w, w.untyped_storage(), w.data_ptr(), w._version, kernel)
        return kernel

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        w = self.weight
        if (
            output_size is not None
            or (w.requires_grad and torch.is_grad_enabled())  # weight gradient: the dense op
            or w.device.type == "meta"  # shapes only (fcnseg.flops): nothing to check
            or torch.compiler.is_compiling()  # a data-dependent branch: leave it dense
            or torch.jit.is_tracing()  # export (ONNX, TorchScript): the plain ConvTranspose
        ):
            return super().forward(x, output_size)
        kernel = self.per_class_kernel()
        if kernel is None:
            return super().forward(x, output_size)
        dev = x.device.type
        out_dtype = x.dtype  # autocast leaves float64 alone, casts float32 down
        if torch.is_autocast_enabled(dev) and x.dtype == torch.float32:
            out_dtype = torch.get_autocast_dtype(dev)
        if out_dtype not in (torch.bfloat16, torch.float16):
            return self._grouped(x, kernel, self.bias)
        # the grouped kernel in bf16 is ~30x slower than in fp32 on CPU (oneDNN, measured on
        # Zen 4: 300 vs 10 ms for FCN-32s' upscore on a digit-scenes batch), so it runs in fp32
        # and returns the dtype the dense op would have (more precise, never a cliff)
        bias = None if self.bias is None else self.bias.float()
        with torch.autocast(dev, enabled=False):
            return self._grouped(x.float(), kernel.float(), bias).to(out_dtype)

    def _grouped(self, x: torch.Tensor, kernel: torch.Tensor, bias) -> torch.Tensor:
        return F.conv_transpose2d(
            x, kernel, bias, self.stride, self.padding, self.output_padding, self.in_channels,
            self.dilation,
        )  # fmt: skip
