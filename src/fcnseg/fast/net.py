"""FastFCN: the exact faster CPU forward (see the package docstring), and a plain bf16 path."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..models.fcn import FCN
from ..threads import StepThreads
from . import plan, prepare
from .buffers import carve
from .plan import ONEDNN_PRODUCTS, WINOGRAD, Geom, Step, Stream, pair, parse_trunk

__all__ = ["FastFCN", "bf16_forward"]


class FastFCN(nn.Module):
    """Wraps an FCN (reference or "same" layout; VGG16, AlexNet or CaffeNet trunk) for inference.

    Same forward signature and outputs as ``model`` in eval mode: every input the model takes
    (3 channels, NYUDv2's 4-channel colour + depth, a dict of streams) and every output it gives
    (a tensor, or a dict per head, as SIFT Flow's {"sem", "geo"}). Each stream's trunk is
    planned and run by the fast path; the head (score layers, the streams' weighted sum of
    score maps, skips, upsamplers) is the model's own. CaffeNet's LRN layers run as the model
    runs them (torch's local_response_norm), on the positions that depend on the image; its
    grouped convs by torch's or oneDNN's grouped conv (never Winograd or the GEMM).

    Reads the model's parameters at every call (``bfloat16=True`` snapshots bf16 copies
    instead). Per input shape and stream it keeps the background rims (``max_cached`` shapes,
    least recent dropped; 25 MB at 500x500, 60 MB at 1024x1024, per stream), rebuilt when the
    model's weights change; the work arenas (0.2 GB at 500x500, 0.65 GB at 1024x1024) are
    shared by all shapes and streams (which run one after the other) and sized for the
    largest.
    ``clear_cache()`` frees both. One call at a time: use one FastFCN per thread.

    Kernels: ``winograd``: 3x3 stride-1 convs with at least this many input channels may run
    Winograd F(4x4, 3x3) or F(2x2, 3x3) (None: neither); ``matmul_fc``: fc-like convs (kernel
    >= 5x5 or 1x1 on at most 4096 positions: fc6, fc7) may run as im2col + one GEMM; oneDNN's
    direct conv into a kept buffer and torch's conv are always allowed. ``measure=True``: each
    layer runs the allowed kernel that measured fastest on this machine for its shape and
    dtype (timed at first use, cached: see fcnseg.fast.tuning); ``measure=False``: the first
    allowed of Winograd F(4x4), F(2x2), GEMM, oneDNN in place, torch's conv (so
    ``winograd=1, measure=False`` runs F(4x4) on every 3x3 conv that has a buffer).
    ``choices(h, w)`` tells what was chosen. Planning for one input size: fast/prepare.py.
    ``fp32``: with ``bfloat16=True``, the convs named (e.g. ``("conv3_3", "conv4_3")``) run in
    float32 (their inputs, weights, sums and outputs; Winograd allowed), the others in bf16;
    None (default): the first conv, which reads the image (the largest single bf16 error).
    ``adapt_threads`` (default): on a machine other programs share, each call runs on the
    faster of torch's thread count and the cores they leave free, measured on the calls
    themselves (fcnseg.threads.StepThreads; quiet: torch's threads): a thread that shares its
    core waits out every parallel region of the others.
    """

    def __init__(
        self,
        model: FCN,
        *,
        channels_last: bool = True,
        matmul_fc: bool = True,
        bfloat16: bool = False,
        max_cached: int = 2,
        winograd: int | None = 1,
        measure: bool = True,
        fp32: tuple[str, ...] | None = None,
        adapt_threads: bool = True,
    ):
        super().__init__()
        if not isinstance(model, FCN):
            raise TypeError(f"FastFCN wraps an fcnseg FCN, got {type(model).__name__}")
        if model.pad_to != 1:
            raise ValueError(
                f"FastFCN does not handle models that pad their input (pad_to={model.pad_to}, "
                "as the GoogLeNet FCN does): run the model itself"
            )
        self.model = model
        # per stream: its trunk's steps, and those whose outputs the head reads (the skips'
        # taps, which only the first stream has, and the trunk's last layer)
        self.streams: dict[str, Stream] = {}
        for stream, names in model.streams.items():
            steps = parse_trunk(model, names, lrn=True, groups=True)
            step_of = {m: i for i, s in enumerate(steps) for m in s.modules}
            read = [n for n in names if n in model.taps] + [names[-1]]
            taps = {step_of[n]: n for n in read}
            self.streams[stream] = Stream(stream, steps, taps, model.in_channels[stream])
        self.steps = [s for st in self.streams.values() for s in st.steps]  # every stream's
        self.channels_last = channels_last
        self.matmul_fc = matmul_fc
        self.dtype = torch.bfloat16 if bfloat16 else None
        self.max_cached = max_cached
        self.winograd = winograd
        self.measure = measure
        self.adapt_threads = adapt_threads
        self._threads = StepThreads() if adapt_threads else contextlib.nullcontext
        if fp32 is None:  # the convs that read the image (one per stream): see the package doc
            firsts = [st.steps[0] for st in self.streams.values()]
            fp32 = tuple(s.modules[0] for s in firsts if s.kind == "conv") if bfloat16 else ()
        self.fp32 = tuple(fp32)
        self._dt_of = plan.step_dtypes(self.steps, self.dtype, self.fp32)  # None: the input's
        self._cache: OrderedDict[tuple, dict] = OrderedDict()
        self._arenas: dict[torch.dtype, dict[str, torch.Tensor]] = {}  # shared by all sizes
        self._bf16_weights: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._derived_weights: dict[tuple, tuple[tuple, torch.Tensor]] = {}  # re-laid out
        if bfloat16:  # snapshots, all taken now: later weight updates are not seen
            for s in self.steps:
                if s.kind == "conv" and self._dt_of[s.name] == torch.bfloat16:
                    w, b = s.layer.weight.detach(), s.layer.bias
                    self._bf16_weights[s.name] = (
                        w.to(torch.bfloat16),
                        None if b is None else b.detach().to(torch.bfloat16),
                    )

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

    @property
    def in_channels(self) -> dict[str, int]:
        return self.model.in_channels

    @property
    def stream_names(self) -> tuple[str, ...] | None:
        return self.model.stream_names

    @property
    def head_names(self) -> tuple[str, ...] | None:
        return self.model.head_names

    @property
    def reference(self):
        return getattr(self.model, "reference", None)

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
    def _stream(self, name: str | None) -> Stream:
        if name is None:
            return next(iter(self.streams.values()))
        if name not in self.streams:
            raise ValueError(f"no stream {name!r}: this FCN's streams are {list(self.streams)}")
        return self.streams[name]

    def _small_length(self, length: int, axis: int, steps: list[Step]) -> int:
        return plan.small_length(steps, length, axis)

    def trunk_macs(self, height: int, width: int) -> int:
        """Multiply-accumulates the trunk's convs actually perform per image at this size
        (float32 on this machine: Winograd's (m+2)^2 products per m x m output block where it
        runs, 36 per 4x4 block for F(4x4, 3x3); the direct count else)."""
        total = 0
        for st in self.streams.values():
            geoms = plan.geometry(st.steps, height, width)
            kinds = prepare.kinds(self, st, 1, geoms, torch.float32)
            total += self._stream_macs(st, geoms, kinds)
        return total

    @staticmethod
    def _stream_macs(st: Stream, geoms: list[Geom], kinds: list[str]) -> int:
        total = 0
        for s, g, kind in zip(st.steps, geoms, kinds, strict=True):
            if s.kind == "conv":
                (a0, a1), (b0, b1) = g.out_core
                w = s.layer.weight
                if kind in WINOGRAD:  # (m+2)^2 products per m x m output block
                    m = WINOGRAD[kind]
                    th, tw = kernels.winograd_tiles(a1 - a0, b1 - b0, m=m)
                    total += (m + 2) ** 2 * th * tw * w.shape[1] * w.shape[0]
                else:
                    total += (a1 - a0) * (b1 - b0) * w[0].numel() * w.shape[0]
        return total

    def _dt(self, s: Step, dtype: torch.dtype) -> torch.dtype:
        """The dtype step `s` runs in, for an input of `dtype`."""
        return self._dt_of[s.name] or dtype

    def choices(self, height: int, width: int, batch: int = 1, dtype=torch.float32) -> dict:
        """The kernel each conv step runs at this input size: {step name: kind} (every
        stream's steps: their names carry the stream's suffix)."""
        found = {}
        for st in self.streams.values():
            kinds = prepare.kinds(self, st, batch, plan.geometry(st.steps, height, width), dtype)
            found.update({s.name: k for s, k in zip(st.steps, kinds, strict=True)
                          if s.kind == "conv"})  # fmt: skip
        return found

    def _weights(self, s: Step) -> tuple[torch.Tensor, torch.Tensor | None]:
        if s.name in self._bf16_weights:
            return self._bf16_weights[s.name]
        return s.layer.weight, s.layer.bias

    def _fc_weight(self, s: Step, w: torch.Tensor) -> torch.Tensor:
        """(K, out) contiguous copy of a conv weight, for fc6/fc7 as one GEMM."""
        return self._derived(("fc", s.name), w, lambda: w.reshape(w.shape[0], -1).t().contiguous())

    def _conv_weight(self, s: Step, w: torch.Tensor) -> torch.Tensor:
        """The weight in channels_last, so oneDNN does not reorder it on every call."""
        if not self.channels_last:
            return w
        return self._derived(
            ("cl", s.name), w, lambda: w.contiguous(memory_format=torch.channels_last)
        )

    def _winograd_weight(self, s: Step, kind: str = "winograd") -> torch.Tensor:
        """G g G^T of the weight for F(m x m, 3x3) (computed in float64), in its dtype."""
        w, m = s.layer.weight, WINOGRAD[kind]
        return self._derived(
            ("wino", m, s.name), w, lambda: kernels.winograd_weight(w.double(), m=m).to(w.dtype)
        )

    def _winograd_products(self, s: Step, kind: str):
        """winograd_conv's `products` for `kind`: None (MKL's batched GEMM), or oneDNN's, one
        per component."""
        if kind not in ONEDNN_PRODUCTS:
            return None
        return kernels.component_products(self._winograd_weight(s, kind))

    def _winograd(self, s: Step, kind: str, buf, work, arenas, out_hw):
        """The step by Winograd `kind` on its padded input buffer."""
        U, b = self._winograd_weight(s, kind), self._weights(s)[1]
        return kernels.winograd_conv(buf, U, b, work, arenas, out_hw, relu=s.relu,
                                     products=self._winograd_products(s, kind))  # fmt: skip

    def _derived(self, key: tuple, w: torch.Tensor, make) -> torch.Tensor:
        """A copy of `w` in another layout, remade whenever `w` changes."""
        # inference tensors (e.g. the bf16 snapshots made under inference_mode) have no version
        version = (0 if w.is_inference() else w._version, w.data_ptr(), w.dtype)
        cached = self._derived_weights.get(key)
        if cached is None or cached[0] != version:
            cached = (version, make())
            self._derived_weights[key] = cached
        return cached[1]

    def _run_full(self, s: Step, x: torch.Tensor) -> torch.Tensor:
        """The step on a whole map, with the layer's own padding (used for the background)."""
        y = s.layer(x)
        return F.relu(y) if s.relu else y

    # ------------------------------------------------------------------ forward
    def _as_gemm(self, s: Step, out_hw: tuple[int, int]) -> bool:
        """fc6 / fc7 (a 7x7 or 1x1 kernel, stride 1, on a small map) may run as im2col + GEMM."""
        kh, kw = pair(s.layer.kernel_size)
        small = kh * kw >= 25 or kh * kw == 1
        return (
            self.matmul_fc
            and s.layer.stride == (1, 1)
            and s.layer.groups == 1
            and small
            and out_hw[0] * out_hw[1] <= 4096
        )

    def _conv(self, s: Step, x: torch.Tensor, padding, out=None, gemm=False) -> torch.Tensor:
        """The conv and its ReLU: as im2col + GEMM (`gemm`), into `out` (a persistent buffer)
        when one is given, else by torch's conv."""
        w, b = self._weights(s)
        ph, pw = padding
        if gemm:
            if padding != (0, 0):
                x = F.pad(x, (pw, pw, ph, ph))
            wt = None if kernels.available(x) else self._fc_weight(s, w)  # for MKL's GEMM
            y = kernels.conv_as_gemm(x, w, b, relu=s.relu, weight_t=wt)
            return y if self.channels_last else y.contiguous()
        groups = s.layer.groups
        if out is not None:  # stride 1, no padding: the caller pasted the padding in
            return kernels.conv_into(out, x, self._conv_weight(s, w), b, relu=s.relu, groups=groups)
        y = F.conv2d(x, self._conv_weight(s, w), b, s.layer.stride, padding, groups=groups)
        return y.relu_() if s.relu else y

    def _step(self, s: Step, x: torch.Tensor, padding=None, out=None, gemm=False):
        if s.kind == "conv":
            return self._conv(s, x, s.layer.padding if padding is None else padding, out, gemm)
        if s.kind == "lrn":  # across channels, per position: the model's own function
            if x.dtype == torch.bfloat16:  # torch's CPU LRN has no bf16 kernel: fp32, one rounding
                return s.layer(x.float()).to(x.dtype)
            return s.layer(x)
        p = s.layer
        return F.max_pool2d(x, p.kernel_size, p.stride, 0, ceil_mode=p.ceil_mode)

    @torch.no_grad()
    def trunk(self, x: torch.Tensor, stream: str | None = None) -> dict[str, torch.Tensor]:
        """The trunk's tapped features (full maps, as the model computes them) by name: the
        trunk of `stream` (default: the first, the only one of a one-stream net)."""
        st = self._stream(stream)
        n, _, H, W = x.shape
        dtype = x.dtype
        key = (st.name, n, H, W, dtype, x.device)
        state = self._cache.get(key)
        if state is not None and state["versions"] != self._versions():
            state = None  # the weights changed since: the background is stale
        if state is None:
            state = prepare.prepare(self, st, n, H, W, dtype)
            state["versions"] = self._versions()
            self._cache[key] = state
            while len(self._cache) > self.max_cached * len(self.streams):  # shapes x streams
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats: dict[str, torch.Tensor] = {}
        cur = x  # the current map's core (the full map once the core covers it)
        by_dtype = {dt: self._arena(need, dt) for dt, need in state["need"].items()}
        for i, (s, g, inp, kind, work) in enumerate(
            zip(st.steps, state["geoms"], state["inputs"], state["kinds"], state["work"],
                strict=True)
        ):  # fmt: skip
            with torch.profiler.record_function(f"fast/{s.modules[0]}"):  # a profiler's range
                y = self._run(s, g, inp, kind, work, cur, by_dtype[self._dt(s, dtype)], dtype)
            cur = y
            name = st.taps.get(i)
            if name is not None:
                if i in state["taps"]:  # core only: paste it into the background map
                    full = state["taps"][i].clone()
                    (a0, a1), (b0, b1) = g.out_core
                    full[:, :, a0:a1, b0:b1] = y
                    feats[name] = full
                else:  # the caller keeps it: never hand out a persistent buffer
                    feats[name] = y.clone() if kind == "inplace" or kind in WINOGRAD else y
        return feats

    def _run(self, s: Step, g: Geom, inp, kind: str, work, cur, arenas, dtype):
        """One step on the current map's core `cur`: its input rebuilt in the arena when it
        has one (rim + core), then the kernel chosen for it."""
        if inp is None:
            return self._step(s, cur.to(self._dt(s, dtype)), gemm=kind == "gemm")
        buf = inp.fill(arenas["in"], cur, self.channels_last)  # converts as it pastes
        if kind in WINOGRAD:
            (a0, a1), (b0, b1) = g.out_core
            return self._winograd(s, kind, buf, work, arenas, (a1 - a0, b1 - b0))
        if kind == "inplace":
            out = carve(arenas["out"], work, channels_last=True)
            return self._step(s, buf, padding=(0, 0), out=out)
        return self._step(s, buf, padding=(0, 0), gemm=kind == "gemm")

    @torch.no_grad()
    def forward(self, x: torch.Tensor | Mapping[str, torch.Tensor]):
        """As the model's forward: (N, C, H, W) -> (N, classes, H, W); a dict of streams
        {stream: (N, C_s, H, W)} for a several-stream net; a dict per head out of a
        several-head net."""
        m = self.model
        if m.training:
            raise RuntimeError("FastFCN is for inference: call model.eval() first")
        xs = m._inputs(x)  # the model's own checks: stream names, channels, equal sizes
        with self._threads():
            return self._forward(xs)

    def _forward(self, xs: dict[str, torch.Tensor]):
        m = self.model
        H, W = next(iter(xs.values())).shape[-2:]
        feats: dict[str, torch.Tensor] = {}
        tops: dict[str, torch.Tensor] = {}
        for name in self.streams:
            found = {k: v.to(xs[name].dtype) for k, v in self.trunk(xs[name], name).items()}
            tops[name] = found[m.streams[name][-1]]  # fc7's output, 1/32
            feats.update(found)
        top = tops[""] if m.stream_names is None else tops  # streams: summed by the head
        # the upsamplers are ClassUpsample: per class (grouped) under no_grad when diagonal
        with torch.profiler.record_function("fast/head"):
            if m.head_names is None:
                return m.forward_head(feats, top, H, W)
            return {k: m.forward_head(feats, top, H, W, output=k) for k in m.head_names}


def _each(fn, x):
    """fn on a tensor, or on each value of a dict of them (streams, heads)."""
    return {k: fn(v) for k, v in x.items()} if isinstance(x, Mapping) else fn(x)


@torch.no_grad()
def bf16_forward(model: nn.Module, x):
    """Plain bf16 inference: autocast + channels_last (not exact: ~1e-2 relative). `x` and
    the result as the model takes and gives them (a tensor, or a dict of them)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(_each(lambda t: t.contiguous(memory_format=torch.channels_last), x))
    return _each(lambda t: t.float(), y)
