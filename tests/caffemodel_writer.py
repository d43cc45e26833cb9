"""Write .caffemodel files for tests, as Caffe would: both message forms, both shape forms.

`write_caffemodel(path, layers)` with layers = [(name, type, [arrays])]. It builds the protobuf
messages of fcnseg.weights.caffe.MESSAGES (field numbers of caffe.proto, FCN.md section 11) and
serializes them with protobuf itself, so the file's bytes come from protobuf's encoder, not from
the reader's code. `encode_by_hand` is a second, independent writer of the current form (a few
lines of wire format), to check the descriptors themselves.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from fcnseg.weights.caffe import MESSAGES, V1_TYPES

V1_NUMBERS = {name: number for number, name in V1_TYPES.items()}
BIG = 100_000  # values: above this, a blob's data is appended as raw packed bytes


def write_caffemodel(
    path: Path,
    layers,
    *,
    form: str = "layer",
    legacy_shape: bool = False,
    double: bool = False,
    name: str = "test-net",
) -> Path:
    """layers: [(name, type, [numpy arrays])]. form "layer" (current) or "layers" (V1).

    legacy_shape: num/channels/height/width instead of shape.dim (blobs of up to 4 dims, padded
    with leading 1s as Caffe's legacy form does). double: the values in double_data.
    Messages are serialized by protobuf; a large blob's packed values are appended as raw bytes
    to its serialized BlobProto (protobuf merges fields that way), as `.extend` would be slow.
    """
    v1 = form == "layers"
    out = [MESSAGES["NetParameter"](name=name).SerializeToString()]
    for layer_name, kind, blobs in layers:
        if v1:
            msg = MESSAGES["V1LayerParameter"](name=layer_name, type=V1_NUMBERS[kind])
        else:
            msg = MESSAGES["LayerParameter"](name=layer_name, type=kind)
        msg.bottom.append("data")
        msg.top.append(layer_name)
        body = msg.SerializeToString()
        for array in blobs:
            a = np.asarray(array)
            blob = MESSAGES["BlobProto"]()
            if legacy_shape:
                assert a.ndim <= 4, a.shape
                blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - a.ndim) + a.shape
            else:
                blob.shape.dim.extend(a.shape)
            raw = b""
            if a.size <= BIG:  # protobuf's own encoder
                (blob.double_data if double else blob.data).extend(a.ravel().tolist())
            else:
                raw = _field(8 if double else 5, a.astype("<f8" if double else "<f4").tobytes())
            body += _field(6 if v1 else 7, blob.SerializeToString() + raw)
        out.append(_field(2 if v1 else 100, body))
    path = Path(path)
    path.write_bytes(b"".join(out))
    return path


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # wire type 2: length-delimited
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_by_hand(layers) -> bytes:
    """The current form, written from FCN.md section 11 only: NetParameter.layer = 100,
    LayerParameter name 1 / type 2 / blobs 7, BlobProto shape 7 (dim 1, packed), data 5."""
    net = _field(1, b"by-hand")
    for layer_name, kind, blobs in layers:
        body = _field(1, layer_name.encode()) + _field(2, kind.encode())
        for array in blobs:
            a = np.asarray(array, dtype="<f4")
            shape = _field(1, b"".join(_varint(d) for d in a.shape))
            data = _field(5, struct.pack(f"<{a.size}f", *a.ravel().tolist()))
            body += _field(7, _field(7, shape) + data)
        net += _field(100, body)
    return net
