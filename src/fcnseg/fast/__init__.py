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

Each layer then runs with the kernel that measured fastest on this machine for its shape and
dtype, among those that give the same numbers (fcnseg.kernels): for 3x3 convs Winograd
F(4x4, 3x3) (36 products per 4x4 output block: 4x fewer multiply-adds than the direct conv,
and 2.25 transformed input values per output where F(2x2) reads 4), Winograd F(2x2, 3x3)
(2.25x fewer) or oneDNN's direct conv into a kept output buffer with the ReLU fused (no page
faults for fresh 50 MB activations); see fcnseg.winograd. At 500x500 on AMD EPYC (2 threads,
each kernel alone, interleaved, median of 5) conv1_2-conv5_3 took 559 ms by F(4x4), 778 by
F(2x2), 930 by oneDNN's direct conv: F(4x4) 0.63-0.76x F(2x2)'s time per layer (conv1_2,
64 channels on 504x504: 0.92x), and faster than the direct conv on all but conv1_2 (100 vs 91
ms). For fc6/fc7 one GEMM (oneDNN's linear with the ReLU fused, where torch has it) or the
conv. The choice is timed at first use and cached per CPU model, thread count, torch version
and layer shape in
~/.cache/fcnseg/kernels.json ($FCNSEG_CACHE overrides; delete it or run `fcnseg bench
--retune` to measure again): see fcnseg.fast.tuning. (A threshold tuned on one CPU, e.g.
Winograd from 256 input channels on AMD Zen 4, is a cliff on another.) Channels_last
throughout; the upsamplers are the model's own (fcnseg.models.upsample: per-class, grouped,
transposed convs when their weights are diagonal, as the bilinear ones are).

Exactness: the same function of the same values, up to float rounding (summation order, and
Winograd's transforms). Per layer in float32 (256 -> 256 channels, He-scaled weights): the
direct conv 2-3e-7 relative, F(2x2) 3.5-4.4e-7, F(4x4) 2.1-3.0e-6 (its transforms' larger
coefficients; with interpolation points 0, +-1, 2, -1/2 chosen for it, where the usual 0, +-1,
+-2 give 7.4-8.4e-6). The whole FCN-8s at 500x500 in float32 (benchmarks/inference.py's
weights and image) vs the plain model: F(4x4) on every 3x3 conv 9.3e-7, F(2x2) on every one
7.2e-7, no Winograd 1.4e-6, fcnseg's own eager model 3.3e-7; same argmax everywhere.
tests/test_fast.py compares with the model's own forward, in float64 to 1e-12.

The reference release's other shapes (all 15 of fcnseg.reference_nets()): each input stream of
a late-fusion net (NYUDv2 colour + HHA) has its own trunk planned and run this way (its own
background and cache entries; the work arenas are shared, the streams run one after the other),
and the model's own head sums the streams' score maps with its stream weights; two heads (SIFT
Flow's "sem" and "geo") read the same trunk features and give the model's dict; the first conv
takes any channel count (colour + depth: 4). CaffeNet (voc-fcn-alexnet): its LRN normalizes
across channels at each position, so it runs (torch's local_response_norm, the model's own
function) on its input's image-dependent core only, in float32 inside a bf16 trunk (torch has
no bf16 CPU kernel for it); its grouped conv2/4/5 run by torch's or oneDNN's grouped conv,
never Winograd or the GEMM. tests/test_fast_release.py checks all 15 against the model: float64
to 1e-10, float32 to 1e-5 relative.

At 500x500 the model's forward performs 181.5 GMAC (the "same" layout: 108.3); FastFCN's trunk
computes 124.6 GMAC of it: as products, 54.7 GMAC with F(4x4) on every 3x3 conv, 72.6 with
F(2x2) on every one (88.9 with F(2x2) from 256 input channels). At 1024 the padding's share,
and the gain from skipping it, is smaller. `bfloat16=True` gives a bf16 trunk (the head stays
float32): not exact, ~5e-3 relative, argmax nearly always the same; see
benchmarks/inference.py. The bf16 trunk never runs Winograd: its transforms and its GEMMs'
outputs each round to bf16, where oneDNN's direct bf16 conv sums in fp32 and rounds once. On
the benchmark's weights (benchmarks/inference.py, AMD Zen 4) bf16 Winograd on conv3_2-conv5_3
gave 99.911% same argmax as fp32, 7.4e-3 max rel. error; without it 99.951%, 5.1e-3.

Where the rest comes from (`python benchmarks/inference.py --bf16-layers`: each conv alone in
bf16, the others fp32): every conv adds about the same, 1.2-2.5e-3 max rel. error and 0.008-
0.025% of pixels changing class; no single layer dominates. Keeping layers in fp32
(`FastFCN(fp32=(...))`) on two weight sets, same argmax as fp32 (inference.py's weights and cat
photo / `fcnseg bench`'s weights and noise input): all bf16 99.951% / 99.376%; conv1_1 in fp32
99.961% / 99.509%; conv5_x + fc6 + fc7 99.954% / 99.582%; the taps' convs conv3_3 + conv4_3
99.950% / 99.186%. The first conv (it reads the image itself) paid off most in these runs, and
with 3 input channels it is memory-bound, so fp32 costs it little. So bf16 keeps the first conv
in fp32 by default
(`fp32=None`; `fp32=()` for all bf16). OpenVINO 2026.4 at its default precision (bf16) on the
same weights, input and machine: 99.946%.
"""

from __future__ import annotations

from .net import FastFCN, bf16_forward
from .plan import core_interval
from .train import FastTrainFCN

__all__ = ["FastFCN", "FastTrainFCN", "bf16_forward", "core_interval"]
