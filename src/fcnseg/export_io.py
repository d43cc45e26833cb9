"""What an exported net takes and gives, as data: each input's channels and how they are
prepared (channel order, scale, mean, std; log-depth), each output's classes and names. Written
into the exported file (`fcnseg.export`) and printed by `fcnseg export`."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .weights import LogDepth, Preprocessing

__all__ = ["ExportError", "Part", "describe", "format_io", "input_parts"]


class ExportError(RuntimeError):
    """An exported model that disagrees with the PyTorch model; nothing was written."""


Part = tuple[str, Preprocessing | LogDepth | None, int]  # (source, how it is prepared, channels)


def input_parts(model: nn.Module) -> list[tuple[str, list[Part]]]:
    """The exported inputs in order: (name, parts); one part per source of its channels."""
    pre = getattr(model, "preprocessing", None)
    chans = getattr(model, "in_channels", 3)
    chans = chans if isinstance(chans, dict) else {"": chans}
    streams = getattr(model, "stream_names", None)
    if streams:  # late fusion: one tensor per stream, each prepared by its own
        return [(s, [(s, pre.get(s) if isinstance(pre, dict) else None, chans[s])])
                for s in streams]  # fmt: skip
    c = chans.get("", next(iter(chans.values())))
    if isinstance(pre, dict):  # early fusion: the sources' channels concatenated, in dict order
        parts = [(k, p, 1 if isinstance(p, LogDepth) else 3) for k, p in pre.items()]
        if sum(p[2] for p in parts) != c:
            raise ExportError(f"{getattr(model, 'name', 'the model')}: preprocessing for "
                              f"{list(pre)} does not make its {c} input channels")  # fmt: skip
        return [("image", parts)]
    reference = getattr(model, "reference", None)
    source = next(iter(reference.inputs)) if reference is not None else "image"  # color, hha
    return [("image", [(source, pre, c)])]


def _outputs(model: nn.Module) -> list[tuple[str, int]]:
    heads = getattr(model, "head_names", None)
    if heads:
        return [(k, model.num_classes[k]) for k in heads]
    return [("logits", model.num_classes)]


def _class_names(model: nn.Module) -> dict[str, list[str] | None]:
    """Each output's class names where known (predict.class_names: the checkpoint's, else the
    release dataset's by the net's name, else VOC's for 21 classes), None where only numbers."""
    from .predict import class_names, head_names

    out = {}
    for (k, c), head in zip(_outputs(model), head_names(model), strict=True):
        names = class_names(model, head)
        out[k] = None if names == [str(i) for i in range(c)] else names
    return out


def _part_spec(source: str, pre, start: int, c: int) -> dict:
    spec: dict = {"source": source, "channels": [start, start + c]}
    if isinstance(pre, LogDepth):
        spec.update(kind="log_depth", mean=pre.mean, unit="mm",
                    formula=f"log(depth) - {pre.mean:g} where depth > 0, else 0")  # fmt: skip
    elif isinstance(pre, Preprocessing):
        spec.update(kind="image", channel_order=pre.channel_order, scale=pre.scale,
                    mean=list(pre.mean), std=list(pre.std),
                    formula="(image[channel_order] * scale - mean) / std")  # fmt: skip
    else:
        spec.update(kind="unknown", formula="the model has no .preprocessing")
    spec["text"] = _part_text(source, pre)
    return spec


def _floats(v: Sequence[float]) -> str:
    return "(" + ", ".join(str(float(x)) for x in v) + ")"


def _part_text(source: str, pre) -> str:
    """'BGR, 0-255, minus (104.00699, 116.66877, 122.67892)' and the like."""
    if isinstance(pre, LogDepth):
        return f"log(depth in mm) - {pre.mean:g}, 0 where depth is 0 (16-bit PNG as NYUDv2)"
    if not isinstance(pre, Preprocessing):
        return "unknown (the model has no .preprocessing)"
    order = "channels as stored" if source == "hha" else pre.channel_order
    scale = {1.0: "0-255", 1 / 255: "0-1"}.get(pre.scale, f"0-255 times {pre.scale:g}")
    text = f"{order}, {scale}, minus {_floats(pre.mean)}"
    return text + (f", divided by {_floats(pre.std)}" if set(pre.std) != {1.0} else "")


def describe(model: nn.Module, *, with_preprocessing: bool = False) -> dict:
    """What the exported file takes and gives (the metadata written into it): the net's name,
    per input its name, shape and per channel range how to prepare it, per output its classes."""
    inputs = []
    for name, parts in input_parts(model):
        specs, start = [], 0
        for source, pre, c in parts:
            specs.append(_part_spec(source, pre, start, c))
            start += c
        entry = {"name": name, "dtype": "float32", "layout": "NCHW",
                 "shape": ["N", start, "H", "W"], "parts": specs}  # fmt: skip
        if with_preprocessing:
            entry.update(dtype="uint8", layout="NHWC", shape=["N", "H", "W", 3],
                         in_graph=specs, parts=[{"source": specs[0]["source"], "kind": "uint8_rgb",
                         "channels": [0, 3], "text": "RGB as read; in the graph: "
                         f"{specs[0]['text']}"}])  # fmt: skip
        inputs.append(entry)
    names = _class_names(model)
    outputs = [{"name": k, "shape": ["N", c, "H", "W"], "classes": c, "class_names": names[k]}
               for k, c in _outputs(model)]  # fmt: skip
    from . import __version__

    return {"net": getattr(model, "name", None), "fcnseg_version": __version__,
            "inputs": inputs, "outputs": outputs}  # fmt: skip


def format_io(spec: dict) -> str:
    """The inputs and outputs of `describe(...)`, one line each (what to feed, what comes out)."""
    lines = ["inputs:"]
    for i in spec["inputs"]:
        shape = "(" + ", ".join(map(str, i["shape"])) + ")"
        head = f"  {i['name']} {shape} {i['dtype']}: "
        if len(i["parts"]) == 1:
            lines.append(head + i["parts"][0]["text"])
            continue
        lines.append(head + "channels concatenated in this order")
        for p in i["parts"]:
            a, b = p["channels"]
            ch = f"channel {a}" if b == a + 1 else f"channels {a}-{b - 1}"
            lines.append(f"    {ch} {p['source']}: {p['text']}")
    lines.append("outputs:")
    for o in spec["outputs"]:
        names = o["class_names"]
        shown = (
            "" if not names else ": " + ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        )
        lines.append(f"  {o['name']} (N, {o['classes']}, H, W) float32 scores of "
                     f"{o['classes']} classes{shown}")  # fmt: skip
    return "\n".join(lines)
