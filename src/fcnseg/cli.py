"""The `fcnseg` command line: one function per subcommand; `--help` is the manual."""

from __future__ import annotations

import argparse
import difflib
import sys
import traceback
from pathlib import Path

__all__ = ["main"]


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every option of the parser and of its subcommands."""
    found = []
    for action in parser._actions:
        found += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _option_strings(sub)
    return found


class _Parser(argparse.ArgumentParser):
    """Rejects unknown options with a suggestion of the closest known one."""

    def error(self, message: str):
        if "unrecognized arguments" in message:
            known = _option_strings(self)
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], known, n=1)
                if close:
                    message += f" (did you mean {close[0]}?)"
        super().error(message)


def cmd_models(args) -> int:
    """List the models and the registered weights."""
    from . import WEIGHTS, list_models

    print("models:", *list_models(), sep="\n  ")
    print("weights:")
    for w in WEIGHTS.values():
        print(f"  {w.name:24s} {w.arch:20s} {w.categories:9s} {w.url}")
    return 0


def cmd_demo(args) -> int:
    """Run the demo on built-in data; write everything to --out."""
    from .demo import run_demo

    run_demo(Path(args.out), quick=args.quick)
    return 0


def cmd_heatmap(args) -> int:
    """Class heatmap of a photo from a convolutionalized ImageNet classifier."""
    import numpy as np
    from PIL import Image, ImageOps

    from .heatmap import class_heatmap, class_indices, load_classifier, render_heatmap

    path = Path(args.image)
    if not path.is_file():
        raise SystemExit(f"error: image '{path}' not found")
    try:
        image = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    except OSError as e:
        raise SystemExit(f"error: cannot read image '{path}': {e}") from None
    model, pre = load_classifier(args.classifier, args.weights)
    hm = class_heatmap(model, pre, image)
    print("top classes anywhere in the image:")
    for i, name, p in hm.top_classes(args.top):
        print(f"  {p:6.3f}  {i:4d}  {name}")
    classes = class_indices(args.cls) if args.cls else [hm.top_classes(1)[0][0]]
    out = Path(args.out or path.with_name(path.stem + "_heatmap.png"))
    label = args.cls or hm.top_classes(1)[0][1]
    render_heatmap(image, hm.class_map(classes).numpy(), out, f"P({label}), {args.classifier}")
    print(f"heatmap written to {out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fcnseg", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("models", help=cmd_models.__doc__)
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("demo", help=cmd_demo.__doc__)
    s.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    s.add_argument("--quick", action="store_true", help="small models: a smoke run for tests")
    s.set_defaults(func=cmd_demo)

    from .heatmap import CLASSIFIERS

    s = sub.add_parser("heatmap", help=cmd_heatmap.__doc__)
    s.add_argument("image", help="photo to score")
    s.add_argument("--classifier", choices=CLASSIFIERS, default="efficientnet_lite0")
    s.add_argument("--weights", help="classifier weights file or url (default: registered)")
    s.add_argument("--class", dest="cls", help="class name, index or group (e.g. cat)")
    s.add_argument("--top", type=int, default=5, help="how many top classes to print")
    s.add_argument("-o", "--out", help="output PNG (default: IMAGE_heatmap.png)")
    s.set_defaults(func=cmd_heatmap)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError, KeyError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}" + ("" if args.debug else "  (--debug shows the traceback)"),
              file=sys.stderr)  # fmt: skip
        return 1
