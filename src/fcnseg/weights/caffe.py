"""Caffe .caffemodel files, read without Caffe (FCN.md section 11).

A .caffemodel is a binary protobuf `NetParameter`: a list of layers, each with a name, a type
and its learnable blobs. The few messages involved are declared here in Python (`MESSAGES`,
built with descriptor_pb2: no protoc, no caffe.proto at install time). Both message forms are
read: the current `layer` (field 100) and the old V1 `layers` (field 2, files of 2014-2015).

Speed and memory: the file is walked with protobuf's wire-format decoder over a memory map,
touching only the few bytes of each header; each blob's packed floats are then read straight
from the file into the tensor that holds them. So a 540 MB file reads in seconds with one copy
of the weights in memory (benchmarks/caffemodel_read.py).
"""

from __future__ import annotations

import math
import mmap
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.internal import decoder, wire_format
from google.protobuf.message import DecodeError

__all__ = [
    "MESSAGES",
    "CaffeLayer",
    "caffe_backbone",
    "caffe_state_dict",
    "read_caffemodel",
    "read_layers",
]

# ------------------------------------------------------------------- the messages (caffe.proto)

_F = descriptor_pb2.FieldDescriptorProto
_SCHEMA = {  # message -> [(field name, number, type, label, message type or None, packed)]
    "BlobShape": [("dim", 1, _F.TYPE_INT64, _F.LABEL_REPEATED, None, True)],
    "BlobProto": [
        ("num", 1, _F.TYPE_INT32, _F.LABEL_OPTIONAL, None, False),
        ("channels", 2, _F.TYPE_INT32, _F.LABEL_OPTIONAL, None, False),
        ("height", 3, _F.TYPE_INT32, _F.LABEL_OPTIONAL, None, False),
        ("width", 4, _F.TYPE_INT32, _F.LABEL_OPTIONAL, None, False),
        ("data", 5, _F.TYPE_FLOAT, _F.LABEL_REPEATED, None, True),
        ("shape", 7, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "BlobShape", False),
        ("double_data", 8, _F.TYPE_DOUBLE, _F.LABEL_REPEATED, None, True),
    ],
    "LayerParameter": [
        ("name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None, False),
        ("type", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None, False),
        ("bottom", 3, _F.TYPE_STRING, _F.LABEL_REPEATED, None, False),
        ("top", 4, _F.TYPE_STRING, _F.LABEL_REPEATED, None, False),
        ("blobs", 7, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "BlobProto", False),
    ],
    "V1LayerParameter": [
        ("bottom", 2, _F.TYPE_STRING, _F.LABEL_REPEATED, None, False),
        ("top", 3, _F.TYPE_STRING, _F.LABEL_REPEATED, None, False),
        ("name", 4, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None, False),
        ("type", 5, _F.TYPE_INT32, _F.LABEL_OPTIONAL, None, False),  # the V1 enum, by number
        ("blobs", 6, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "BlobProto", False),
    ],
    "NetParameter": [
        ("name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None, False),
        ("layers", 2, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "V1LayerParameter", False),
        ("layer", 100, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "LayerParameter", False),
    ],
}
_PACKAGE = "fcnseg.caffe"


def _build_messages() -> dict[str, type]:
    """The message classes of `_SCHEMA`, field numbers as in Caffe's caffe.proto."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="fcnseg_caffe.proto", package=_PACKAGE, syntax="proto2"
    )
    for name, fields in _SCHEMA.items():
        msg = proto.message_type.add(name=name)
        for fname, number, ftype, label, type_name, packed in fields:
            f = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = f".{_PACKAGE}.{type_name}"
            if packed:
                f.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
        for name in _SCHEMA
    }


MESSAGES = _build_messages()  # e.g. MESSAGES["NetParameter"](): also what tests write files with

# V1LayerParameter.LayerType numbers -> the type names of the current form
V1_TYPES = {
    0: "None", 1: "Accuracy", 2: "BNLL", 3: "Concat", 4: "Convolution", 5: "Data",
    6: "Dropout", 7: "EuclideanLoss", 8: "Flatten", 9: "HDF5Data", 10: "HDF5Output",
    11: "Im2col", 12: "ImageData", 13: "InfogainLoss", 14: "InnerProduct", 15: "LRN",
    16: "MultinomialLogisticLoss", 17: "Pooling", 18: "ReLU", 19: "Sigmoid", 20: "Softmax",
    21: "SoftmaxWithLoss", 22: "Split", 23: "TanH", 24: "WindowData", 25: "Eltwise",
    26: "Power", 27: "SigmoidCrossEntropyLoss", 28: "HingeLoss", 29: "MemoryData",
    30: "ArgMax", 31: "Threshold", 32: "DummyData", 33: "Slice", 34: "MVN", 35: "AbsVal",
    36: "Silence", 37: "ContrastiveLoss", 38: "Exp", 39: "Deconvolution",
}  # fmt: skip


@dataclass
class CaffeLayer:
    name: str
    type: str  # "Convolution", "Deconvolution", "InnerProduct", "Scale", ...
    blobs: list[torch.Tensor]  # float32, each with its blob's shape, in file order


# ------------------------------------------------------------------------- the wire walk

_VARINT, _FIXED64, _DELIMITED, _FIXED32 = (
    wire_format.WIRETYPE_VARINT, wire_format.WIRETYPE_FIXED64,
    wire_format.WIRETYPE_LENGTH_DELIMITED, wire_format.WIRETYPE_FIXED32,
)  # fmt: skip


class _Corrupt(Exception):
    def __init__(self, what: str, pos: int, truncated: bool = False):
        super().__init__(what)
        self.pos, self.truncated = pos, truncated


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    try:
        value, new = decoder._DecodeVarint(buf, pos)
    except (IndexError, DecodeError) as e:
        raise _Corrupt("a number runs past the end", pos, truncated=True) from e
    if new > end:
        raise _Corrupt("a number runs past the end of its message", pos, end == len(buf))
    return value, new


def _fields(buf, start: int, end: int, allowed=None):
    """(field number, wire type, value) over one message; value: an int, or (start, end).

    allowed: the message's (field number, wire type) pairs, when anything else means corrupt.
    """
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, wtype = wire_format.UnpackTag(tag)
        if allowed is not None and (number, wtype) not in allowed:
            raise _Corrupt(f"field {number} (wire type {wtype}) is no NetParameter field", pos)
        if number == 0:
            raise _Corrupt("field number 0", pos)
        if wtype == _VARINT:
            value, pos = _varint(buf, pos, end)
        elif wtype == _DELIMITED:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _Corrupt(
                    f"field {number} needs {n} bytes, {end - pos} left", pos, end == len(buf)
                )
            value, pos = (pos, pos + n), pos + n
        elif wtype in (_FIXED32, _FIXED64):
            n = 4 if wtype == _FIXED32 else 8
            value, pos = (pos, pos + n), pos + n
        else:  # groups (3, 4) are not used by caffe.proto; 6, 7 do not exist
            raise _Corrupt(f"wire type {wtype} (field {number})", pos)
        if pos > end:
            raise _Corrupt(f"field {number} runs past the end", pos, end == len(buf))
        yield number, wtype, value


def _signed(v: int) -> int:
    """A varint as the int64 / int32 it encodes (negative numbers take 10 bytes, two's
    complement of 64 bits)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _blob_shape(buf, start: int, end: int, where: str) -> list[int]:
    """BlobShape.dim (field 1: packed or not), decoded here, with the reader's own checks."""
    dims = []
    for number, wtype, value in _fields(buf, start, end):
        if number != 1:
            continue
        if wtype == _VARINT:
            dims.append(_signed(value))
        elif wtype == _DELIMITED:
            pos, stop = value
            while pos < stop:
                d, pos = _varint(buf, pos, stop)
                dims.append(_signed(d))
        else:
            raise _Corrupt(f"{where}: its shape's dim field has wire type {wtype}", start)
    return dims


def _check_dims(dims: list[int], count: int, where: str, start: int) -> None:
    """The declared shape against the values the file holds, before anything is allocated."""
    negative = [d for d in dims if d < 0]
    if negative:
        raise _Corrupt(f"{where}: shape {tuple(dims)} has a negative dimension", start)
    declared = math.prod(dims)  # Python ints: no int64 overflow to wrap around to a match
    if declared != count:
        big = " (more than an int64 holds)" if declared >= 1 << 63 else ""
        raise _Corrupt(f"{where}: shape {tuple(dims)} declares {declared} values{big} but "
                       f"the file holds {count}", start)  # fmt: skip


def _read_blob(buf, f, start: int, end: int, where: str) -> torch.Tensor:
    legacy, dims, spans, dtype = {}, None, [], None
    for number, wtype, value in _fields(buf, start, end):
        if number in (1, 2, 3, 4) and wtype == _VARINT:
            legacy[number] = _signed(value)
        elif number == 7 and wtype == _DELIMITED:
            dims = _blob_shape(buf, *value, where)
        elif number in (5, 8) and wtype in (_DELIMITED, _FIXED32, _FIXED64):
            kind = np.dtype("<f4") if number == 5 else np.dtype("<f8")
            if wtype != _DELIMITED and wtype != (_FIXED32 if number == 5 else _FIXED64):
                raise _Corrupt(f"{where}: data field {number} has wire type {wtype}", start)
            if dtype is not None and dtype != kind:
                raise _Corrupt(f"{where}: holds both float and double data", start)
            dtype = kind
            spans.append(value)
    if dtype is None:
        dtype = np.dtype("<f4")  # an empty blob
    count = sum(b - a for a, b in spans)
    if count % dtype.itemsize:
        raise _Corrupt(f"{where}: {count} data bytes is not a whole number of values", start)
    count //= dtype.itemsize
    if dims is None:
        dims = [legacy.get(i, 0) for i in (1, 2, 3, 4)] if legacy else [count]
    _check_dims(dims, count, where, start)
    # each packed run straight from the file into its place in the result: no other copy
    out = np.empty(count, dtype=dtype)
    raw = out.view(np.uint8)
    done = 0
    for a, b in spans:
        f.seek(a)
        if f.readinto(memoryview(raw[done : done + b - a])) != b - a:
            raise _Corrupt(f"{where}: data ends early", a, truncated=True)
        done += b - a
    if sys.byteorder != "little":
        out = out.byteswap().view(out.dtype.newbyteorder())
    if dtype.itemsize == 8:
        out = out.astype(np.float32)
    return torch.from_numpy(out).reshape(dims)


def _read_layer(buf, f, start: int, end: int, v1: bool, index: int) -> CaffeLayer:
    name_field, type_field, blobs_field = (4, 5, 6) if v1 else (1, 2, 7)
    name, kind, spans = None, "", []
    for number, wtype, value in _fields(buf, start, end):
        if number == name_field and wtype == _DELIMITED:
            name = bytes(buf[value[0] : value[1]]).decode("utf-8", "replace")
        elif number == type_field:
            if v1 and wtype == _VARINT:
                kind = V1_TYPES.get(value, f"V1 type {value}")
            elif not v1 and wtype == _DELIMITED:
                kind = bytes(buf[value[0] : value[1]]).decode("utf-8", "replace")
        elif number == blobs_field and wtype == _DELIMITED:
            spans.append(value)
    name = name if name is not None else f"<layer {index}>"
    where = f"layer '{name}' ({kind or 'no type'})"
    try:
        blobs = [_read_blob(buf, f, a, b, f"{where} blob {i}") for i, (a, b) in enumerate(spans)]
    except _Corrupt as e:  # every message names the layer
        if str(e).startswith(where):
            raise
        raise _Corrupt(f"{where}: {e}", e.pos, e.truncated) from None
    return CaffeLayer(name, kind, blobs)


# NetParameter's (field number, wire type): name, layers (V1), input, input_dim (plain or packed),
# force_backward, state, debug_info, input_shape, layer
_NET_FIELDS = {(1, 2), (2, 2), (3, 2), (4, 0), (4, 2), (5, 0), (6, 2), (7, 0), (8, 2), (100, 2)}
_TEXT_NET = re.compile(rb"^\s*(#|name\s*:|layers?\s*\{|input\s*:|force_backward)", re.M)


def _sniff(path: Path, head: bytes) -> str | None:
    """Why a file is clearly not a .caffemodel, judging from its first bytes (or None)."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return "a PyTorch file (zip / pickle), not a .caffemodel: load it as a .pth"
    text = head.lstrip()[:15].lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head")):
        return "an HTML page (a failed download?), not a .caffemodel"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not a character cut by the 4096-byte window: binary
            return None
    if _TEXT_NET.search(head):
        return (
            "a text net definition (.prototxt: layers, no weights), not a .caffemodel; the "
            "weights are in the binary .caffemodel file published beside it"
        )
    return None


def read_layers(path) -> list[CaffeLayer]:
    """Every layer of a .caffemodel in file order: name, type and blobs (float32 tensors)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such .caffemodel file")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path}: the file is empty, not a .caffemodel; download it again")
    with open(path, "rb") as f:
        problem = _sniff(path, f.read(4096))
        if problem:
            raise ValueError(f"{path}: {problem}")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                layers = []
                for number, _, value in _fields(buf, 0, size, _NET_FIELDS):
                    if number in (2, 100):
                        layers.append(_read_layer(buf, f, *value, number == 2, len(layers)))
            except (DecodeError, OverflowError, RuntimeError, MemoryError) as e:
                raise ValueError(f"{path} is not a .caffemodel, or is corrupt: {e}") from None
            except _Corrupt as e:
                if e.truncated:
                    raise ValueError(
                        f"{path} is truncated ({size} bytes): {e} (byte {e.pos}). Download it "
                        f"again; an interrupted download leaves such a file"
                    ) from None
                raise ValueError(
                    f"{path} is not a .caffemodel (a binary Caffe NetParameter), or is corrupt: "
                    f"{e} at byte {e.pos}"
                ) from None
    _check_unique(path, layers)
    if not layers:
        raise ValueError(
            f"{path} holds no Caffe layers ({size} bytes): not a .caffemodel (a binary "
            f"Caffe NetParameter with weights)"
        )
    return layers


def _check_unique(path: Path, layers: list[CaffeLayer]) -> None:
    """Two layers of one name that both hold weights: which is meant? Caffe's copy by name
    would keep the last silently; every reader here refuses the file instead."""
    seen: dict[str, list[int]] = {}
    for k, layer in enumerate(layers):
        if layer.blobs:
            seen.setdefault(layer.name, []).append(k)
    twice = {name: ks for name, ks in seen.items() if len(ks) > 1}
    if twice:
        shown = "; ".join(f"'{n}' (layers {', '.join(f'#{k}' for k in ks)})"
                          for n, ks in list(twice.items())[:5])  # fmt: skip
        raise ValueError(
            f"{path}: {len(twice)} layer name(s) hold weights more than once: {shown}. A net's "
            f"weights name each layer once; which copy is meant is unknowable, so the file is "
            f"refused (was it concatenated or edited?)"
        )


def read_caffemodel(path) -> dict[str, list[torch.Tensor]]:
    """Layer name -> its blobs in file order (float32 tensors with the blobs' shapes).

    Every layer is listed, those without weights (ReLU, Pooling, ...) with an empty list.
    Blobs keep the shape the file gives: `shape.dim`, or the legacy 4-d (num, channels,
    height, width), e.g. (1, 1, out, in) for an old InnerProduct weight.
    """
    out: dict[str, list[torch.Tensor]] = {}
    for layer in read_layers(path):  # a name holds weights once at most (_check_unique)
        out[layer.name] = out.get(layer.name) or layer.blobs
    return out


def _squeeze_legacy(blob: torch.Tensor, ndim: int) -> torch.Tensor:
    """A legacy 4-d blob (1, 1, out, in) / (1, 1, 1, n) -> its last `ndim` dimensions."""
    while blob.dim() > ndim and blob.shape[0] == 1:
        blob = blob.squeeze(0)
    return blob


def caffe_state_dict(path) -> dict[str, torch.Tensor]:
    """A .caffemodel as a generic state dict in the reference's naming: `<layer>.weight`
    (blob 0) and `<layer>.bias` (blob 1); biases 1-d and InnerProduct weights 2-d (out, in)
    even in the legacy 4-d shape form. Layers with more blobs (BatchNorm) keep the extra ones
    as `<layer>.blob<i>`. Fitting it to a net (fc6 -> 7x7 conv) is the model's job."""
    state = {}
    for layer in read_layers(path):
        for i, blob in enumerate(layer.blobs):
            if i == 1 or (i == 0 and layer.type == "InnerProduct"):
                blob = _squeeze_legacy(blob, 1 if i == 1 else 2)
            state[f"{layer.name}.{('weight', 'bias')[i] if i < 2 else f'blob{i}'}"] = blob
    return state


def caffe_backbone(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], label: str
                   ) -> dict[str, torch.Tensor]:  # fmt: skip
    """A Caffe classifier's `caffe_state_dict` (VGG_ILSVRC_16_layers, ...) -> the tensors of a
    model's state dict `own` that it provides, by layer name: an InnerProduct (out, in) becomes
    the model's conv (out, c, k, k) when in = c*k*k, in the (C, H, W) order the classifier
    flattened (convolutionalization, FCN.md 1). The classifier's last layer (fc8) and any other
    layer the model lacks are left out. Raises naming every layer whose shape does not fit."""
    out, bad = {}, []
    for key, t in state.items():
        if key not in own:
            continue
        want = own[key].shape
        if (
            t.dim() == 2
            and len(want) == 4
            and t.shape[0] == want[0]
            and t.shape[1] == (want[1] * want[2] * want[3])
        ):
            t = t.reshape(want)
        if t.shape != want:
            bad.append(f"{key} {tuple(t.shape)} (net: {tuple(want)})")
        else:
            out[key] = t
    if bad:
        raise ValueError(f"{label}: layers of another shape: {', '.join(bad)}. Is it a "
                         f"classifier of another architecture or width?")  # fmt: skip
    return out
