"""`fcnseg hha`: HHA image (disparity, height, angle to gravity) from a 16-bit depth PNG (Gupta
2014)."""

from __future__ import annotations

from .common import OVERWRITE_HELP


def add(sub) -> None:
    s = sub.add_parser("hha", help=run.__doc__, description=run.__doc__)
    s.add_argument("depth", help="16-bit depth PNG (0 = missing: filled from the nearest pixel)")
    s.add_argument("--intrinsics", metavar="FX,FY,CX,CY", help="camera intrinsics in pixels")
    s.add_argument("--camera", choices=["nyud"], help="a known camera instead of --intrinsics")
    s.add_argument("--depth-scale", type=float, default=0.001,
                   help="metres per stored unit (default 0.001: millimetres)")  # fmt: skip
    s.add_argument("-o", "--out", required=True, help="output HHA PNG")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.set_defaults(func=run)


def run(args) -> int:
    """HHA image (disparity, height, angle to gravity) from a 16-bit depth PNG (Gupta 2014)."""
    from ..data.hha import hha_file, parse_intrinsics

    intrinsics = parse_intrinsics(args.intrinsics, args.camera)
    hha_file(args.depth, args.out, intrinsics, depth_scale=args.depth_scale,
             overwrite=args.overwrite)  # fmt: skip
    print(f"HHA image written to {args.out}")
    return 0
