"""Export an FCN to ONNX or TorchScript, with any batch, height and width, checked before use.

    fcnseg export runs/fcn/best.pt --format onnx -o fcn8s.onnx
    fcnseg export fcn8s_vgg16 --format torchscript -o fcn8s.pt --sizes 224x224,2x197x311

Both formats come from tracing the model (`torch.onnx.export(..., dynamo=False)` with
`dynamic_axes`; `torch.jit.trace`). The crops in FCN.forward are computed from `x.shape`; under
the tracer those sizes are graph values (Shape -> Gather -> Slice), not constants (the skip
fusion crops by slicing, never by a Python `min()` that tracing would freeze). Export then
proves the result dynamic: the written file is loaded back and run at `verify_sizes` (none
of them the trace size, 1 x 160 x 192) and compared with the PyTorch model. Max relative
difference (max |diff| / max |logit|) must stay below 1e-4, else `ExportError` is raised and
nothing is written.

Use the ONNX file with onnxruntime (pip install onnxruntime); inputs are preprocessed as the
model's `preprocessing` says (ImageNet mean/std, RGB, for models built here; Caffe BGR for the
converted reference weights):

    import numpy as np, onnxruntime as ort
    from PIL import Image

    session = ort.InferenceSession("fcn8s.onnx", providers=["CPUExecutionProvider"])
    rgb = np.asarray(Image.open("cat.jpg").convert("RGB"), dtype=np.float32) / 255
    x = ((rgb - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).astype(np.float32)
    x = x.transpose(2, 0, 1)[None]                      # (1, 3, H, W), any H, W
    logits = session.run(["logits"], {"image": x})[0]   # (1, C, H, W)
    labels = logits.argmax(1)[0]                        # (H, W) class indices
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .safety import write_bytes

__all__ = [
    "DEFAULT_SIZES",
    "REL_TOLERANCE",
    "ExportError",
    "export_onnx",
    "export_torchscript",
    "format_report",
    "parse_sizes",
]

DEFAULT_SIZES: tuple[tuple[int, int, int], ...] = ((1, 224, 224), (2, 197, 311), (1, 500, 375))
TRACE_SIZE = (1, 160, 192)  # differs from every verify size: the check proves shapes dynamic
REL_TOLERANCE = 1e-4
_AXES = {0: "batch", 2: "height", 3: "width"}


class ExportError(RuntimeError):
    """An exported model that disagrees with the PyTorch model; nothing was written."""


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


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without TracerWarnings and torch.jit's deprecation notices (tracing is what we want)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", r".*(torch\.jit|TorchScript)", DeprecationWarning)
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        yield


@contextlib.contextmanager
def _tracing() -> Iterator[None]:
    """Trace FCN.forward quietly."""
    with _quiet():
        yield


def _cpu_eval(model: nn.Module) -> nn.Module:
    from .predict import check_photo_model

    check_photo_model(model, "export")
    p = next(model.parameters(), None)
    if p is not None and p.device.type != "cpu":
        model = copy.deepcopy(model).cpu()
    return model.eval()


def _example(model: nn.Module, size: tuple[int, int, int], seed: int) -> torch.Tensor:
    """A batch of random photos, preprocessed as the model expects."""
    n, h, w = size
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)
    pre = model.preprocessing
    return pre.batch(images) if pre is not None else images.float() / 255


def _verify(
    model: nn.Module,
    run: Callable[[np.ndarray], np.ndarray],
    sizes: Sequence[tuple[int, int, int]],
    label: str,
) -> list[dict]:
    """Compare `run` (the exported model) with `model` at each size; raise if any is off."""
    rows, bad = [], []
    for k, size in enumerate(sizes):
        x = _example(model, size, seed=k)
        with torch.inference_mode():
            ref = model(x).numpy()
        got = np.asarray(run(x.numpy()))
        n, h, w = size
        row = {"size": f"{n}x3x{h}x{w}", "shape_ok": got.shape == ref.shape}
        if row["shape_ok"]:
            scale = float(np.abs(ref).max())
            row["max_abs"] = float(np.abs(got.astype(np.float64) - ref).max())
            row["max_rel"] = row["max_abs"] / scale if scale > 0 else row["max_abs"]
            row["max_logit"] = scale
            row["ok"] = bool(np.isfinite(row["max_rel"]) and row["max_rel"] < REL_TOLERANCE)
            row["shape_only"] = scale == 0
            if scale == 0:
                warnings.warn(
                    f"{label}: the model's logits are all zero at {row['size']} (untrained score "
                    f"layers?), so the check compares shapes only",
                    stacklevel=3,
                )
        else:
            row.update(max_abs=float("nan"), max_rel=float("nan"), ok=False)
            row["error"] = f"output {got.shape}, expected {ref.shape}"
        rows.append(row)
        if not row["ok"]:
            bad.append(row)
    if bad:
        detail = "; ".join(
            f"{r['size']}: " + (r.get("error") or f"max rel diff {r['max_rel']:.3g}") for r in bad
        )
        raise ExportError(
            f"{label} disagrees with the PyTorch model (tolerance {REL_TOLERANCE:g} relative to "
            f"max |logit|): {detail}. Nothing was written. Report this with the model name and "
            f"torch version ({torch.__version__})\n{format_report(rows)}"
        )
    return rows


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


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = 17,
    verify_sizes: Sequence[tuple[int, int, int]] = DEFAULT_SIZES,
) -> list[dict]:
    """Write `model` as ONNX (input "image" (N, 3, H, W), output "logits" (N, C, H, W), all of
    N, H, W dynamic) to `path`, after checking it with onnxruntime at `verify_sizes` ((N, H, W)
    each). Returns one row per size: size, max_abs, max_rel, max_logit, ok."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError(f"ONNX export needs onnx and onnxruntime: pip install 'fcnseg[export]' "
                          f"({e})") from None  # fmt: skip
    model = _cpu_eval(model)
    path = Path(path)
    buf = io.BytesIO()  # built and checked in memory: a failed export leaves no file
    with _tracing(), torch.no_grad(), _one_line_errors("ONNX", model, opset):
        torch.onnx.export(
            model,
            (_example(model, TRACE_SIZE, seed=99),),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": _AXES, "logits": _AXES},
            do_constant_folding=True,
        )
    data = buf.getvalue()
    graph = onnx.load_from_string(data).graph
    for v in (graph.input[0], graph.output[0]):
        dims = v.type.tensor_type.shape.dim
        fixed = [i for i in _AXES if not dims[i].dim_param]
        if fixed:
            raise ExportError(f"ONNX {v.name} has fixed axes {fixed}: expected dynamic")
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    rows = _verify(model, lambda x: session.run(None, {"image": x})[0], verify_sizes,
                   f"ONNX export of {getattr(model, 'name', 'model')}")  # fmt: skip
    write_bytes(path, data, what="ONNX model")
    return rows


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    verify_sizes: Sequence[tuple[int, int, int]] = DEFAULT_SIZES,
) -> list[dict]:
    """Write `model` traced to TorchScript (`torch.jit.load(path)` runs it at any N, H, W) after
    checking the saved file at `verify_sizes`; returns rows as `export_onnx`."""
    model = _cpu_eval(model)
    path = Path(path)
    with _tracing(), torch.no_grad():
        traced = torch.jit.trace(model, _example(model, TRACE_SIZE, seed=99), check_trace=False)
    buf = io.BytesIO()  # saved to memory: torch.jit.save to a full disk aborts the process
    with _quiet():
        torch.jit.save(traced, buf)
        data = buf.getvalue()
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return loaded(torch.from_numpy(x)).numpy()

    rows = _verify(model, run, verify_sizes,
                   f"TorchScript export of {getattr(model, 'name', 'model')}")  # fmt: skip
    write_bytes(path, data, what="TorchScript model")
    return rows


def format_report(rows: Sequence[dict]) -> str:
    """The verification rows as a table."""
    lines = [f"{'input':>16s}  {'max |diff|':>10s}  {'max rel':>9s}  {'max |logit|':>11s}  ok"]
    for r in rows:
        lines.append(
            f"{r['size']:>16s}  {r['max_abs']:10.3g}  {r['max_rel']:9.3g}  "
            f"{r.get('max_logit', float('nan')):11.4g}  "
            + (
                "NO"
                if not r["ok"]
                else "shape only (all-zero logits)"
                if r.get("shape_only")
                else "yes"
            )
        )
    return "\n".join(lines)
