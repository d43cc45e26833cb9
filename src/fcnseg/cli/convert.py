"""`fcnseg convert`: Convert a reference net's .caffemodel into a PyTorch state dict (.pth),
without Caffe."""

from __future__ import annotations

from .common import OVERWRITE_HELP


def add(sub) -> None:
    s = sub.add_parser("convert", help=run.__doc__, description=run.__doc__)
    s.add_argument("file", help="the .caffemodel (binary, as the release publishes it)")
    s.add_argument("--net", required=True, help="the release's net it belongs to (fcnseg models)")
    s.add_argument("-o", "--out", required=True, help="the .pth file to write")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.set_defaults(func=run)


def run(args) -> int:
    """Convert a reference net's .caffemodel into a PyTorch state dict (.pth), without Caffe."""
    from ..models.reference import convert_caffemodel
    from ..safety import check_outputs

    check_outputs([(args.out, "state dict")], [args.file], overwrite=args.overwrite)
    out = convert_caffemodel(args.file, args.net, args.out)
    print(f"wrote {out}: the weights of {args.net}, for build_reference('{args.net}', "
          f"weights='{out}')")  # fmt: skip
    return 0
