"""`fcnseg heatmap`: Class heatmap of a photo from a convolutionalized ImageNet classifier."""

from __future__ import annotations

from pathlib import Path

from .common import OVERWRITE_HELP, ranged


def add(sub) -> None:
    from ..heatmap import CLASSIFIERS

    s = sub.add_parser("heatmap", help=run.__doc__)
    s.add_argument("image", help="photo to score")
    s.add_argument("--classifier", choices=CLASSIFIERS, default="efficientnet_lite0")
    s.add_argument("--weights", help="classifier weights file or url (default: registered)")
    s.add_argument("--class", dest="cls", help="class name, index or group (e.g. cat)")
    s.add_argument("--top", type=ranged(int, 1, 1000), default=5, help="top classes to print")
    s.add_argument("-o", "--out", help="output PNG (default: IMAGE_heatmap.png)")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.set_defaults(func=run)


def run(args) -> int:
    """Class heatmap of a photo from a convolutionalized ImageNet classifier."""
    import numpy as np
    from PIL import Image, ImageOps

    from ..heatmap import class_heatmap, class_indices, load_classifier, render_heatmap
    from ..safety import check_outputs

    path = Path(args.image)
    if not path.is_file():
        raise SystemExit(f"error: image '{path}' not found")
    out = Path(args.out or path.with_name(path.stem + "_heatmap.png"))
    check_outputs([(out, "heatmap")], [path], overwrite=args.overwrite)
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
    label = args.cls or hm.top_classes(1)[0][1]
    render_heatmap(image, hm.class_map(classes).numpy(), out, f"P({label}), {args.classifier}")
    print(f"heatmap written to {out}")
    return 0
