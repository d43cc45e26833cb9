"""`fcnseg export`: Export a checkpoint, a model or release net, or a release weights file to
ONNX or TorchScript, checked at three input sizes."""

from __future__ import annotations

from pathlib import Path

from .common import CLASSES, OVERWRITE_HELP, ranged


def add(sub) -> None:
    s = sub.add_parser("export", help=run.__doc__, description=run.__doc__)
    s.add_argument("model", help="checkpoint file, model or release net name (e.g. voc-fcn8s), "
                   "or release weights file (.caffemodel, the port's .pth; see --net)")  # fmt: skip
    s.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    s.add_argument("-o", "--out", help="output file (default: MODEL.onnx / MODEL.torchscript.pt)")
    s.add_argument("--opset", type=ranged(int, 9, 21), default=17, help="ONNX opset (default 17)")
    s.add_argument(
        "--sizes",
        default="224x224,2x197x311,500x375",
        help="check sizes, HxW or NxHxW (default: 224x224,2x197x311,500x375)",
    )
    s.add_argument("--num-classes", type=CLASSES, help="for an fcnseg model name (default 21)")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.add_argument("--untrained", action="store_true",
                   help="with a model name: the net with random weights instead of its "
                   "published ones (outputs mean nothing)")  # fmt: skip
    s.add_argument("--net", help="for a release weights file (.caffemodel, the port's .pth): "
                   "which net, e.g. voc-fcn8s (default: the one its layers fit)")  # fmt: skip
    s.add_argument(
        "--with-preprocessing",
        action="store_true",
        help="nets that take one photo: the graph takes uint8 RGB (N, H, W, 3) as read from "
        "the file and does the channel flip, scale, mean and std itself",
    )
    s.set_defaults(func=run)


def run(args) -> int:
    """Export a checkpoint, model or release net to ONNX or TorchScript, checked at three input
    sizes; what each input needs and each output's classes go into the file's metadata."""
    from ..checkpoint import load_model
    from ..export import (
        describe,
        export_onnx,
        export_torchscript,
        format_io,
        format_report,
        parse_sizes,
    )
    from ..safety import check_outputs

    sizes = parse_sizes(args.sizes)
    suffix = ".onnx" if args.format == "onnx" else ".torchscript.pt"
    out = Path(args.out or Path(args.model).stem + suffix)
    check_outputs([(out, f"{args.format} model")], [args.model], overwrite=args.overwrite)
    model, _ = load_model(args.model, num_classes=args.num_classes, net=args.net,
                          untrained=args.untrained)  # fmt: skip
    pre = args.with_preprocessing
    if args.format == "onnx":
        rows = export_onnx(model, out, opset=args.opset, verify_sizes=sizes, with_preprocessing=pre)
    else:
        rows = export_torchscript(model, out, verify_sizes=sizes, with_preprocessing=pre)
    print(format_report(rows))
    spec = describe(model, with_preprocessing=pre)
    print(f"{args.format} model of {spec['net'] or 'the model'} written to {out}: batch, height "
          f"and width are dynamic")  # fmt: skip
    print(format_io(spec))
    where = ("metadata_props 'fcnseg' (JSON)" if args.format == "onnx"
             else "extra file 'fcnseg.json' (torch.jit.load(path, _extra_files=...))")  # fmt: skip
    print(f"(the same, with all class names, is in the file: {where})")
    return 0
