"""A faster exact forward for reference-layout FCNs: skip the work the 100-pixel padding causes.

The reference pads conv1_1 by 100 pixels so that any input gives an output. At 500x500 this
makes every early map ~40% larger than the image's own, and most of that border holds values
that do not depend on the image at all: a position whose receptive field misses the image sees
only zeros, so its activation is the one the net gives a black (all-zero) input of the same size.

`FastFCN` computes, once per input size, the activations of that all-zero input (the
"background": constant except in zones along the map's edges, so it is computed on a smaller
black input with the same edges, 212x212 for 500x500, and its interior repeated), then on
every call runs each layer only on the "core": the positions whose
receptive field touches the image (plus what the next layer reads). Outside the core every map
equals the background, which also holds the thin rim that each layer's own zero padding makes at
the map's outer edge, so no special case is needed for it. The input of each layer is a
persistent buffer: background and zero padding written once, the core pasted in on each call,
so the large layer inputs are not re-allocated (and re-faulted by the OS) on every call.

Each layer then runs with the fastest kernel that gives the same numbers (fcnseg.kernels):
3x3 convs with >= 256 input channels (VGG16's conv3_2 to conv5_3) by Winograd F(2x2, 3x3),
2.25x fewer multiply-adds; the other convs by oneDNN into kept output buffers with the ReLU
fused (no page faults for fresh 50 MB activations); fc6/fc7 as one GEMM (oneDNN's linear with
the ReLU fused, where torch has it: a 7x7 conv on a 22x22 map runs far below the conv kernels'
speed); channels_last throughout; the upsamplers as per-class (grouped) transposed convs when
their weights are diagonal, as the bilinear ones are.

Exactness: the same function of the same values, up to float rounding (summation order, and
Winograd's transforms: ~1e-7 relative in float32, like the direct convs'); tests/test_fast.py
compares with the model's own forward, in float64 to 1e-12.

At 500x500 the model's forward performs 181.5 GMAC (the "same" layout: 108.3); FastFCN's trunk
computes 124.6 GMAC of it, as 88.9 GMAC of products with Winograd. At 1024 the padding's share,
and the gain from skipping it, is smaller. `bfloat16=True` gives a bf16 trunk (the head stays
float32): not exact, ~1e-2 relative, argmax nearly always the same; see
benchmarks/inference.py.
"""

from __future__ import annotations

from .net import FastFCN, bf16_forward
from .plan import core_interval

__all__ = ["FastFCN", "bf16_forward", "core_interval"]
