"""Every registered model at full width: output H x W equals input H x W at awkward sizes.

The unit tests check this at width 0.125; this script checks the real channel counts once and
prints a table (model, input, output, GMAC, seconds). Run: python benchmarks/check_shapes.py
"""

from __future__ import annotations

import argparse
import time

import torch

import fcnseg
from fcnseg.flops import count_macs

SIZES = [(1, 1), (31, 45), (375, 500), (600, 1000)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=fcnseg.list_models())
    parser.add_argument("--sizes", nargs="*", default=[f"{h}x{w}" for h, w in SIZES])
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | input | output | GMAC | seconds | ok |")
    print("|---|---|---|---:|---:|---|")
    failures = 0
    for name in args.models:
        model = fcnseg.build_model(name).eval()
        for h, w in sizes:
            x = torch.randn(1, 3, h, w)
            t = time.perf_counter()
            with torch.inference_mode():
                y = model(x)
            dt = time.perf_counter() - t
            gmac = sum(count_macs(model, h, w).values()) / 1e9
            ok = tuple(y.shape) == (1, 21, h, w) and bool(torch.isfinite(y).all())
            failures += not ok
            print(f"| {name} | {h}x{w} | {'x'.join(map(str, y.shape[-2:]))} | {gmac:.1f} "
                  f"| {dt:.2f} | {'yes' if ok else 'NO'} |")  # fmt: skip
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
