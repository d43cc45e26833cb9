"""Export any FCN to ONNX or TorchScript, with any batch, height and width, checked before use.

    fcnseg export runs/fcn/best.pt --format onnx -o fcn8s.onnx
    fcnseg export voc-fcn8s --format torchscript -o fcn8s.pt --sizes 224x224,2x197x311
    fcnseg export nyud-fcn32s-color-hha.caffemodel --net nyud-fcn32s-color-hha

Inputs and outputs are named (N, H and W dynamic on every one of them):

    net                                   inputs                          outputs
    one photo (VOC, Context, fcnseg's)    image (N, 3, H, W)              logits (N, C, H, W)
    nyud-fcn32s-color, nyud-fcn32s-hha    image (N, 3, H, W)              logits (N, 40, H, W)
    nyud-fcn32s-color-d (early fusion)    image (N, 4, H, W): channels    logits (N, 40, H, W)
                                          0-2 the colour image (BGR minus
                                          the NYUD mean), 3 log(depth mm)
                                          - 7.844
    nyud-fcn32s-color-hha (late fusion)   color, hha (N, 3, H, W) each    logits (N, 40, H, W)
    siftflow-fcn32s/16s/8s                image (N, 3, H, W)              sem (N, 33, H, W),
                                                                          geo (N, 3, H, W)

What each input needs (channel order, scale, mean, std; the log-depth mean) and each output's
class names are written into the file: the ONNX model's metadata_props (key "fcnseg", JSON; and
"fcnseg.<input>", one readable line each) and the TorchScript archive's extra file
"fcnseg.json" (`torch.jit.load(path, _extra_files={"fcnseg.json": ""})`). `describe(model)`
gives the same dict, `format_io` the lines the CLI prints.

Both formats come from tracing the model (`torch.onnx.export(..., dynamo=False)` with
`dynamic_axes`; `torch.jit.trace`); a net that takes a dict (late fusion) or returns one (two
heads) is traced through a small wrapper with positional inputs and a tuple of outputs, in the
order of the table. The crops in FCN.forward are computed from `x.shape`; under the tracer
those sizes are graph values (Shape -> Gather -> Slice), not constants (the skip fusion crops
by slicing, never by a Python `min()` that tracing would freeze). Export then proves the result
dynamic: the written file is loaded back and run at `verify_sizes` (none of them the trace
size, 1 x 160 x 192) and every output compared with the PyTorch model's. Max relative
difference (max |diff| / max |logit|, per output) must stay below 1e-4, else `ExportError` is
raised and nothing is written.

`with_preprocessing=True` (one-input photo nets): the graph takes uint8 RGB (N, H, W, 3), as
`np.asarray(Image.open(f).convert("RGB"))[None]` gives it, and does the channel flip, scale,
mean and std inside; it is checked against the model fed by fcnseg's own preprocessing.

Use the ONNX file with onnxruntime (pip install onnxruntime). For a release net (voc-*,
pascalcontext-*, siftflow-*: Caffe's BGR, 0-255, minus the dataset's mean):

    import numpy as np, onnxruntime as ort
    from PIL import Image

    session = ort.InferenceSession("voc-fcn8s.onnx", providers=["CPUExecutionProvider"])
    rgb = np.asarray(Image.open("cat.jpg").convert("RGB"), dtype=np.float32)
    x = rgb[..., ::-1] - [104.00699, 116.66877, 122.67892]   # BGR minus the VOC mean
    x = x.transpose(2, 0, 1)[None].astype(np.float32)         # (1, 3, H, W), any H, W
    logits = session.run(["logits"], {"image": x})[0]         # (1, 21, H, W)
    labels = logits.argmax(1)[0]                              # (H, W) class indices

For any exported net, read what it needs from the file (this is right for every net above;
`sources` holds what the net's inputs are made of, by the parts' "source" names):

    import json
    meta = json.loads(session.get_modelmeta().custom_metadata_map["fcnseg"])

    def prepare(part, a):  # uint8 (H, W, 3) image or uint16 depth in mm (H, W) -> (C, H, W)
        if part["kind"] == "log_depth":
            d = a.astype(np.float32)
            return np.where(d > 0, np.log(np.maximum(d, 1e-12)) - part["mean"], 0)[None]
        x = a.astype(np.float32)[..., ::-1 if part["channel_order"] == "BGR" else 1]
        return ((x * part["scale"] - part["mean"]) / part["std"]).transpose(2, 0, 1)

    sources = {"image": np.asarray(Image.open("cat.jpg").convert("RGB"))}  # or color, hha, depth
    feed = {i["name"]: np.concatenate([prepare(p, sources[p["source"]]) for p in i["parts"]])
            [None].astype(np.float32) for i in meta["inputs"]}
    outputs = dict(zip([o["name"] for o in meta["outputs"]], session.run(None, feed)))
    names = meta["outputs"][0]["class_names"]             # None where unknown
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .export_io import ExportError, describe, format_io, input_parts
from .safety import write_bytes
from .weights import LogDepth, Preprocessing

__all__ = [
    "DEFAULT_SIZES",
    "REL_TOLERANCE",
    "ExportError",
    "describe",
    "export_onnx",
    "export_torchscript",
    "format_io",
    "format_report",
    "parse_sizes",
    "read_torchscript_metadata",
]

DEFAULT_SIZES: tuple[tuple[int, int, int], ...] = ((1, 224, 224), (2, 197, 311), (1, 500, 375))
TRACE_SIZE = (1, 160, 192)  # differs from every verify size: the check proves shapes dynamic
REL_TOLERANCE = 1e-4
METADATA_KEY = "fcnseg"  # ONNX metadata_props key / TorchScript extra file "fcnseg.json"
_NCHW = {0: "batch", 2: "height", 3: "width"}
_NHWC = {0: "batch", 1: "height", 2: "width"}


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    """'224x224,2x197x311' -> [(1, 224, 224), (2, 197, 311)]: HxW or NxHxW, comma separated."""
    sizes = []
    for part in text.split(","):
        try:
            dims = [int(v) for v in part.strip().lower().split("x")]
        except ValueError:
            dims = []
        if len(dims) not in (2, 3) or min(dims) < 1:
            raise ValueError(
                f"size '{part}' in '{text}': write HxW or NxHxW with positive numbers, "
                f"e.g. 224x224,2x197x311"
            )
        sizes.append(tuple(dims) if len(dims) == 3 else (1, *dims))
    return sizes


# ---------------------------------------------------------------- the traced module and its data


class _Positional(nn.Module):
    """The model with positional inputs (streams in order) and a tuple of outputs (heads in
    order), optionally behind uint8 RGB (N, H, W, 3) -> the model's preprocessing."""

    def __init__(self, model: nn.Module, pre: Preprocessing | None = None):
        super().__init__()
        self.model = model
        self.streams = getattr(model, "stream_names", None)
        self.heads = getattr(model, "head_names", None)
        self.pre = pre
        if pre is not None:
            flip = [2, 1, 0] if pre.channel_order == "BGR" else [0, 1, 2]
            self.register_buffer("order", torch.tensor(flip), persistent=False)
            self.register_buffer("mean", torch.tensor(pre.mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(pre.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, *xs: torch.Tensor):
        if self.pre is not None:  # uint8 (N, H, W, 3) RGB -> (N, 3, H, W) as the weights expect
            x = xs[0].permute(0, 3, 1, 2).float().index_select(1, self.order)
            xs = ((x * self.pre.scale - self.mean) / self.std,)
        y = self.model(dict(zip(self.streams, xs, strict=True)) if self.streams else xs[0])
        return tuple(y[k] for k in self.heads) if self.heads else y


def _cpu_eval(model: nn.Module) -> nn.Module:
    p = next(model.parameters(), None)
    if p is not None and p.device.type != "cpu":
        model = copy.deepcopy(model).cpu()
    return model.eval()


def _photo_preprocessing(model: nn.Module) -> Preprocessing:
    """The one Preprocessing of a one-input photo net, for --with-preprocessing."""
    (_, parts), *rest = input_parts(model)
    pre = parts[0][1]
    if rest or len(parts) > 1 or not isinstance(pre, Preprocessing) or parts[0][2] != 3:
        what = ", ".join(f"{n} ({'+'.join(p[0] for p in ps)})" for n, ps in input_parts(model))
        raise ValueError(
            f"--with-preprocessing needs a net that takes one 3-channel image with a known "
            f"preprocessing; {getattr(model, 'name', 'this model')} takes {what}: export it "
            f"without --with-preprocessing and prepare its inputs as the file's metadata says"
        )
    return pre


def _examples(model: nn.Module, size: tuple[int, int, int], seed: int, raw: bool) -> tuple:
    """Random inputs at (N, H, W): photos (uint8 RGB), depth maps (uint16 mm, some holes);
    prepared as the model expects, or raw uint8 (N, H, W, 3) for an in-graph preprocessing."""
    n, h, w = size
    g = torch.Generator().manual_seed(seed)
    if raw:
        return (torch.randint(0, 256, (n, h, w, 3), generator=g, dtype=torch.uint8),)
    xs = []
    for _, parts in input_parts(model):
        chans = []
        for _, pre, c in parts:
            if isinstance(pre, LogDepth):
                d = torch.randint(400, 10_000, (n, c, h, w), generator=g)
                d[torch.rand(d.shape, generator=g) < 0.02] = 0  # holes
                chans.append(pre.batch(d))
            else:
                rgb = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
                chans.append(pre.batch(rgb) if pre is not None else rgb.float() / 255)
        xs.append(torch.cat(chans, 1) if len(chans) > 1 else chans[0])
    return tuple(xs)


def _reference(model: nn.Module, pre: Preprocessing | None) -> Callable[..., tuple]:
    """The PyTorch model on the exported graph's inputs, fed by fcnseg's own preprocessing."""
    plain = _Positional(model)

    def ref(*xs: torch.Tensor) -> tuple:
        if pre is not None:
            xs = (pre.batch(xs[0].permute(0, 3, 1, 2)),)
        with torch.inference_mode():
            y = plain(*xs)
        return tuple(t.numpy() for t in (y if isinstance(y, tuple) else (y,)))

    return ref


def _label(xs: Sequence[torch.Tensor], raw: bool) -> str:
    """'1x3x224x224', '1x3+3x64x64' (two inputs), '1x64x64x3' (uint8 NHWC)."""
    if raw:
        return "x".join(map(str, xs[0].shape))
    n, _, h, w = xs[0].shape
    return f"{n}x{'+'.join(str(x.shape[1]) for x in xs)}x{h}x{w}"


def _verify(
    reference: Callable[..., tuple],
    run: Callable[[list[np.ndarray]], Sequence[np.ndarray]],
    examples: Callable[[tuple[int, int, int], int], tuple],
    outputs: Sequence[str],
    sizes: Sequence[tuple[int, int, int]],
    label: str,
    raw: bool = False,
) -> list[dict]:
    """Compare `run` (the exported model) with `reference` at each size, every output against
    its own max |logit|; raise if any is off. One row per size, the worst output's figures."""
    rows, bad = [], []
    for k, size in enumerate(sizes):
        xs = examples(size, k)
        refs = reference(*xs)
        gots = [np.asarray(g) for g in run([x.numpy() for x in xs])]
        row: dict = {"size": _label(xs, raw), "outputs": {}, "ok": True}
        if len(gots) != len(refs):
            row.update(max_abs=float("nan"), max_rel=float("nan"), ok=False)
            row["error"] = f"{len(gots)} outputs, expected {len(refs)}"
        for name, got, ref in zip(outputs, gots, refs, strict=False):
            out = {"shape_ok": got.shape == ref.shape}
            if out["shape_ok"]:
                scale = float(np.abs(ref).max())
                out["max_abs"] = float(np.abs(got.astype(np.float64) - ref).max())
                out["max_rel"] = out["max_abs"] / scale if scale > 0 else out["max_abs"]
                out["max_logit"] = scale
                out["ok"] = bool(np.isfinite(out["max_rel"]) and out["max_rel"] < REL_TOLERANCE)
                out["shape_only"] = scale == 0
                if scale == 0:
                    warnings.warn(
                        f"{label}: the model's {name} are all zero at {row['size']} (untrained "
                        f"score layers?), so the check compares shapes only",
                        stacklevel=3,
                    )
            else:
                out.update(max_abs=float("nan"), max_rel=float("nan"), ok=False)
                out["error"] = f"output {name} {got.shape}, expected {ref.shape}"
            row["outputs"][name] = out
        if row["outputs"] and row["ok"]:
            worst = max(
                row["outputs"].items(),
                key=lambda kv: (not kv[1]["ok"], np.nan_to_num(kv[1]["max_rel"], nan=1e9)),
            )
            row.update({k: v for k, v in worst[1].items() if k != "shape_ok"})  # fmt: skip
            row["shape_only"] = all(o.get("shape_only") for o in row["outputs"].values())
            if len(outputs) > 1 and not row["ok"]:
                row["worst"] = worst[0]
        rows.append(row)
        if not row["ok"]:
            bad.append(row)
    if bad:
        detail = "; ".join(
            f"{r['size']}: " + (r.get("error") or f"max rel diff {r['max_rel']:.3g}")
            + (f" (output {r['worst']})" if r.get("worst") and not r.get("error") else "")
            for r in bad
        )  # fmt: skip
        raise ExportError(
            f"{label} disagrees with the PyTorch model (tolerance {REL_TOLERANCE:g} relative to "
            f"max |logit|): {detail}. Nothing was written. Report this with the model name and "
            f"torch version ({torch.__version__})\n{format_report(rows)}"
        )
    return rows


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without TracerWarnings and torch.jit's deprecation notices (tracing is what we want)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", r".*(torch\.jit|TorchScript)", DeprecationWarning)
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        yield


@contextlib.contextmanager
def _one_line_errors(fmt: str, model: nn.Module, opset: int | None = None) -> Iterator[None]:
    """An exporter's failure as one line (the TorchScript-based ONNX exporter appends the whole
    IR graph to its messages): what failed, and what to do."""
    try:
        yield
    except (RuntimeError, ValueError, TypeError) as e:
        dump = ("Torch IR", "graph(", " ", "%")
        lines = [ln for ln in str(e).splitlines() if ln.strip() and not ln.startswith(dump)]
        first = lines[0] if lines else type(e).__name__
        raise ExportError(
            f"{fmt} export of {getattr(model, 'name', 'the model')} failed"
            f"{f' at opset {opset}' if opset else ''}: {first[:300]}. Nothing was written; "
            f"try another --opset or the other --format, and report it with the model name"
        ) from None


def _prepared(model: nn.Module, with_preprocessing: bool):
    """(the module to trace, the reference, an examples function, the description)."""
    model = _cpu_eval(model)
    pre = _photo_preprocessing(model) if with_preprocessing else None
    spec = describe(model, with_preprocessing=with_preprocessing)
    plain = not (pre or getattr(model, "stream_names", None) or getattr(model, "head_names", None))
    traced = model if plain else _Positional(model, pre).eval()

    def examples(size, seed):
        return _examples(model, size, seed, raw=pre is not None)

    return model, traced, _reference(model, pre), examples, spec


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = 17,
    verify_sizes: Sequence[tuple[int, int, int]] = DEFAULT_SIZES,
    with_preprocessing: bool = False,
) -> list[dict]:
    """Write `model` as ONNX to `path` (inputs and outputs named as the module docstring's table,
    N, H, W dynamic on all; `describe(model)` in its metadata_props), after checking it with
    onnxruntime at `verify_sizes` ((N, H, W) each). Returns one row per size: size, max_abs,
    max_rel, max_logit, ok (the worst output's), and per output the same under "outputs"."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError(f"ONNX export needs onnx and onnxruntime: pip install 'fcnseg[export]' "
                          f"({e})") from None  # fmt: skip
    model, traced, reference, examples, spec = _prepared(model, with_preprocessing)
    names_in = [i["name"] for i in spec["inputs"]]
    names_out = [o["name"] for o in spec["outputs"]]
    axes_in = _NHWC if with_preprocessing else _NCHW
    dynamic = {**{n: axes_in for n in names_in}, **{n: _NCHW for n in names_out}}
    buf = io.BytesIO()  # built and checked in memory: a failed export leaves no file
    with _quiet(), torch.no_grad(), _one_line_errors("ONNX", model, opset):
        torch.onnx.export(
            traced,
            examples(TRACE_SIZE, 99),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=names_in,
            output_names=names_out,
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buf.getvalue())
    graph = proto.graph
    for v in [*graph.input, *graph.output]:
        dims = v.type.tensor_type.shape.dim
        fixed = [i for i in dynamic.get(v.name, {}) if not dims[i].dim_param]
        if fixed:
            raise ExportError(f"ONNX {v.name} has fixed axes {fixed}: expected dynamic")
    _annotate_onnx(proto, spec, onnx)
    data = proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    def run(xs: list[np.ndarray]) -> list[np.ndarray]:
        return session.run(names_out, dict(zip(names_in, xs, strict=True)))

    rows = _verify(reference, run, examples, names_out, verify_sizes,
                   f"ONNX export of {getattr(model, 'name', 'model')}",
                   raw=with_preprocessing)  # fmt: skip
    write_bytes(path, data, what="ONNX model")
    return rows


def _annotate_onnx(proto, spec: dict, onnx) -> None:
    """`spec` into the model: metadata_props (JSON under "fcnseg", a line per input under
    "fcnseg.<name>"), and each graph input's / output's doc_string (shown by Netron)."""
    props = {METADATA_KEY: json.dumps(spec), "fcnseg.net": str(spec["net"])}
    texts = {}
    for i in spec["inputs"]:
        texts[i["name"]] = "; ".join(
            (f"channels {p['channels'][0]}-{p['channels'][1] - 1} {p['source']}: "
             if len(i["parts"]) > 1 else "") + p["text"] for p in i["parts"])  # fmt: skip
        props[f"fcnseg.{i['name']}"] = texts[i["name"]]
    for o in spec["outputs"]:
        texts[o["name"]] = f"scores of {o['classes']} classes" + (
            ": " + ", ".join(o["class_names"]) if o["class_names"] else "")  # fmt: skip
    onnx.helper.set_model_props(proto, props)
    proto.doc_string = f"fcnseg {spec['net']}: see metadata_props '{METADATA_KEY}' (JSON)"
    for v in [*proto.graph.input, *proto.graph.output]:
        v.doc_string = texts.get(v.name, "")


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    verify_sizes: Sequence[tuple[int, int, int]] = DEFAULT_SIZES,
    with_preprocessing: bool = False,
) -> list[dict]:
    """Write `model` traced to TorchScript (`torch.jit.load(path)` runs it at any N, H, W;
    positional inputs and a tuple of outputs in the order of `describe(model)`, one output
    a plain tensor; `describe(model)` in the extra file "fcnseg.json", see
    `read_torchscript_metadata`) after checking the saved file at `verify_sizes`; returns rows
    as `export_onnx`."""
    model, traced, reference, examples, spec = _prepared(model, with_preprocessing)
    with _quiet(), torch.no_grad(), _one_line_errors("TorchScript", model):
        traced = torch.jit.trace(traced, examples(TRACE_SIZE, 99), check_trace=False)
    buf = io.BytesIO()  # saved to memory: torch.jit.save to a full disk aborts the process
    with _quiet():
        torch.jit.save(traced, buf, _extra_files={f"{METADATA_KEY}.json": json.dumps(spec)})
        data = buf.getvalue()
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()

    def run(xs: list[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            y = loaded(*(torch.from_numpy(x) for x in xs))
        return [t.numpy() for t in (y if isinstance(y, tuple) else (y,))]

    rows = _verify(reference, run, examples, [o["name"] for o in spec["outputs"]], verify_sizes,
                   f"TorchScript export of {getattr(model, 'name', 'model')}",
                   raw=with_preprocessing)  # fmt: skip
    write_bytes(path, data, what="TorchScript model")
    return rows


def read_torchscript_metadata(path: str | os.PathLike) -> dict:
    """`describe(...)` as written into an exported TorchScript file ({} if it has none); read
    from the archive without loading the model (as `torch.jit.load(path, _extra_files=...)`)."""
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith(f"/extra/{METADATA_KEY}.json")]
        return json.loads(z.read(names[0])) if names else {}


def format_report(rows: Sequence[dict]) -> str:
    """The verification rows as a table (two outputs: the worst one's figures, and which)."""
    lines = [f"{'input':>16s}  {'max |diff|':>10s}  {'max rel':>9s}  {'max |logit|':>11s}  ok"]
    for r in rows:
        multi = len(r.get("outputs", {})) > 1
        if not r["ok"]:
            ok = "NO" + (f" ({r['worst']})" if r.get("worst") else "")
        elif r.get("shape_only"):
            ok = "shape only (all-zero logits)"
        else:
            ok = "yes" + (f" ({', '.join(r['outputs'])})" if multi else "")
        lines.append(
            f"{r['size']:>16s}  {r['max_abs']:10.3g}  {r['max_rel']:9.3g}  "
            f"{r.get('max_logit', float('nan')):11.4g}  {ok}"
        )
    return "\n".join(lines)
