"""`fcnseg eval`: score a checkpoint on a dataset split: the paper's four metrics and per-class
IU, the paper's own rows beside."""

from __future__ import annotations

from pathlib import Path

from .common import (
    BATCH,
    FAST_HELP,
    OVERWRITE_HELP,
    WORKERS,
    checkpoint_dataset,
    counts,
    fast_model,
    int_list,
    launching,
    ranged,
    relaunch,
)


def add(sub) -> None:
    from ..data.build import DATA_HELP

    s = sub.add_parser("eval", help=run.__doc__, description=run.__doc__)
    s.add_argument("checkpoint", help="checkpoint file (last.pt / best.pt), or a release "
                   "weights file (.caffemodel, the port's .pth) with --data")  # fmt: skip
    s.add_argument("--data", help=f"{DATA_HELP} (default: the data it was trained on)")
    s.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help="dataset option (default: the training run's); the net sets the "
                   "modality and task; task=sem or geo: one head of a two-head net")  # fmt: skip
    s.add_argument("--split", default="val")
    s.add_argument("--batch-size", type=BATCH, default=8)
    s.add_argument("--device", default="cpu")
    s.add_argument("--workers", type=WORKERS, default=0)
    s.add_argument(
        "--upper-bound",
        action="store_true",
        help="also the mean IU of ground truth down- and upsampled by 32/16/8",
    )
    s.add_argument("--factors", type=int_list(1, 1024), default=[32, 16, 8])
    s.add_argument("--save-confusion", metavar="DIR", help="write confusion.csv and .png")
    s.add_argument("--report", metavar="DIR", help="write DIR/index.html: metrics, per-class "
                   "IU chart, confusion heat map, every image's IU, the worst and best images "
                   "(a self-contained folder: no server, no network)")  # fmt: skip
    s.add_argument("--save-per-image", metavar="CSV", help="write every image's IU and pixel "
                   "accuracy, worst first (two heads: CSV_<head>.csv each)")  # fmt: skip
    s.add_argument("--gallery", type=ranged(int, 0, 200), default=8,
                   help="worst and best images shown by --report (default 8 each)")  # fmt: skip
    s.add_argument("--fast", action="store_true", help=FAST_HELP)
    s.add_argument("--nproc", type=ranged(int, 1, 1024), default=1,
                   help="processes, each scoring a share (torchrun); matrices summed")  # fmt: skip
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.add_argument("--untrained", action="store_true",
                   help="with a model name: the net with random weights instead of its "
                   "published ones (outputs mean nothing)")  # fmt: skip
    s.add_argument("--net", help="for a release weights file (.caffemodel, the port's .pth): "
                   "which net, e.g. nyud-fcn32s-hha (default: the one its layers fit)")  # fmt: skip
    s.set_defaults(func=run)


def run(args) -> int:
    """Score a checkpoint on a dataset split: the paper's four metrics and per-class IU, the
    paper's own rows beside (per head for two-head nets: semantic metrics, geometric accuracy)."""
    if launching(args):
        return relaunch(args)
    import time

    from ..checkpoint import load_model
    from ..data.build import make_loader
    from ..evaluate import (
        compute_metrics,
        evaluate,
        format_per_class,
        format_table,
        scored_subset,
        select_head,
    )
    from ..feed import Dist
    from ..paper import paper_rows
    from ..predict import resolve_device
    from ..safety import check_outputs

    if args.save_confusion:
        out = Path(args.save_confusion)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--save-confusion {out} is a file: give a folder")
    report = getattr(args, "report", None), getattr(args, "save_per_image", None)
    if report[0]:
        check_outputs([(Path(report[0]) / "index.html", "report page")], [args.checkpoint],
                      overwrite=args.overwrite, flag="--report")  # fmt: skip
    if report[1]:
        check_outputs([(report[1], "per-image CSV")], [args.checkpoint],
                      overwrite=args.overwrite, flag="--save-per-image")  # fmt: skip
    model, ckpt = load_model(args.checkpoint, device=resolve_device(args.device), net=args.net,
                             untrained=args.untrained)  # fmt: skip
    _, dataset = checkpoint_dataset(args, ckpt, model)
    label = ckpt.get("model_name") or getattr(model, "name", None) or str(args.checkpoint)
    model = fast_model(model, args.fast, args.device)
    heads = model.num_classes if isinstance(model.num_classes, dict) else {"": model.num_classes}
    head_names = getattr(dataset, "head_classes", None) or {
        "": list(getattr(dataset, "class_names", None) or ckpt.get("class_names") or [])
    }
    if len(head_names) == 1 and len(heads) > 1 and set(head_names) <= set(heads):
        head = next(iter(head_names))  # task=sem or geo: that head of the two alone
        model, heads = select_head(model, head), {head: heads[head]}
    elif len(head_names) == 1 and set(heads) == {""}:  # a one-head net on one named head's data
        heads = {next(iter(head_names)): heads[""]}
    have = {k: len(v) for k, v in head_names.items()}
    if (have != heads and all(have.values())) or set(have) != set(heads):
        raise ValueError(f"the data has {counts(have)} classes but checkpoint {args.checkpoint} "
                         f"scores {counts(heads)} classes: evaluate a checkpoint trained on "
                         f"this data's classes")  # fmt: skip
    # one confusion matrix per head: confusion.csv/png, or confusion_sem / confusion_geo
    stems = {h: f"confusion_{h}" if len(heads) > 1 else "confusion" for h in heads}
    if args.save_confusion:
        check_outputs([(out / f"{stems[h]}{ext}", f"confusion {what}") for h in heads
                       for ext, what in ((".csv", "CSV"), (".png", "plot"))],
                      [args.checkpoint], overwrite=args.overwrite,
                      flag="--save-confusion")  # fmt: skip
    dist = Dist.from_env(args.device)  # under torchrun (--nproc): each rank scores its share
    dist.checks_done()  # --nproc: the check run (cli.launch) stops here, before any worker
    loader = make_loader(dist.shard(scored_subset(dataset)), args.batch_size, model.preprocessing,
                         args.workers)  # fmt: skip
    t0 = time.perf_counter()
    per_image = None
    if any(report):
        from ..report import PerImageScores

        per_image = PerImageScores(model.num_classes, keep=args.gallery if report[0] else 0)
    result = evaluate(model, loader, model.num_classes, device=args.device,
                      progress=dist.rank == 0, per_image=per_image)  # fmt: skip
    metrics = compute_metrics(dist.all_reduce(result), dataset)
    if per_image is not None:  # --nproc: every process's images, on rank 0
        per_image = per_image.gathered(dist)
    if dist.rank:
        return 0
    seconds, n = time.perf_counter() - t0, len(scored_subset(dataset))
    print(f"scored {n} images in {seconds:.2f} s ({n / seconds:.2f} images/s, "
          f"{dist.world} process{'es' if dist.world > 1 else ''})")  # fmt: skip
    if not isinstance(result, dict):  # one head: unnamed, or one of two (task=sem or geo)
        result, metrics = {next(iter(heads)): result}, {next(iter(heads)): metrics}
    for head, m in metrics.items():
        title = f"{label} ({head})" if head else label
        names = head_names[head] or [str(i) for i in range(heads[head])]
        print(format_table({title: m, **(paper_rows(label) if head in ("", "sem") else {})}))
        print(format_per_class(m, names))
    if args.upper_bound:  # every head (two-head nets: sem and geo, each its own classes)
        from ..metrics import upper_bound

        scored = scored_subset(dataset)
        for head in heads:
            targets = (scored[i][1][head] if len(heads) > 1 else scored[i][1]
                       for i in range(len(scored)))  # fmt: skip
            bound = upper_bound(targets, heads[head], factors=tuple(args.factors))
            print(f"upper bound{f' ({head})' if head else ''}: ground truth downsampled by "
                  f"the output stride and upsampled back")  # fmt: skip
            print(format_table({f"stride {f}": m for f, m in bound.items()}))
    if args.save_confusion:
        from ..evaluate import plot_confusion, save_confusion

        for head, cm in result.items():
            names = head_names[head] or [str(i) for i in range(heads[head])]
            save_confusion(cm.matrix, names, out / f"{stems[head]}.csv")
            plot_confusion(cm.matrix, names, out / f"{stems[head]}.png")
            print(f"confusion matrix{f' ({head})' if head else ''} written to "
                  f"{out}/{stems[head]}.csv and {stems[head]}.png")  # fmt: skip
    if per_image is not None:
        from ..report.evaluation import eval_outputs

        eval_outputs(report, label=label, checkpoint=args.checkpoint, split=args.split,
                     dataset=scored_subset(dataset), results=result, metrics=metrics,
                     names={h: head_names[h] or [str(i) for i in range(heads[h])] for h in heads},
                     per_image=per_image, seconds=seconds)  # fmt: skip
    return 0
