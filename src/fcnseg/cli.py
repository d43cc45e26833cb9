"""The `fcnseg` command line: one function per subcommand; `--help` is the manual."""

from __future__ import annotations

import argparse
import difflib
import os
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
    from .weights.registry import reference_table

    print("reference nets (build_reference(NAME, weights='reference')):")
    print(*(f"  {line}" for line in reference_table()), sep="\n")
    return 0


def cmd_convert(args) -> int:
    """Convert a reference net's .caffemodel into a PyTorch state dict (.pth), without Caffe."""
    from .safety import check_outputs
    from .weights import convert_caffemodel

    check_outputs([(args.out, "state dict")], [args.file], overwrite=args.overwrite)
    out = convert_caffemodel(args.file, args.net, args.out)
    print(f"wrote {out}: the weights of {args.net}, for build_reference('{args.net}', "
          f"weights='{out}')")  # fmt: skip
    return 0


def cmd_demo(args) -> int:
    """Run the demo on built-in data; write everything to --out."""
    from .demo import run_demo
    from .safety import OutputError

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


def cmd_heatmap(args) -> int:
    """Class heatmap of a photo from a convolutionalized ImageNet classifier."""
    import numpy as np
    from PIL import Image, ImageOps

    from .heatmap import class_heatmap, class_indices, load_classifier, render_heatmap
    from .safety import check_outputs

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


def _ranged(kind, lo, hi):
    """argparse type: a number in lo..hi, with the offending value and the range in the error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            kind_name = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"'{text}' is not {kind_name}") from None
        if not (lo <= value <= hi):  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be in {_show(lo)}..{_show(hi)}, got {text}")
        return value

    return parse


def _show(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _int_list(lo: int, hi: int):
    """argparse type: comma-separated integers, each in lo..hi (e.g. 600,250,250)."""
    one = _ranged(int, lo, hi)

    def parse(text: str) -> list[int]:
        try:
            return [one(v) for v in text.split(",")]
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{text}: each value {e}") from None

    return parse


def _stages(text: str) -> list[str]:
    """argparse type: staged training, e.g. 32s,16s,8s."""
    stages = text.split(",")
    bad = [s for s in stages if s not in ("32s", "16s", "8s")]
    if bad:
        raise argparse.ArgumentTypeError(f"{text}: stages are 32s, 16s and 8s, got {bad[0]}")
    return stages


STEPS = _ranged(int, 1, 10**9)
BATCH = _ranged(int, 1, 4096)
CLASSES = _ranged(int, 2, 65536)
WIDTH = _ranged(float, 1 / 64, 8.0)
WORKERS = _ranged(int, 0, 256)
STEPS0 = _ranged(int, 0, 10**9)


def _key_values(pairs: list[str] | None, flag: str = "--data-option") -> dict:
    """['n_train=3000', 'scale=2,3', 'layout=same'] -> {'n_train': 3000, 'scale': (2, 3), ...}."""
    out = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep:
            raise ValueError(f"{flag} '{pair}': write KEY=VALUE, e.g. n_train=3000")
        values = [_number_or_text(v) for v in text.split(",")]
        out[key] = values[0] if len(values) == 1 else tuple(values)
    return out


def _number_or_text(text: str):
    """'3' -> 3, '2.5' -> 2.5, 'same' -> 'same'."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _train_config(args):
    from .engine import TrainConfig

    options = {"width": args.width} if args.width != 1.0 else {}
    if args.layout != "reference":
        options["layout"] = args.layout
    options.update(_key_values(args.model_option, "--model-option"))
    return TrainConfig(
        model=args.model, num_classes=args.num_classes, model_options=options,
        recipe=args.recipe, data=args.data, train_split=args.train_split,
        val_data=args.val_data, val_split=args.val_split,
        data_options=_key_values(args.data_option),
        steps=args.steps, batch_size=args.batch_size, accumulate=args.accumulate, lr=args.lr,
        seed=args.seed, out=args.out, eval_every=args.eval_every, ckpt_every=args.ckpt_every,
        log_every=args.log_every, device=args.device, amp=args.amp,
        channels_last=args.channels_last, init_from=_init_from(args.init_from), fast=args.fast,
        backbone_weights=args.backbone_weights, workers=args.workers, crop=args.crop,
    )  # fmt: skip


def _relaunch(args) -> int:
    """This command line again under torchrun, one process per rank (--nproc N)."""
    import subprocess

    argv, skip = [], False
    for a in args.argv:  # this command line without --nproc
        if not skip and a != "--nproc" and not a.startswith("--nproc="):
            argv.append(a)
        skip = a == "--nproc"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={args.nproc}", "-m", "fcnseg", *argv]  # fmt: skip
    return subprocess.call(cmd)


def _init_from(text: str | None):
    """--init-from PATH, or per stream for late fusion: color=PATH,hha=PATH -> a dict."""
    if text is None or "=" not in text:
        return text
    pairs = [p.partition("=") for p in text.split(",")]
    if any(not k or not sep or not v for k, sep, v in pairs):
        raise ValueError(f"--init-from '{text}': write PATH, or STREAM=PATH,STREAM=PATH "
                         f"(e.g. color=runs/color/last.pt,hha=runs/hha/last.pt)")  # fmt: skip
    return {k: v for k, _, v in pairs}


def cmd_train(args) -> int:
    """Train an FCN (or FCN-32s -> 16s -> 8s in stages with --stages); resumable."""
    if args.nproc > 1:
        return _relaunch(args)
    from .engine import train, train_stages

    config = _train_config(args)
    if args.stages:
        backbone = args.model.split("_", 1)[-1]
        steps = args.stage_steps or [args.steps] * len(args.stages)
        if len(steps) != len(args.stages):
            raise ValueError(f"--stage-steps gives {len(steps)} numbers for "
                             f"{len(args.stages)} stages")  # fmt: skip
        stages = [(f"fcn{s}_{backbone}", n) for s, n in zip(args.stages, steps, strict=True)]
        results = train_stages(config, stages, resume=args.resume, overwrite=args.overwrite)
    else:
        results = [{"model": args.model,
                    **train(config, resume=args.resume, overwrite=args.overwrite)}]  # fmt: skip
    rows = {r["model"]: r["metrics"] for r in results if r["metrics"]}
    if rows:
        from .evaluate import format_table

        print(format_table(rows))
    for r in results:
        rate = r.get("images", 0) / r["seconds"] if r["seconds"] else 0.0
        print(f"{r['model']}: {r['checkpoint']} ({r['seconds']:.0f} s, {rate:.2f} images/s, "
              f"{r.get('data_wait', 0.0):.2f} s waiting for data)")  # fmt: skip
    return 0


def _checkpoint_dataset(args, ckpt: dict):
    """(data spec, dataset) for --split: --data / --data-option, else what `ckpt` trained on."""
    from .data.build import open_dataset

    config = ckpt.get("config", {})
    data = args.data or config.get("data")
    if not data:
        raise ValueError("which data? pass --data digits | voc:ROOT | sbd:ROOT | folder:ROOT")
    options = _key_values(args.data_option) or config.get("data_options", {})
    return data, open_dataset(data, args.split, options)


OVERWRITE_HELP = (
    "replace output files that exist already (never the inputs); without it such outputs "
    "are refused before any work"
)
FAST_HELP = (
    "exact faster CPU path (FastFCN) for VGG16/AlexNet FCNs: ~2.3x at 500x500 once a size "
    "has been seen (the first image of each size costs about one ordinary pass)"
)


def _fast(model, fast: bool, device):
    """--fast: FastFCN, the exact CPU path (a background pass per distinct input size, about
    one ordinary pass at 500x500: it pays from the second image of a size)."""
    if not fast:
        return model
    import torch

    from .fast import FastFCN

    if torch.device(device).type != "cpu":
        raise ValueError(f"--fast is a CPU path; on {device} drop --fast (use --amp there)")
    if getattr(model, "stream_names", None) or getattr(model, "head_names", None):
        raise ValueError(f"--fast runs single-input, single-head nets; {model.name} has several "
                         f"inputs or heads: run without --fast")  # fmt: skip
    try:
        return FastFCN(model, max_cached=8)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--fast: {e}; run without --fast") from e


def cmd_eval(args) -> int:
    """Score a checkpoint on a dataset split: the paper's four metrics and per-class IU, the
    paper's own rows beside (per head for two-head nets: semantic metrics, geometric accuracy)."""
    if args.nproc > 1:
        return _relaunch(args)
    import time

    from .checkpoint import load_model
    from .data.build import make_loader
    from .evaluate import compute_metrics, evaluate, format_per_class, format_table, scored_subset
    from .feed import Dist
    from .paper import paper_rows
    from .predict import resolve_device
    from .safety import check_outputs

    if args.save_confusion:
        out = Path(args.save_confusion)
        check_outputs([(out / "confusion.csv", "confusion CSV"),
                       (out / "confusion.png", "confusion plot")], [args.checkpoint],
                      overwrite=args.overwrite, flag="--save-confusion")  # fmt: skip
    model, ckpt = load_model(args.checkpoint, device=resolve_device(args.device))
    model = _fast(model, args.fast, args.device)
    _, dataset = _checkpoint_dataset(args, ckpt)
    heads = model.num_classes if isinstance(model.num_classes, dict) else {"": model.num_classes}
    head_names = getattr(dataset, "head_classes", None) or {
        "": list(getattr(dataset, "class_names", None) or ckpt.get("class_names") or [])
    }
    have = {k: len(v) for k, v in head_names.items()}
    if (have != heads and all(have.values())) or set(have) != set(heads):
        raise ValueError(f"the data has {_counts(have)} classes but checkpoint {args.checkpoint} "
                         f"scores {_counts(heads)} classes: evaluate a checkpoint trained on "
                         f"this data's classes")  # fmt: skip
    dist = Dist.from_env(args.device)  # under torchrun (--nproc): each rank scores its share
    loader = make_loader(dist.shard(scored_subset(dataset)), args.batch_size, model.preprocessing,
                         args.workers)  # fmt: skip
    t0 = time.perf_counter()
    result = evaluate(model, loader, model.num_classes, device=args.device,
                      progress=dist.rank == 0)  # fmt: skip
    metrics = compute_metrics(dist.all_reduce(result), dataset)
    if dist.rank:
        return 0
    seconds, n = time.perf_counter() - t0, len(scored_subset(dataset))
    print(f"scored {n} images in {seconds:.2f} s ({n / seconds:.2f} images/s, "
          f"{dist.world} process{'es' if dist.world > 1 else ''})")  # fmt: skip
    result, metrics = ({"": result}, {"": metrics}) if "" in heads else (result, metrics)
    label = ckpt.get("model_name", str(args.checkpoint))
    for head, m in metrics.items():
        title = f"{label} ({head})" if head else label
        names = head_names[head] or [str(i) for i in range(heads[head])]
        print(format_table({title: m, **(paper_rows(label) if head in ("", "sem") else {})}))
        print(format_per_class(m, names))
    if args.upper_bound and "" in heads:
        from .metrics import upper_bound

        targets = (dataset[i][1] for i in range(len(dataset)))
        bound = upper_bound(targets, model.num_classes, factors=tuple(args.factors))
        print("upper bound: ground truth downsampled by the output stride and upsampled back")
        print(format_table({f"stride {f}": m for f, m in bound.items()}))
    if args.save_confusion:
        from .evaluate import plot_confusion, save_confusion

        head, cm = next(iter(result.items()))  # the (first) head's: semantic
        save_confusion(cm.matrix, head_names[head], out / "confusion.csv")
        plot_confusion(cm.matrix, head_names[head], out / "confusion.png")
        print(f"confusion matrix written to {out}/confusion.csv and confusion.png")
    return 0


def _counts(classes: dict) -> str:
    return ", ".join(f"{k} {v}" if k else str(v) for k, v in classes.items())


def cmd_compare(args) -> int:
    """The paper's refinement figure: input | FCN-32s | FCN-16s | FCN-8s | ground truth."""
    from .checkpoint import load_model
    from .figures import compare_figure
    from .predict import resolve_device
    from .safety import check_outputs

    check_outputs([(args.out, "comparison figure")], args.checkpoints, overwrite=args.overwrite)
    resolve_device(args.device)
    models, ckpt = {}, {}
    for path in args.checkpoints:
        model, ckpt = load_model(path, device=args.device)
        head = ckpt.get("model_name", Path(path).stem).split("_")[0]  # "fcn32s"
        title = f"FCN-{head[3:]}" if head.startswith("fcn") else head
        models[title if title not in models else f"{title} ({Path(path).parent.name})"] = model
    data, dataset = _checkpoint_dataset(args, ckpt)
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


def cmd_predict(args) -> int:
    """Segment images (files, folders, globs): label PNGs, overlays and probabilities."""
    import time
    from collections import Counter

    from torch import device as torch_device

    if args.nproc > 1:
        return _relaunch(args)
    from .checkpoint import load_model
    from .feed import Dist, default_workers
    from .predict import expand_inputs, predict_paths, resolve_device

    t0 = time.perf_counter()
    device = resolve_device(args.device)  # missing CUDA or inputs: fail before any work
    expand_inputs(args.paths)
    dist = Dist.from_env(str(device))  # under torchrun (--nproc): each process a share
    if dist.world > 1 and device.type == "cuda":
        device = torch_device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    model, _ = load_model(args.model, num_classes=args.num_classes, device=device, net=args.net)
    model = _fast(model, args.fast, device)
    workers = default_workers(device, dist.world) if args.workers is None else args.workers
    results = predict_paths(model, args.paths, args.out, device=device,
                            save_probs=args.save_probs, overlay=not args.no_overlay,
                            batch_size=args.batch_size, tile=args.tile,
                            overwrite=args.overwrite, skip_existing=args.skip_existing,
                            workers=workers, shard=(dist.rank, dist.world),
                            progress=dist.rank == 0)  # fmt: skip
    results = dist.gather(results)
    if dist.rank:
        return 0
    skipped = [r for r in results if r.get("skipped")]
    results = [r for r in results if not r.get("skipped")]
    if skipped:
        print(f"{len(skipped)} images already segmented in {args.out}: skipped")
    done = [r for r in results if r["ok"]]
    failed = [r for r in results if not r["ok"]]
    overall = Counter(c for r in done for c in r["classes"])
    for r in done:
        h, w = r["size"]
        print(f"  {r['input']}  {h}x{w}  -> {r['labels']}: {', '.join(r['classes'])}")
    seconds = time.perf_counter() - t0
    print(f"{len(done)} images segmented into {args.out} in {seconds:.1f} s")
    if overall:
        print("classes (images): " + ", ".join(f"{c} ({n})" for c, n in overall.most_common()))
    if failed:
        print(f"error: {len(failed)} of {len(results)} images failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r['error']}", file=sys.stderr)
        return 1
    return 0


def cmd_hha(args) -> int:
    """HHA image (disparity, height, angle to gravity) from a 16-bit depth PNG (Gupta 2014)."""
    from .data.hha import hha_file, parse_intrinsics

    intrinsics = parse_intrinsics(args.intrinsics, args.camera)
    hha_file(args.depth, args.out, intrinsics, depth_scale=args.depth_scale,
             overwrite=args.overwrite)  # fmt: skip
    print(f"HHA image written to {args.out}")
    return 0


def cmd_export(args) -> int:
    """Export a checkpoint or model to ONNX or TorchScript, checked at three input sizes."""
    from .checkpoint import load_model
    from .export import export_onnx, export_torchscript, format_report, parse_sizes
    from .safety import check_outputs

    sizes = parse_sizes(args.sizes)
    suffix = ".onnx" if args.format == "onnx" else ".torchscript.pt"
    out = Path(args.out or Path(args.model).stem + suffix)
    check_outputs([(out, f"{args.format} model")], [args.model], overwrite=args.overwrite)
    model, _ = load_model(args.model, num_classes=args.num_classes, net=args.net)
    if args.format == "onnx":
        rows = export_onnx(model, out, opset=args.opset, verify_sizes=sizes)
    else:
        rows = export_torchscript(model, out, verify_sizes=sizes)
    print(format_report(rows))
    print(f"{args.format} model written to {out}: batch, height and width are dynamic")
    return 0


def cmd_bench(args) -> int:
    """Time inference paths side by side: eager, FastFCN (exact), bf16 (see benchmarks/)."""
    from .bench import bench_inference

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(bench_inference(args.model, args.size, repeats=args.repeats, width=args.width,
                          retune=args.retune))  # fmt: skip
    return 0


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fcnseg", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("models", help=cmd_models.__doc__)
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("convert", help=cmd_convert.__doc__, description=cmd_convert.__doc__)
    s.add_argument("file", help="the .caffemodel (binary, as the release publishes it)")
    s.add_argument("--net", required=True, help="the release's net it belongs to (fcnseg models)")
    s.add_argument("-o", "--out", required=True, help="the .pth file to write")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("demo", help=cmd_demo.__doc__)
    s.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    s.add_argument("--quick", action="store_true", help="small models: a smoke run for tests")
    s.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out the demo did not make")  # fmt: skip
    s.set_defaults(func=cmd_demo)

    from .heatmap import CLASSIFIERS

    s = sub.add_parser("heatmap", help=cmd_heatmap.__doc__)
    s.add_argument("image", help="photo to score")
    s.add_argument("--classifier", choices=CLASSIFIERS, default="efficientnet_lite0")
    s.add_argument("--weights", help="classifier weights file or url (default: registered)")
    s.add_argument("--class", dest="cls", help="class name, index or group (e.g. cat)")
    s.add_argument("--top", type=_ranged(int, 1, 1000), default=5, help="top classes to print")
    s.add_argument("-o", "--out", help="output PNG (default: IMAGE_heatmap.png)")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.set_defaults(func=cmd_heatmap)
    from .recipes import RECIPES

    s = sub.add_parser("train", help=cmd_train.__doc__, description=cmd_train.__doc__)
    s.add_argument("--model", default="fcn8s_vgg16", help="model name (see `fcnseg models`)")
    s.add_argument(
        "--data",
        default="digits",
        help="digits | voc:ROOT | sbd:ROOT | folder:ROOT (default: digits)",
    )
    s.add_argument(
        "--data-option",
        action="append",
        metavar="KEY=VALUE",
        help="dataset option, e.g. n_train=3000 size=128 (repeatable)",
    )
    s.add_argument("--train-split", default="train")
    s.add_argument("--val-data", help="validation dataset if not --data, e.g. voc:ROOT")
    s.add_argument("--val-split", default="val")
    s.add_argument(
        "--recipe",
        choices=RECIPES,
        default="cvpr",
        help="; ".join(f"{r.name}: {r.description}" for r in RECIPES.values()),
    )
    s.add_argument("--steps", type=STEPS, default=1000, help="optimizer steps")
    s.add_argument(
        "--stages",
        type=_stages,
        help="staged training, e.g. 32s,16s,8s: each stage starts from the last",
    )
    s.add_argument(
        "--stage-steps",
        type=_int_list(1, 10**9),
        help="steps per stage, e.g. 600,250,250 (default: --steps each)",
    )
    s.add_argument("--batch-size", type=BATCH, help="images per step (recipe's)")
    s.add_argument("--accumulate", type=BATCH, help="micro-batches per step")
    s.add_argument("--lr", type=_ranged(float, 1e-30, 10.0), help="learning rate (recipe's)")
    s.add_argument("--width", type=WIDTH, default=1.0, help="channel multiplier")
    s.add_argument(
        "--layout",
        choices=("reference", "same"),
        default="reference",
        help="reference: the paper's 100-px pad; same: ours, ~40%% less compute",
    )
    s.add_argument(
        "--model-option",
        action="append",
        metavar="KEY=VALUE",
        help="builder option, e.g. dropout=0 (repeatable)",
    )
    s.add_argument("--num-classes", type=CLASSES, help="default: the dataset's")
    s.add_argument(
        "--init-from",
        help="checkpoint to start from (staged training); late "
        "fusion: color=CKPT,hha=CKPT (each stream from a single-input net)",
    )
    s.add_argument("--backbone-weights", help="ImageNet weights: name, url or file")
    s.add_argument("--out", default="runs/fcn", help="run folder (checkpoints, logs, plots)")
    s.add_argument("--resume", action="store_true", help="continue the run in --out")
    s.add_argument("--eval-every", type=STEPS0, default=0, help="validate every N steps")
    s.add_argument("--ckpt-every", type=STEPS, default=100)
    s.add_argument("--log-every", type=STEPS, default=10)
    s.add_argument("--seed", type=_ranged(int, 0, 2**63 - 1), default=0)
    s.add_argument("--device", default="cpu", help="cpu or cuda")
    s.add_argument(
        "--amp",
        choices=("bf16", "fp16", "auto"),
        help="mixed precision: bf16 on CPU or CUDA, fp16 on CUDA; auto: bf16 only if a short "
        "measurement at the start finds it faster for this model here (cached in "
        "~/.cache/fcnseg/amp.json or $FCNSEG_CACHE/amp.json; delete the file to measure again)",
    )
    s.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster)")
    s.add_argument("--fast", action="store_true",
                   help="skip the reference layout's padding waste (fcnseg.fast.train): the "
                   "same loss and gradients, ~1.5x faster steps on VGG16/AlexNet FCNs")  # fmt: skip
    s.add_argument("--workers", type=WORKERS,
                   help="data loader processes (default: 0 on a CPU, up to 8 per GPU)")  # fmt: skip
    s.add_argument("--crop", type=_ranged(int, 1, 16384), help="random crop size for training")
    s.add_argument(
        "--nproc",
        type=_ranged(int, 1, 1024),
        default=1,
        help="processes (DistributedDataParallel via torchrun)",
    )
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help=cmd_eval.__doc__, description=cmd_eval.__doc__)
    s.add_argument("checkpoint", help="checkpoint file (last.pt / best.pt)")
    s.add_argument("--data", help="dataset (default: the one it was trained on)")
    s.add_argument("--data-option", action="append", metavar="KEY=VALUE")
    s.add_argument("--split", default="val")
    s.add_argument("--batch-size", type=BATCH, default=8)
    s.add_argument("--device", default="cpu")
    s.add_argument("--workers", type=WORKERS, default=0)
    s.add_argument(
        "--upper-bound",
        action="store_true",
        help="also the mean IU of ground truth down- and upsampled by 32/16/8",
    )
    s.add_argument("--factors", type=_int_list(1, 1024), default=[32, 16, 8])
    s.add_argument("--save-confusion", metavar="DIR", help="write confusion.csv and .png")
    s.add_argument("--fast", action="store_true", help=FAST_HELP)
    s.add_argument("--nproc", type=_ranged(int, 1, 1024), default=1,
                   help="processes, each scoring a share (torchrun); matrices summed")  # fmt: skip
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("bench", help=cmd_bench.__doc__, description=cmd_bench.__doc__)
    s.add_argument("--model", default="fcn8s_vgg16", help="a VGG16 or AlexNet FCN")
    s.add_argument("--size", type=_ranged(int, 1, 8192), default=500, help="square input side")
    s.add_argument("--width", type=WIDTH, default=1.0, help="channel multiplier")
    s.add_argument("--repeats", type=_ranged(int, 1, 1000), default=5)
    s.add_argument("--threads", type=_ranged(int, 1, 1024), help="torch threads (default: torch's)")
    s.add_argument("--retune", action="store_true", help="forget FastFCN's cached kernel "
                   "measurements (~/.cache/fcnseg/kernels.json) and measure again")  # fmt: skip
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("compare", help=cmd_compare.__doc__, description=cmd_compare.__doc__)
    s.add_argument("checkpoints", nargs="+", help="e.g. the FCN-32s, 16s and 8s checkpoints")
    s.add_argument("--data", help="dataset (default: the one they were trained on)")
    s.add_argument("--data-option", action="append", metavar="KEY=VALUE")
    s.add_argument("--split", default="val")
    s.add_argument("--n", type=_ranged(int, 1, 100), default=4, help="first N items of the split")
    s.add_argument(
        "--indices",
        type=_int_list(0, 10**9),
        help="items to show, e.g. 0,5,9 (instead of --n)",
    )
    s.add_argument("--device", default="cpu")
    s.add_argument("-o", "--out", default="compare.png", help="output PNG")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("predict", help=cmd_predict.__doc__, description=cmd_predict.__doc__)
    s.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or globs")
    s.add_argument("--model", required=True, help="checkpoint file or model name")
    s.add_argument("-o", "--out", default="predictions", help="output folder")
    s.add_argument("--device", help="cpu or cuda (default: cpu)")
    s.add_argument("--save-probs", action="store_true", help="also write <stem>_probs.npz")
    s.add_argument("--no-overlay", action="store_true", help="skip <stem>_overlay images")
    s.add_argument("--batch-size", type=_ranged(int, 1, 1024), default=4, help="images per pass")
    s.add_argument("--tile", type=_ranged(int, 0, 65536),
                   help="tile size for huge images (0: never; default: auto)")  # fmt: skip
    s.add_argument("--num-classes", type=CLASSES, help="for a model name (default 21)")
    s.add_argument("--fast", action="store_true", help=FAST_HELP)
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.add_argument("--skip-existing", action="store_true",
                   help="continue an interrupted run: inputs whose outputs all exist are "
                   "skipped, the rest written (replacing what the run left of them)")  # fmt: skip
    s.add_argument(
        "--nproc",
        type=_ranged(int, 1, 1024),
        default=1,
        help="processes, each segmenting a share of the inputs (torchrun)",
    )
    s.add_argument(
        "--workers", type=WORKERS, help="image-decoding processes per process (default: 0 on a CPU)"
    )
    s.add_argument("--net", help="for a release weights file (.caffemodel, the port's .pth): "
                   "which net, e.g. voc-fcn8s (default: the one its layers fit)")  # fmt: skip
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("hha", help=cmd_hha.__doc__, description=cmd_hha.__doc__)
    s.add_argument("depth", help="16-bit depth PNG (0 = missing: filled from the nearest pixel)")
    s.add_argument("--intrinsics", metavar="FX,FY,CX,CY", help="camera intrinsics in pixels")
    s.add_argument("--camera", choices=["nyud"], help="a known camera instead of --intrinsics")
    s.add_argument("--depth-scale", type=float, default=0.001,
                   help="metres per stored unit (default 0.001: millimetres)")  # fmt: skip
    s.add_argument("-o", "--out", required=True, help="output HHA PNG")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.set_defaults(func=cmd_hha)

    s = sub.add_parser("export", help=cmd_export.__doc__, description=cmd_export.__doc__)
    s.add_argument("model", help="checkpoint file or model name")
    s.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    s.add_argument("-o", "--out", help="output file (default: MODEL.onnx / MODEL.torchscript.pt)")
    s.add_argument("--opset", type=_ranged(int, 9, 21), default=17, help="ONNX opset (default 17)")
    s.add_argument(
        "--sizes",
        default="224x224,2x197x311,500x375",
        help="check sizes, HxW or NxHxW (default: 224x224,2x197x311,500x375)",
    )
    s.add_argument("--num-classes", type=CLASSES, help="for a model name (default 21)")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.add_argument("--net", help="for a release weights file (.caffemodel, the port's .pth): "
                   "which net, e.g. voc-fcn8s (default: the one its layers fit)")  # fmt: skip
    s.set_defaults(func=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    ok = False
    try:
        code = args.func(args)
        ok = code == 0
        return code
    except KeyboardInterrupt as e:  # training saves a checkpoint first and says so
        print(f"\n{e or 'interrupted'}", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError, KeyError, ImportError) as e:
        if isinstance(e, OSError) and e.strerror:  # without the "[Errno N]" prefix
            named = e.filename and str(e.filename) in e.strerror
            message = e.strerror + (f": '{e.filename}'" if e.filename and not named else "")
        else:
            message = str(e)
        return _fail(message, args.debug)
    except Exception as e:  # a bug of ours: still no bare traceback without --debug
        return _fail(f"internal error ({type(e).__name__}: {e}); rerun with --debug and "
                     f"report it", args.debug)  # fmt: skip
    finally:
        _close_process_group(ok)


def _close_process_group(ok: bool) -> None:
    """Under torchrun: leave the process group together before exit. A rank that exited while
    another still had gloo's connections open aborted it now and then ("terminate called
    without an active exception"): after a success every rank waits for the others first."""
    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def _fail(message: str, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"error: {message}" + ("" if debug else "  (--debug shows the traceback)"),
          file=sys.stderr)  # fmt: skip
    return 1
