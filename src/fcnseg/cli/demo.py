"""`fcnseg demo`: Run the demo on built-in data; write everything to --out."""

from __future__ import annotations

from pathlib import Path


def add(sub) -> None:
    s = sub.add_parser("demo", help=run.__doc__)
    s.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    s.add_argument("--quick", action="store_true", help="small models: a smoke run for tests")
    s.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out the demo did not make")  # fmt: skip
    s.set_defaults(func=run)


def run(args) -> int:
    """Run the demo on built-in data; write everything to --out."""
    from ..demo import run_demo
    from ..safety import OutputError

    out = Path(args.out)  # a folder of the demo's own (marked) or a new one: never a user's
    marker = out / ".fcnseg-demo"
    if out.is_dir() and any(out.iterdir()) and not marker.exists() and not args.overwrite:
        raise OutputError(f"--out {out} holds files that the demo did not write: choose another "
                          f"--out, or pass --overwrite to let the demo write there")  # fmt: skip
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    marker.touch()
    run_demo(out, quick=args.quick)
    return 0
