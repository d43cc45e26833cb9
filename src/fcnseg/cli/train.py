"""`fcnseg train`: Train an FCN (or FCN-32s -> 16s -> 8s in stages with --stages); resumable."""

from __future__ import annotations

import argparse
import os

from .common import (
    BATCH,
    CLASSES,
    OVERWRITE_HELP,
    STEPS,
    STEPS0,
    WIDTH,
    WORKERS,
    int_list,
    key_values,
    launching,
    ranged,
    relaunch,
)


def add(sub) -> None:
    from ..data.build import DATA_HELP
    from ..recipes import RECIPES

    s = sub.add_parser("train", help=run.__doc__, description=run.__doc__)
    s.add_argument("--model", default="fcn8s_vgg16", help="model name (see `fcnseg models`)")
    s.add_argument(
        "--data",
        default="digits",
        help=f"{DATA_HELP} (default: digits). A release net sets the modality (nyud:, "
        "digits-rgbd) and the task (siftflow:, digits-rgbd) itself",
    )
    s.add_argument(
        "--data-option",
        action="append",
        metavar="KEY=VALUE",
        help="dataset option, e.g. n_train=3000 size=128; task=sem with a two-head net trains "
        "and scores that head alone (repeatable)",
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
        help="staged training, e.g. 32s,16s,8s: each stage starts from the last; the nets of "
        "--model's family (fcn8s_vgg16: fcn32s_vgg16 ...; voc-fcn8s: voc-fcn32s ...)",
    )
    s.add_argument(
        "--stage-steps",
        type=int_list(1, 10**9),
        help="steps per stage, e.g. 600,250,250 (default: --steps each)",
    )
    s.add_argument("--batch-size", type=BATCH, help="images per step (recipe's)")
    s.add_argument("--accumulate", type=BATCH, help="micro-batches per step")
    s.add_argument("--lr", type=ranged(float, 1e-30, 10.0), help="learning rate (recipe's)")
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
    s.add_argument("--seed", type=ranged(int, 0, 2**63 - 1), default=0)
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
    s.add_argument("--crop", type=ranged(int, 1, 16384), help="random crop size for training")
    s.add_argument("--tensorboard", action="store_true",
                   help="TensorBoard events in OUT/tb (staged: OUT/tb/<stage>): loss, lr, "
                   "images/s, data wait, validation metrics, per-class IU, predictions, "
                   "confusion matrix; `tensorboard --logdir OUT/tb` (pip install "
                   "'fcnseg[tb]')")  # fmt: skip
    s.add_argument(
        "--nproc",
        type=ranged(int, 1, 1024),
        default=1,
        help="processes (DistributedDataParallel via torchrun)",
    )
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.set_defaults(func=run)


def run(args) -> int:
    """Train an FCN (or FCN-32s -> 16s -> 8s in stages with --stages); resumable."""
    if launching(args):
        return relaunch(args)
    from ..engine import train, train_stages
    from ..models.registry import stage_names

    config = _train_config(args)
    if args.stages:
        steps = args.stage_steps or [args.steps] * len(args.stages)
        if len(steps) != len(args.stages):
            raise ValueError(f"--stage-steps gives {len(steps)} numbers for "
                             f"{len(args.stages)} stages")  # fmt: skip
        names = stage_names(args.model, args.stages)
        stages = list(zip(names, steps, strict=True))
        results = train_stages(config, stages, resume=args.resume, overwrite=args.overwrite)
    else:
        results = [{"model": args.model,
                    **train(config, resume=args.resume, overwrite=args.overwrite)}]  # fmt: skip
    if int(os.environ.get("RANK", "0")) != 0:  # --nproc: rank 0 says what the run did, once
        return 0
    rows = {r["model"]: r["metrics"] for r in results if r["metrics"]}
    if rows:
        from ..evaluate import format_table

        print(format_table(rows))
    for r in results:
        rate = r.get("images", 0) / r["seconds"] if r["seconds"] else 0.0
        print(f"{r['model']}: {r['checkpoint']} ({r['seconds']:.0f} s, {rate:.2f} images/s, "
              f"{r.get('data_wait', 0.0):.2f} s waiting for data)")  # fmt: skip
    return 0


def _stages(text: str) -> list[str]:
    """argparse type: staged training, e.g. 32s,16s,8s."""
    stages = text.split(",")
    bad = [s for s in stages if s not in ("32s", "16s", "8s")]
    if bad:
        raise argparse.ArgumentTypeError(f"{text}: stages are 32s, 16s and 8s, got {bad[0]}")
    return stages


def _train_config(args):
    from ..engine import TrainConfig

    options = {"width": args.width} if args.width != 1.0 else {}
    if args.layout != "reference":
        options["layout"] = args.layout
    options.update(key_values(args.model_option, "--model-option"))
    return TrainConfig(
        model=args.model, num_classes=args.num_classes, model_options=options,
        recipe=args.recipe, data=args.data, train_split=args.train_split,
        val_data=args.val_data, val_split=args.val_split,
        data_options=key_values(args.data_option),
        steps=args.steps, batch_size=args.batch_size, accumulate=args.accumulate, lr=args.lr,
        seed=args.seed, out=args.out, eval_every=args.eval_every, ckpt_every=args.ckpt_every,
        log_every=args.log_every, device=args.device, amp=args.amp,
        channels_last=args.channels_last, init_from=_init_from(args.init_from), fast=args.fast,
        backbone_weights=args.backbone_weights, workers=args.workers, crop=args.crop,
        tensorboard=args.tensorboard,
    )  # fmt: skip


def _init_from(text: str | None):
    """--init-from PATH, or per stream for late fusion: color=PATH,hha=PATH -> a dict."""
    if text is None or "=" not in text:
        return text
    pairs = [p.partition("=") for p in text.split(",")]
    if any(not k or not sep or not v for k, sep, v in pairs):
        raise ValueError(f"--init-from '{text}': write PATH, or STREAM=PATH,STREAM=PATH "
                         f"(e.g. color=runs/color/last.pt,hha=runs/hha/last.pt)")  # fmt: skip
    return {k: v for k, _, v in pairs}
