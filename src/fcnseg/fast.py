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

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .models.fcn import FCN

__all__ = ["FastFCN", "bf16_forward", "core_interval"]


def core_interval(
    core: tuple[int, int], length: int, kernel: int, stride: int, padding: int, out_len: int
) -> tuple[int, int]:
    """Output positions [a, b) of a conv/pool whose window touches input positions `core`."""
    a, b = core
    lo = max(0, -(-(a + padding - kernel + 1) // stride))
    hi = min(out_len, (b - 1 + padding) // stride + 1)
    return lo, hi


def _out_len(length: int, kernel: int, stride: int, padding: int, ceil: bool) -> int:
    span = length + 2 * padding - kernel
    n = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (n - 1) * stride >= length + padding:  # PyTorch's rule: last window starts inside
        n -= 1
    return n


@dataclass
class _Step:
    """One conv (with its ReLU fused) or max pool of the trunk."""

    name: str  # the name of the last module it covers (e.g. "relu1_1", "pool1")
    layer: nn.Module
    kind: str  # "conv" | "pool"
    relu: bool = False
    modules: tuple[str, ...] = ()


@dataclass
class _Geom:
    """Per axis: input length and core, output length and core, the input window to read."""

    in_len: tuple[int, int]
    in_core: tuple[tuple[int, int], tuple[int, int]]
    out_len: tuple[int, int]
    out_core: tuple[tuple[int, int], tuple[int, int]]
    window: tuple[tuple[int, int], tuple[int, int]]  # input coords [lo, hi), may pass the edges

    @property
    def direct(self) -> bool:
        """Input and output are all core: run the layer on the whole map, its own padding."""
        whole_in = all(c == (0, n) for c, n in zip(self.in_core, self.in_len, strict=True))
        whole_out = all(c == (0, n) for c, n in zip(self.out_core, self.out_len, strict=True))
        return whole_in and whole_out


def _parse_trunk(model: FCN) -> list[_Step]:
    steps: list[_Step] = []
    for name in model.trunk_names:
        layer = getattr(model, name)
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1 or layer.dilation != (1, 1) or layer.padding_mode != "zeros":
                raise ValueError(f"FastFCN: unsupported conv {name}: {layer}")
            steps.append(_Step(name, layer, "conv", modules=(name,)))
        elif isinstance(layer, nn.MaxPool2d):
            if layer.padding not in (0, (0, 0)) or layer.dilation not in (1, (1, 1)):
                raise ValueError(f"FastFCN: unsupported pool {name}: {layer}")
            steps.append(_Step(name, layer, "pool", modules=(name,)))
        elif isinstance(layer, nn.ReLU) and steps and steps[-1].kind == "conv":
            if steps[-1].relu:
                raise ValueError(f"FastFCN: two ReLUs in a row at {name}")
            steps[-1].relu = True
            steps[-1].modules += (name,)
            steps[-1].name = name
        elif isinstance(layer, nn.Dropout) and steps:  # identity in eval mode
            steps[-1].modules += (name,)
            steps[-1].name = name
        else:
            raise ValueError(
                f"FastFCN handles plain conv/ReLU/pool trunks (VGG16, AlexNet); "
                f"{name} is {type(layer).__name__}"
            )
    return steps


def _carve(arena: torch.Tensor, shape, channels_last: bool) -> torch.Tensor:
    """An (N, C, h, w) tensor over the start of a flat arena, dense in its memory format."""
    n, c, h, w = shape
    block = arena[: n * c * h * w]
    return block.view(n, h, w, c).permute(0, 3, 1, 2) if channels_last else block.view(shape)


class _Background:
    """A background map of the real input size, held as the map of a smaller black input with
    the same edges. Away from the map's edges every background activation is the same number
    (it sees only the black image and biases), so the large map is the small one with its
    constant interior repeated: row p of the large map is row p of the small one inside the
    top zone, row p - d inside the bottom zone (d = the length difference), and a row of the
    interior in between; columns likewise."""

    def __init__(self, small: torch.Tensor, length: tuple[int, int], zones):
        self.small, self.length, self.zones = small, length, zones
        self.shape = (*small.shape[:2], *length)

    def region(self, a0: int, a1: int, b0: int, b1: int) -> torch.Tensor:
        """Rows a0:a1, columns b0:b1 of the large map (inside it)."""
        x = self.small
        for axis, (lo, hi) in ((2, (a0, a1)), (3, (b0, b1))):
            big, small = self.length[axis - 2], x.shape[axis]
            if big == small:
                x = x.narrow(axis, lo, hi - lo)
                continue
            top, bottom = self.zones[axis - 2]
            p = torch.arange(lo, hi)
            idx = torch.where(p < top, p, torch.where(p >= big - bottom, p - (big - small), top))
            x = x.index_select(axis, idx)
        return x


@dataclass
class _Input:
    """A step's input window, rebuilt on each call in the shared input arena: its rim (the
    background and the zero padding around the core, up to four strips kept at batch 1),
    then the core pasted in."""

    shape: tuple[int, int, int, int]  # (N, C, h, w)
    core: tuple[slice, slice]
    strips: list[tuple[slice, slice, torch.Tensor]]

    @classmethod
    def of(cls, x: _Background, origin, shape, rows, cols, dtype: torch.dtype):
        """The rim of the (N, C, h, w) window at `origin` of the background map x: its values
        around the core rows x cols (buffer coordinates), zeros past the map's edges; in
        `dtype`, the one the buffer has."""
        (r0, r1), (c0, c1) = rows, cols
        h, w = shape[-2:]
        regions = [
            (slice(0, r0), slice(0, w)), (slice(r1, h), slice(0, w)),
            (slice(r0, r1), slice(0, c0)), (slice(r0, r1), slice(c1, w)),
        ]  # fmt: skip
        strips = []
        for rs, cs in regions:
            if rs.stop > rs.start and cs.stop > cs.start:
                size = (rs.stop - rs.start, cs.stop - cs.start)
                strip = torch.zeros(1, x.shape[1], *size, dtype=dtype)
                # the part of the strip inside the map, in map coordinates
                a0, a1 = max(origin[0] + rs.start, 0), min(origin[0] + rs.stop, x.shape[2])
                b0, b1 = max(origin[1] + cs.start, 0), min(origin[1] + cs.stop, x.shape[3])
                if a1 > a0 and b1 > b0:
                    ra, ca = a0 - origin[0] - rs.start, b0 - origin[1] - cs.start
                    strip[:, :, ra : ra + a1 - a0, ca : ca + b1 - b0] = x.region(a0, a1, b0, b1)
                strips.append((rs, cs, strip))
        return cls(shape, (slice(r0, r1), slice(c0, c1)), strips)

    def fill(self, arena: torch.Tensor, core: torch.Tensor, channels_last: bool) -> torch.Tensor:
        buf = _carve(arena, self.shape, channels_last)
        for rs, cs, strip in self.strips:
            buf[:, :, rs, cs] = strip
        buf[:, :, self.core[0], self.core[1]] = core
        return buf


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class FastFCN(nn.Module):
    """Wraps an FCN (reference or "same" layout, VGG16 or AlexNet trunk) for inference.

    Same forward signature and outputs as ``model`` in eval mode. Reads the model's parameters
    at every call (``bfloat16=True`` snapshots bf16 copies instead). Per input shape it keeps
    the background rims (``max_cached`` shapes, least recent dropped; 25 MB at 500x500, 60 MB
    at 1024x1024), rebuilt when the model's weights change; the work arenas (0.2 GB at 500x500,
    0.65 GB at 1024x1024) are shared by all shapes and sized for the largest.
    ``clear_cache()`` frees both. One call at a time: use one FastFCN per thread.
    ``winograd``: 3x3 convs with at least this many input channels run Winograd F(2x2, 3x3)
    (None: never); below 256 oneDNN's direct kernels are faster on this CPU.
    """

    def __init__(
        self,
        model: FCN,
        *,
        channels_last: bool = True,
        matmul_fc: bool = True,
        bfloat16: bool = False,
        max_cached: int = 2,
        winograd: int | None = 256,
    ):
        super().__init__()
        if not isinstance(model, FCN):
            raise TypeError(f"FastFCN wraps an fcnseg FCN, got {type(model).__name__}")
        if model.pad_to != 1:
            raise ValueError("FastFCN does not handle models that pad their input (pad_to > 1)")
        self.model = model
        self.steps = _parse_trunk(model)
        self.channels_last = channels_last
        self.matmul_fc = matmul_fc
        self.dtype = torch.bfloat16 if bfloat16 else None
        self.max_cached = max_cached
        self.winograd = winograd
        self._cache: OrderedDict[tuple, dict] = OrderedDict()
        self._arenas: dict[torch.dtype, dict[str, torch.Tensor]] = {}  # shared by all sizes
        self._bf16_weights: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._fc_weights: dict[tuple, tuple[tuple, torch.Tensor]] = {}  # weights, re-laid out
        if bfloat16:
            for s in self.steps:
                if s.kind == "conv":
                    b = s.layer.bias
                    self._bf16_weights[s.name] = (
                        s.layer.weight.detach().to(torch.bfloat16),
                        None if b is None else b.detach().to(torch.bfloat16),
                    )
        # the step whose output carries each name the head reads (taps and the trunk's end)
        self._step_of = {m: i for i, s in enumerate(self.steps) for m in s.modules}
        needed = set(model.taps) | {model.trunk_names[-1]}
        self._tap_steps = {self._step_of[n]: n for n in needed}

    # what fcnseg's predict and evaluate read from a model
    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def preprocessing(self):
        return self.model.preprocessing

    @property
    def class_names(self):
        return getattr(self.model, "class_names", None)

    def clear_cache(self) -> None:
        self._cache.clear()
        self._arenas.clear()

    def _arena(self, need: dict[str, int], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The shared work arenas, grown to at least `need` elements each."""
        have = self._arenas.setdefault(dtype, {})
        for k, v in need.items():
            if k not in have or have[k].numel() < v:
                have[k] = torch.empty(v, dtype=dtype)
        return have

    def _versions(self) -> tuple:
        """In-place updates (optimizer steps, load_state_dict) bump a parameter's version."""
        return tuple(0 if p.is_inference() else p._version for p in self.model.parameters())

    # ------------------------------------------------------------------ planning
    def _geometry(self, H: int, W: int) -> list[_Geom]:
        geoms = []
        length, core = (H, W), ((0, H), (0, W))
        for s in self.steps:
            k, st = _pair(s.layer.kernel_size), _pair(s.layer.stride)
            p = _pair(s.layer.padding)
            ceil = s.kind == "pool" and s.layer.ceil_mode
            out_len = tuple(_out_len(length[a], k[a], st[a], p[a], ceil) for a in (0, 1))
            out_core = tuple(
                core_interval(core[a], length[a], k[a], st[a], p[a], out_len[a]) for a in (0, 1)
            )
            window = []
            for a in (0, 1):
                lo = out_core[a][0] * st[a] - p[a]
                hi = (out_core[a][1] - 1) * st[a] - p[a] + k[a]
                if s.kind == "pool":  # ceil mode: the last window may stop at the map's end
                    hi = min(hi, length[a])
                window.append((lo, hi))
            geoms.append(_Geom(length, core, out_len, out_core, tuple(window)))
            length, core = out_len, out_core
        return geoms

    def _zones(self, length: int, axis: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """Per step along one axis: the edge zones (top, bottom) of its input and its output:
        the positions whose background differs from the map's constant interior because they
        read, directly or through earlier layers, the zero padding or a partial pool window.
        The black input itself equals its padding, so the first step has no zones."""
        zones, zl, zr, uniform_zero = [], 0, 0, True
        for s in self.steps:
            k, st = _pair(s.layer.kernel_size)[axis], _pair(s.layer.stride)[axis]
            p = _pair(s.layer.padding)[axis]
            ceil = s.kind == "pool" and s.layer.ceil_mode
            out = _out_len(length, k, st, p, ceil)
            if uniform_zero and s.kind == "conv":  # zeros everywhere, padding included
                ol, orr = 0, 0
            else:
                ol = min(out, -(-(zl + p) // st))  # windows that start in the top zone
                first = -(-(length - zr + p - k + 1) // st)  # first window reaching the bottom
                orr = out - min(out, max(0, first))
            zones.append(((zl, zr), (ol, orr)))
            zl, zr, length = ol, orr, out
            uniform_zero = uniform_zero and s.kind == "pool"
        return zones

    def _small_length(self, length: int, axis: int, period: int = 32) -> int:
        """The shortest input length, length - k * period, whose background maps are the
        large ones with a shorter interior: at every step the input lengths differ by a multiple
        of the stride (the windows meet the bottom edge the same way) and the zones match and
        leave an interior. `length` itself if there is none."""
        big = self._zones(length, axis)
        big_len = self._lengths(length, axis)
        for cand in range(length % period or period, length, period):
            lens = self._lengths(cand, axis)
            strides = [_pair(s.layer.stride)[axis] for s in self.steps]
            aligned = all(
                (b - c) % st == 0 for b, c, st in zip(big_len, lens, strides, strict=True)
            )
            zones = self._zones(cand, axis)
            outs = [*lens[1:], None]
            room = all(
                zl + zr < L and (Lo is None or ol + orr < Lo)
                for ((zl, zr), (ol, orr)), L, Lo in zip(zones, lens, outs, strict=True)
            )
            if aligned and room and zones == big:
                return cand
        return length

    def _lengths(self, length: int, axis: int) -> list[int]:
        """Each step's input length along one axis."""
        out = []
        for s in self.steps:
            out.append(length)
            k, st = _pair(s.layer.kernel_size)[axis], _pair(s.layer.stride)[axis]
            ceil = s.kind == "pool" and s.layer.ceil_mode
            length = _out_len(length, k, st, _pair(s.layer.padding)[axis], ceil)
        return out

    def trunk_macs(self, height: int, width: int) -> int:
        """Multiply-accumulates the trunk's convs actually perform per image at this size
        (float32 on this machine: Winograd's 16 GEMMs where it runs, the direct count else)."""
        total = 0
        for s, g in zip(self.steps, self._geometry(height, width), strict=True):
            if s.kind == "conv":
                (a0, a1), (b0, b1) = g.out_core
                w = s.layer.weight
                if self._kernel(s, g, torch.float32) == "winograd":
                    th, tw = kernels.winograd_tiles(a1 - a0, b1 - b0)
                    total += 16 * th * tw * w.shape[1] * w.shape[0]
                else:
                    total += (a1 - a0) * (b1 - b0) * w[0].numel() * w.shape[0]
        return total

    def _kernel(self, s: _Step, g: _Geom, dtype: torch.dtype) -> str:
        """How a step runs on its buffer: "winograd", "inplace" (oneDNN into a kept output),
        "plain" (torch's conv / pool / GEMM, a fresh output), or "direct" (no buffer)."""
        if g.direct:
            return "direct"
        (a0, a1), (b0, b1) = g.out_core
        if s.kind != "conv" or s.layer.stride != (1, 1) or self._as_gemm(s, (a1 - a0, b1 - b0)):
            return "plain"
        if (
            self.winograd is not None
            and _pair(s.layer.kernel_size) == (3, 3)
            and s.layer.in_channels >= self.winograd
            and self.channels_last
        ):
            return "winograd"
        probe = torch.empty(0, dtype=self.dtype or dtype)
        return "inplace" if self.channels_last and kernels.available(probe) else "plain"

    @torch.no_grad()
    def _prepare(self, n: int, H: int, W: int, dtype: torch.dtype) -> dict:
        """Background activations of an all-zero input, each step's input rim, and the sizes
        of the arenas its buffers live in.

        A step's input is dead once the step has run, and its output once the next step has
        pasted it, so all inputs share one arena (refilled each call: rim strips + core), the
        kept outputs ("inplace") another, and the Winograd steps three more. Peak memory is
        then a few layers' worth, not the whole net's (at 2048x2048 the net's inputs alone
        are ~5 GB)."""
        geoms = self._geometry(H, W)
        dt = self.dtype or dtype
        kinds = [self._kernel(s, g, dtype) for s, g in zip(self.steps, geoms, strict=True)]
        need = {"in": 0, "out": 0, "a": 0, "b": 0, "y": 0}  # elements each arena must hold
        work: list[object] = []  # per step: the kept output's shape, or the Winograd plan
        shapes: list[tuple | None] = []  # per step: its input buffer's (N, C, h, w)
        c = 3  # the step's input channels
        for s, g, kind in zip(self.steps, geoms, kinds, strict=True):
            (a0, a1), (b0, b1) = g.out_core
            (h0, h1), (w0, w1) = g.window
            size, w = (h1 - h0, w1 - w0), None
            if kind == "winograd":  # the tiles need 2t+2 rows and columns: zeros past them
                th, tw = kernels.winograd_tiles(a1 - a0, b1 - b0)
                size = (2 * th + 2, 2 * tw + 2)
                w = kernels.winograd_plan(n, th, tw, s.layer.in_channels, s.layer.out_channels)
                for k in ("a", "b", "y"):
                    need[k] = max(need[k], w[k])
            elif kind == "inplace":
                w = (n, s.layer.out_channels, a1 - a0, b1 - b0)
                need["out"] = max(need["out"], math.prod(w))
            shape = None if kind == "direct" else (n, c, *size)
            if shape is not None:
                need["in"] = max(need["in"], math.prod(shape))
            work.append(w)
            shapes.append(shape)
            c = s.layer.out_channels if s.kind == "conv" else c

        # background: the trunk on a black image (batch 1), computed on a smaller one with the
        # same edges where that is exact; each step's input window holds it where the window
        # lies inside the map, zeros (padding) outside
        small = [self._small_length(L, a) for a, L in enumerate((H, W))]
        zones = [self._zones(L, a) for a, L in enumerate(small)]
        x = torch.zeros(1, 3, *small, dtype=torch.float32 if self.dtype else dtype)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        inputs: list[_Input | None] = []
        taps: dict[int, torch.Tensor] = {}
        for i, (s, g, shape) in enumerate(zip(self.steps, geoms, shapes, strict=True)):
            if shape is not None:
                bg = _Background(x, g.in_len, [z[i][0] for z in zones])
                (h0, _), (w0, _) = g.window
                (c0, c1), (d0, d1) = g.in_core
                rows, cols = (c0 - h0, c1 - h0), (d0 - w0, d1 - w0)  # the core, buffer coords
                inputs.append(_Input.of(bg, (h0, w0), shape, rows, cols, dt))
            else:
                inputs.append(None)  # the layer runs on the full previous map, its own padding
            x = self._run_full(s, x)
            if i in self._tap_steps and g.out_core != tuple((0, L) for L in g.out_len):
                full = _Background(x, g.out_len, [z[i][1] for z in zones]).region(
                    0, g.out_len[0], 0, g.out_len[1]
                )
                taps[i] = full.expand(n, *full.shape[1:]).to(dt).contiguous(memory_format=fmt)
        return {
            "geoms": geoms, "kinds": kinds, "inputs": inputs, "work": work, "taps": taps,
            "need": need, "background_size": tuple(small),
        }  # fmt: skip

    def _weights(self, s: _Step) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.dtype is not None:
            return self._bf16_weights[s.name]
        return s.layer.weight, s.layer.bias

    def _fc_weight(self, s: _Step, w: torch.Tensor) -> torch.Tensor:
        """(K, out) contiguous copy of a conv weight, for fc6/fc7 as one GEMM."""
        return self._derived(("fc", s.name), w, lambda: w.reshape(w.shape[0], -1).t().contiguous())

    def _conv_weight(self, s: _Step, w: torch.Tensor) -> torch.Tensor:
        """The weight in channels_last, so oneDNN does not reorder it on every call."""
        if not self.channels_last:
            return w
        return self._derived(
            ("cl", s.name), w, lambda: w.contiguous(memory_format=torch.channels_last)
        )

    def _winograd_weight(self, s: _Step) -> torch.Tensor:
        """G g G^T of the float32 weight (in float64), in the dtype the trunk runs in."""
        w = s.layer.weight
        return self._derived(
            ("wino", s.name),
            w,
            lambda: kernels.winograd_weight(w.double()).to(self.dtype or w.dtype),
        )

    def _derived(self, key: tuple, w: torch.Tensor, make) -> torch.Tensor:
        """A copy of `w` in another layout, remade whenever `w` changes."""
        # inference tensors (e.g. the bf16 snapshots made under inference_mode) have no version
        version = (0 if w.is_inference() else w._version, w.data_ptr(), w.dtype)
        cached = self._fc_weights.get(key)
        if cached is None or cached[0] != version:
            cached = (version, make())
            self._fc_weights[key] = cached
        return cached[1]

    def _run_full(self, s: _Step, x: torch.Tensor) -> torch.Tensor:
        """The step on a whole map, with the layer's own padding (used for the background)."""
        y = s.layer(x)
        return F.relu(y) if s.relu else y

    # ------------------------------------------------------------------ forward
    def _as_gemm(self, s: _Step, out_hw: tuple[int, int]) -> bool:
        """fc6 / fc7 (a 7x7 or 1x1 kernel, stride 1, on a small map) run as im2col + one GEMM."""
        kh, kw = _pair(s.layer.kernel_size)
        small = kh * kw >= 25 or kh * kw == 1
        return (
            self.matmul_fc and s.layer.stride == (1, 1) and small and out_hw[0] * out_hw[1] <= 4096
        )

    def _conv(self, s: _Step, x: torch.Tensor, padding, out=None) -> torch.Tensor:
        """The conv and its ReLU; into `out` (a persistent buffer) when one is given."""
        w, b = self._weights(s)
        kh, kw = w.shape[-2:]
        ph, pw = padding
        oh, ow = x.shape[2] + 2 * ph - kh + 1, x.shape[3] + 2 * pw - kw + 1
        if self._as_gemm(s, (oh, ow)):
            if padding != (0, 0):
                x = F.pad(x, (pw, pw, ph, ph))
            wt = None if kernels.available(x) else self._fc_weight(s, w)  # for MKL's GEMM
            y = kernels.conv_as_gemm(x, w, b, relu=s.relu, weight_t=wt)
            return y if self.channels_last else y.contiguous()
        if out is not None:  # stride 1, no padding: the caller pasted the padding in
            return kernels.conv_into(out, x, self._conv_weight(s, w), b, relu=s.relu)
        y = F.conv2d(x, self._conv_weight(s, w), b, s.layer.stride, padding)
        return y.relu_() if s.relu else y

    def _step(self, s: _Step, x: torch.Tensor, padding=None, out=None) -> torch.Tensor:
        if s.kind == "conv":
            return self._conv(s, x, s.layer.padding if padding is None else padding, out)
        p = s.layer
        return F.max_pool2d(x, p.kernel_size, p.stride, 0, ceil_mode=p.ceil_mode)

    @torch.no_grad()
    def trunk(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The trunk's tapped features (full maps, as the model computes them) by name."""
        n, _, H, W = x.shape
        dtype = x.dtype
        key = (n, H, W, dtype, x.device)
        state = self._cache.get(key)
        if state is not None and state["versions"] != self._versions():
            state = None  # the weights changed since: the background is stale
        if state is None:
            state = self._prepare(n, H, W, dtype)
            state["versions"] = self._versions()
            self._cache[key] = state
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        if self.dtype is not None:
            x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats: dict[str, torch.Tensor] = {}
        cur = x  # the current map's core (the full map once the core covers it)
        arenas = self._arena(state["need"], self.dtype or dtype)
        for i, (s, g, inp, kind, work) in enumerate(
            zip(self.steps, state["geoms"], state["inputs"], state["kinds"], state["work"],
                strict=True)
        ):  # fmt: skip
            if inp is None:
                y = self._step(s, cur)
            else:
                buf = inp.fill(arenas["in"], cur, self.channels_last)
                if kind == "winograd":
                    (a0, a1), (b0, b1) = g.out_core
                    U, b = self._winograd_weight(s), self._weights(s)[1]
                    y = kernels.winograd_conv(
                        buf, U, b, work, arenas, (a1 - a0, b1 - b0), relu=s.relu
                    )
                elif kind == "inplace":
                    out = _carve(arenas["out"], work, channels_last=True)
                    y = self._step(s, buf, padding=(0, 0), out=out)
                else:
                    y = self._step(s, buf, padding=(0, 0))
            cur = y
            name = self._tap_steps.get(i)
            if name is not None:
                if i in state["taps"]:  # core only: paste it into the background map
                    full = state["taps"][i].clone()
                    (a0, a1), (b0, b1) = g.out_core
                    full[:, :, a0:a1, b0:b1] = y
                    feats[name] = full
                else:  # the caller keeps it: never hand out a persistent buffer
                    feats[name] = y.clone() if kind in ("winograd", "inplace") else y
        return feats

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if m.training:
            raise RuntimeError("FastFCN is for inference: call model.eval() first")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a float tensor (N, 3, H, W), got shape {tuple(x.shape)}")
        H, W = x.shape[-2:]
        feats = {k: v.to(x.dtype) for k, v in self.trunk(x).items()}
        return m.forward_head(feats, feats[m.trunk_names[-1]], H, W, upsample=_upsample)


def _upsample(layer: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """The transposed conv; per class (grouped) when its weight is diagonal (class c -> c)."""
    w = layer.weight
    c_in, c_out = w.shape[:2]
    if layer.groups == 1 and c_in == c_out and c_in > 1:
        eye = torch.eye(c_in, dtype=torch.bool, device=w.device)[:, :, None, None]
        if not w.masked_fill(eye, 0).any():
            idx = torch.arange(c_in, device=w.device)
            wg = w[idx, idx].unsqueeze(1)  # (C, 1, k, k)
            return F.conv_transpose2d(
                x.contiguous(), wg, layer.bias, layer.stride, layer.padding,
                layer.output_padding, groups=c_in,
            )  # fmt: skip
    return layer(x)


@torch.no_grad()
def bf16_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Plain bf16 inference: autocast + channels_last (not exact: ~1e-2 relative)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x.contiguous(memory_format=torch.channels_last))
    return y.float()
