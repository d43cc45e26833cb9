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
    """
    net = MESSAGES["NetParameter"](name=name)
    for layer_name, kind, blobs in layers:
        if form == "layer":
            msg = net.layer.add(name=layer_name, type=kind)
        else:
            msg = net.layers.add(name=layer_name, type=V1_NUMBERS[kind])
        msg.bottom.append("data")
        msg.top.append(layer_name)
        for array in blobs:
            a = np.asarray(array)
            blob = msg.blobs.add()
            if legacy_shape:
                assert a.ndim <= 4, a.shape
                dims = (1,) * (4 - a.ndim) + a.shape
                blob.num, blob.channels, blob.height, blob.width = dims
            else:
                blob.shape.dim.extend(a.shape)
            (blob.double_data if double else blob.data).extend(a.ravel().tolist())
    path = Path(path)
    path.write_bytes(net.SerializeToString())
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
