"""`fcnseg compare`: The paper's refinement figure: input | FCN-32s | FCN-16s | FCN-8s | ground
truth."""

from __future__ import annotations

from pathlib import Path

from .common import OVERWRITE_HELP, checkpoint_dataset, int_list, ranged


def add(sub) -> None:
    from ..data.build import DATA_HELP

    s = sub.add_parser("compare", help=run.__doc__, description=run.__doc__)
    s.add_argument("checkpoints", nargs="+", help="e.g. the FCN-32s, 16s and 8s checkpoints")
    s.add_argument("--data", help=f"{DATA_HELP} (default: the data they were trained on)")
    s.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help="dataset option (default: the training run's; the nets set the "
                   "modality and task)")  # fmt: skip
    s.add_argument("--split", default="val")
    s.add_argument("--n", type=ranged(int, 1, 100), default=4, help="first N items of the split")
    s.add_argument(
        "--indices",
        type=int_list(0, 10**9),
        help="items to show, e.g. 0,5,9 (instead of --n)",
    )
    s.add_argument("--device", default="cpu")
    s.add_argument("-o", "--out", default="compare.png", help="output PNG")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.add_argument("--untrained", action="store_true",
                   help="with a model name: the net with random weights instead of its "
                   "published ones (outputs mean nothing)")  # fmt: skip
    s.set_defaults(func=run)


def run(args) -> int:
    """The paper's refinement figure: input | FCN-32s | FCN-16s | FCN-8s | ground truth (a row
    per head for two-head nets; the colour image as the input of colour + depth / HHA nets)."""
    from ..checkpoint import load_model
    from ..figures import compare_figure
    from ..predict import resolve_device
    from ..safety import check_outputs

    check_outputs([(args.out, "comparison figure")], args.checkpoints, overwrite=args.overwrite)
    resolve_device(args.device)
    models, ckpt = {}, {}
    for path in args.checkpoints:
        model, ckpt = load_model(path, device=args.device, untrained=args.untrained)
        head = ckpt.get("model_name", Path(path).stem).split("_")[0]  # "fcn32s"
        title = f"FCN-{head[3:]}" if head.startswith("fcn") else head
        models[title if title not in models else f"{title} ({Path(path).parent.name})"] = model
    data, dataset = checkpoint_dataset(args, ckpt, model)
    _check_same_inputs(models, data, getattr(dataset, "modality", None),
                       getattr(dataset, "task", None))  # fmt: skip
    if not dataset:
        raise ValueError(f"split '{args.split}' of {data} is empty")
    indices = args.indices or list(range(min(args.n, len(dataset))))
    bad = [i for i in indices if not 0 <= i < len(dataset)]
    if bad:
        raise ValueError(f"--indices {bad} out of range: the split has {len(dataset)} items")
    names = getattr(dataset, "class_names", None) or ckpt.get("class_names")
    path = compare_figure(models, dataset, indices, args.out, class_names=names,
                          device=args.device)  # fmt: skip
    print(f"comparison of {len(indices)} items written to {path}")
    return 0


def _check_same_inputs(models: dict, data: str, modality, task) -> None:
    """Every net must take the data's inputs and heads (e.g. not nyud-fcn32s-color beside -hha)."""
    from ..netdata import net_data_options

    given = {k: v for k, v in (("modality", modality), ("task", task)) if v is not None}
    for title, model in models.items():
        try:
            net_data_options(getattr(model, "name", title), data, given)
        except ValueError as e:
            raise ValueError(
                f"compare: {title} does not take the same data as the last "
                f"checkpoint ({e}); compare nets of the same inputs and heads"
            ) from None
