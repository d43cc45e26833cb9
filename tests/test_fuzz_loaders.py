"""Fuzz the image and mask loaders: 3,000 mutated real files, zero unhandled exceptions.

The fuzzer lives in benchmarks/fuzz_loaders.py (run it with --cases 20000 for a bigger run);
this test runs a deterministic slice of it. Every case must either decode to uint8 (H, W, 3) /
(H, W) or raise ImageError naming the file. The single-case tests below are regressions for
what the fuzzer found.
"""

from __future__ import annotations

import importlib.util
import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcnseg.data.io import ImageError, read_image, read_mask

_SPEC = importlib.util.spec_from_file_location(
    "fuzz_loaders", Path(__file__).parents[1] / "benchmarks" / "fuzz_loaders.py"
)
fuzz_loaders = importlib.util.module_from_spec(_SPEC)
sys.modules["fuzz_loaders"] = fuzz_loaders  # dataclasses look their module up
_SPEC.loader.exec_module(fuzz_loaders)

CASES = 3000

pytestmark = pytest.mark.skipif(
    not fuzz_loaders.VOC_MASKS.is_dir(), reason="labelme-examples (real VOC masks) not installed"
)


@pytest.fixture(scope="module")
def seeds() -> dict[str, bytes]:
    return fuzz_loaders.make_seeds()


def test_seeds_are_valid_real_files_of_every_kind(seeds, tmp_path):
    kinds = set()
    for name, data in seeds.items():
        path = tmp_path / name
        path.write_bytes(data)
        kinds.add(Image.open(path).mode)
        a = read_image(path)
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    assert {"RGB", "RGBA", "P", "L", "I;16"} <= kinds
    assert len(seeds) >= 20


def test_mutated_files_give_only_clear_errors(seeds):
    outcomes = fuzz_loaders.fuzz(range(CASES), seed=0, seeds=seeds)
    unhandled = [o for o in outcomes if o.unhandled]
    assert not unhandled, "\n".join(
        f"case {o.case} ({o.seed_name}): {o.unhandled[0]}" for o in unhandled[:3]
    )
    results = {r for o in outcomes for r in o.results.values()}
    assert results == {"ok", "ImageError"}, results  # both paths exercised, nothing else
    # every seed was mutated, and most mutations break the file
    assert len({o.seed_name for o in outcomes}) == len(seeds)
    ok = sum(o.results["image"] == "ok" for o in outcomes)
    assert 0.05 * CASES < ok < 0.5 * CASES


def test_mutation_is_deterministic(seeds, tmp_path):
    a = fuzz_loaders.run_case(17, seeds, tmp_path)
    b = fuzz_loaders.run_case(17, seeds, tmp_path)
    assert (a.seed_name, a.results) == (b.seed_name, b.results)


def _png_with_short_ihdr() -> bytes:
    """A PNG whose IHDR chunk says 12 bytes long: Pillow's open() raises a bare ValueError."""
    buf = io.BytesIO()
    Image.new("L", (4, 3)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    body = bytes(data[12 : 16 + 12])  # "IHDR" + 12 of its 13 bytes
    return bytes(data[:8] + struct.pack(">I", 12) + body + struct.pack(">I", zlib.crc32(body)))


@pytest.mark.parametrize("reader", [read_image, read_mask])
def test_corrupt_header_value_error_becomes_image_error(reader, tmp_path):
    """Found by the fuzzer (case 1176, seed 0): 'Truncated IHDR chunk' escaped as ValueError."""
    path = tmp_path / "short_ihdr.png"
    path.write_bytes(_png_with_short_ihdr())
    with pytest.raises(ImageError, match=r"short_ihdr\.png has a corrupt header .*IHDR"):
        reader(path)
