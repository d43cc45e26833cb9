"""Fuzz the image and mask loaders with mutated real files: every failure must be a clear error.

Seeds are real pictures (skimage's chelsea and astronaut photos saved as baseline/progressive
JPEG, EXIF-rotated JPEG, RGB/RGBA/palette/16-bit PNG, grayscale JPEG) and the real PASCAL VOC
masks shipped with labelme's examples (palette PNGs, also re-saved as colour and 8-bit masks).
Each case flips, overwrites, inserts, deletes or duplicates bytes of one seed, or cuts it short;
half of the PNG cases are instead mutated below the checksums (`mutate_png`: chunk contents such
as IHDR's size and colour type, the decompressed scanlines, dropped or repeated chunks, with
lengths and CRCs made right) so that the decoder, not just the CRC check, is exercised. It
writes the result to a file and reads it with `read_image` and `read_mask(num_classes=21)`.

A case passes when the loader returns uint8 (H, W, 3) / (H, W) with the file's size, or raises
`ImageError` (or another ValueError whose message names the file). Any other exception is an
unhandled one: it is printed with the case number, which replays it alone (`--case N`).

Run: python benchmarks/fuzz_loaders.py --cases 20000 [--seed 0] [--jobs 2]
"""

from __future__ import annotations

import argparse
import io
import itertools
import random
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fcnseg.data.io import ImageError, colorize, read_image, read_mask

__all__ = ["Outcome", "fuzz", "make_seeds", "mutate", "mutate_png", "run_case"]

VOC_MASKS = Path(
    "/usr/share/doc/labelme-examples/examples/semantic_segmentation/data_dataset_voc/"
    "SegmentationClassPNG"
)
# small enough that a case takes milliseconds, large enough for real JPEG/PNG structure
PHOTO_SIZE = (120, 80)
# the configurable pixel limit: a mutated header claiming a huge size must be refused up front
MAX_PIXELS = 1 << 20


def _photos() -> dict[str, np.ndarray]:
    from skimage import data

    out = {}
    for name in ("chelsea", "astronaut"):
        im = Image.fromarray(getattr(data, name)()).convert("RGB")
        out[name] = np.array(im.resize(PHOTO_SIZE, Image.Resampling.BILINEAR))
    return out


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def make_seeds() -> dict[str, bytes]:
    """name (with the extension the file is saved under) -> bytes of a valid real file."""
    seeds: dict[str, bytes] = {}
    for name, rgb in _photos().items():
        im = Image.fromarray(rgb)
        seeds[f"{name}.jpg"] = _encode(im, "JPEG", quality=90)
        seeds[f"{name}_progressive.jpg"] = _encode(im, "JPEG", quality=75, progressive=True)
        seeds[f"{name}_gray.jpg"] = _encode(im.convert("L"), "JPEG")
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
        seeds[f"{name}_exif6.jpg"] = _encode(im, "JPEG", exif=exif.tobytes())
        seeds[f"{name}.png"] = _encode(im, "PNG")
        seeds[f"{name}_palette.png"] = _encode(im.quantize(64), "PNG")
        rgba = im.convert("RGBA")
        rgba.putalpha(Image.fromarray(rgb[..., 0]))
        seeds[f"{name}_rgba.png"] = _encode(rgba, "PNG")
        sixteen = Image.fromarray(np.array(im.convert("L")).astype(np.uint16) * 257)
        seeds[f"{name}_16bit.png"] = _encode(sixteen, "PNG")
    for p in sorted(VOC_MASKS.glob("*.png")):
        seeds[f"voc_{p.name}"] = p.read_bytes()
        labels = read_mask(p)
        seeds[f"voc_{p.stem}_colour.png"] = _encode(Image.fromarray(colorize(labels)), "PNG")
        seeds[f"voc_{p.stem}_gray.png"] = _encode(Image.fromarray(labels), "PNG")
    return seeds


_INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x10, 0x40]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """1-4 random byte-level mutations of `data` (often near the header, where sizes live)."""
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 4))):
        n = len(b)
        if n == 0:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
            continue
        # half of the edits hit the first 64 bytes: signatures, chunk lengths, width/height
        pos = rng.randrange(min(n, 64)) if rng.random() < 0.5 else rng.randrange(n)
        op = rng.choice(("flip", "flip", "byte", "insert", "delete", "dup", "truncate"))
        if op == "flip":
            b[pos] ^= 1 << rng.randrange(8)
        elif op == "byte":
            b[pos] = rng.choice(_INTERESTING) if rng.random() < 0.5 else rng.randrange(256)
        elif op == "insert":
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
        elif op == "delete":
            del b[pos : pos + rng.randint(1, 64)]
        elif op == "dup":
            end = min(n, pos + rng.randint(1, 256))
            b[end:end] = b[pos:end]
        else:
            b = b[:pos]
    return bytes(b)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of each chunk of a valid PNG."""
    chunks, pos = [], len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def _png_bytes(chunks: list[tuple[bytes, bytes]]) -> bytes:
    """A PNG of these chunks with correct lengths and CRCs: only the content is wrong."""
    out = [_PNG_SIGNATURE]
    for kind, body in chunks:
        crc = zlib.crc32(kind + body)
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc))
    return b"".join(out)


def mutate_png(data: bytes, rng: random.Random) -> bytes:
    """Mutate a PNG below its checksums, so the decoder itself (not the CRC check) is tested.

    One of: bytes of one chunk (IHDR: size, bit depth, colour type; PLTE; tRNS; ...); the
    decompressed scanlines (filter types, pixel values) recompressed; a chunk dropped or
    repeated. Lengths and CRCs are then made right.
    """
    chunks = _png_chunks(data)
    op = rng.choice(("chunk", "chunk", "pixels", "pixels", "drop", "repeat"))
    if op == "pixels":
        raw = bytearray(zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT")))
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(raw))
            raw[i] = rng.randrange(256) if rng.random() < 0.7 else rng.choice(_INTERESTING)
        if rng.random() < 0.2:
            raw = raw[: rng.randrange(len(raw))]  # too few scanlines
        first = next(i for i, (k, _) in enumerate(chunks) if k == b"IDAT")
        rest = [c for c in chunks if c[0] != b"IDAT"]
        rest.insert(first, (b"IDAT", zlib.compress(bytes(raw))))
        chunks = rest
    elif op == "chunk":
        i = rng.randrange(len(chunks))
        body = bytearray(chunks[i][1])
        if body:
            for _ in range(rng.randint(1, 3)):
                j = rng.randrange(len(body))
                body[j] = rng.randrange(256) if rng.random() < 0.5 else rng.choice(_INTERESTING)
        if rng.random() < 0.2:
            body = body[: rng.randrange(len(body) + 1)]
        chunks[i] = (chunks[i][0], bytes(body))
    elif op == "drop" and len(chunks) > 1:
        del chunks[rng.randrange(len(chunks))]
    else:
        i = rng.randrange(len(chunks))
        chunks.insert(i, chunks[i])
    return _png_bytes(chunks)


@dataclass
class Outcome:
    case: int
    seed_name: str
    results: dict[str, str] = field(default_factory=dict)  # loader -> ok / ImageError / ...
    unhandled: list[str] = field(default_factory=list)  # formatted tracebacks
    seconds: float = 0.0


def _check(loader: str, path: Path, out: Outcome) -> None:
    try:
        if loader == "image":
            a = read_image(path, max_pixels=MAX_PIXELS)
            ok = a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
        else:
            a = read_mask(path, num_classes=21, max_pixels=MAX_PIXELS)
            ok = a.dtype == np.uint8 and a.ndim == 2
        if not ok or 0 in a.shape:
            raise AssertionError(f"{loader} loader returned {a.dtype} {a.shape} for {path}")
        out.results[loader] = "ok"
    except ImageError as e:
        named = path.name in str(e)
        out.results[loader] = "ImageError" if named else "ImageError without file name"
        if not named:
            out.unhandled.append(f"{loader}: ImageError does not name the file: {e}")
    except ValueError as e:
        if path.name in str(e):
            out.results[loader] = type(e).__name__
        else:
            out.results[loader] = f"unhandled {type(e).__name__}"
            out.unhandled.append(f"{loader}: {traceback.format_exc()}")
    except Exception as e:  # anything else is a bug in fcnseg.data.io
        out.results[loader] = f"unhandled {type(e).__name__}"
        out.unhandled.append(f"{loader}: {traceback.format_exc()}")


def run_case(case: int, seeds: dict[str, bytes], folder: Path, seed: int = 0) -> Outcome:
    """Mutate one seed (chosen by `seed` and `case` alone) and read it with both loaders."""
    rng = random.Random(seed * 1_000_003 + case)
    name = rng.choice(sorted(seeds))
    path = folder / f"case{case}_{name}"
    data = seeds[name]
    if data.startswith(_PNG_SIGNATURE) and rng.random() < 0.5:
        data = mutate_png(data, rng)
        if rng.random() < 0.3:
            data = mutate(data, rng)
    else:
        data = mutate(data, rng)
    path.write_bytes(data)
    out = Outcome(case, name)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns of corrupt EXIF: noise, not failures
            for loader in ("image", "mask"):
                _check(loader, path, out)
    finally:
        path.unlink(missing_ok=True)
    out.seconds = time.perf_counter() - t0
    return out


def fuzz(cases: range, seed: int = 0, seeds: dict[str, bytes] | None = None) -> list[Outcome]:
    seeds = seeds if seeds is not None else make_seeds()
    with tempfile.TemporaryDirectory(prefix="fcnseg-fuzz-") as tmp:
        return [run_case(i, seeds, Path(tmp), seed) for i in cases]


def _chunk(args: tuple[int, int, int]) -> list[Outcome]:
    start, stop, seed = args
    return fuzz(range(start, stop), seed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--case", type=int, help="replay this one case and show its traceback")
    args = parser.parse_args()
    if args.case is not None:
        out = fuzz(range(args.case, args.case + 1), args.seed)[0]
        print(out.seed_name, out.results, *out.unhandled, sep="\n")
        return 1 if out.unhandled else 0

    t0 = time.perf_counter()
    bounds = np.linspace(0, args.cases, max(1, args.jobs) * 4 + 1).astype(int)
    chunks = [(int(a), int(b), args.seed) for a, b in itertools.pairwise(bounds)]
    if args.jobs > 1:
        from multiprocessing import Pool

        with Pool(args.jobs) as pool:
            outcomes = [o for part in pool.map(_chunk, chunks) for o in part]
    else:
        outcomes = [o for c in chunks for o in _chunk(c)]
    seconds = time.perf_counter() - t0

    seeds = Counter(o.seed_name for o in outcomes)
    print(f"{len(outcomes)} cases (seed {args.seed}) from {len(seeds)} real files, "
          f"{seconds:.1f} s, {1000 * seconds / max(1, len(outcomes)):.2f} ms/case")  # fmt: skip
    print("| loader | result | cases |")
    print("|---|---|---:|")
    for loader in ("image", "mask"):
        for result, n in Counter(o.results[loader] for o in outcomes).most_common():
            print(f"| {loader} | {result} | {n} |")
    print("\n| seed file | cases | image ok | image error | mask ok | mask error |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in sorted(seeds):
        mine = [o for o in outcomes if o.seed_name == name]
        ok = [sum(o.results[k] == "ok" for o in mine) for k in ("image", "mask")]
        print(f"| {name} | {len(mine)} | {ok[0]} | {len(mine) - ok[0]} | {ok[1]} | "
              f"{len(mine) - ok[1]} |")  # fmt: skip
    slowest = max(outcomes, key=lambda o: o.seconds)
    print(f"\nslowest case: {slowest.case} ({slowest.seed_name}), {1000 * slowest.seconds:.0f} ms")
    bad = [o for o in outcomes if o.unhandled]
    print(f"unhandled exceptions: {sum(len(o.unhandled) for o in bad)} in {len(bad)} cases")
    for o in bad[:20]:
        print(f"--- case {o.case} ({o.seed_name}); replay: --case {o.case} --seed {args.seed}")
        print(*o.unhandled, sep="\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
