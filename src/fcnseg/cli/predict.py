"""`fcnseg predict`: Segment images (files, folders, globs): label PNGs, overlays and
probabilities; depth / HHA paired by file name for the RGB-D nets, one set of files per head
for the two-head nets."""

from __future__ import annotations

import os
import sys

from .common import (
    CLASSES,
    FAST_HELP,
    OVERWRITE_HELP,
    WORKERS,
    fast_model,
    launching,
    ranged,
    relaunch,
)


def add(sub) -> None:
    s = sub.add_parser("predict", help=run.__doc__, description=run.__doc__)
    s.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or globs "
                   "(colour; nyud-fcn32s-hha without --depth or --hha: HHA images)")  # fmt: skip
    s.add_argument("--depth", action="append", metavar="SRC",
                   help="16-bit depth PNGs (millimetres, as NYUDv2): a folder, glob or file, "
                   "repeatable; each pairs with the image of the same name (nyud-fcn32s-color-d;"
                   " the HHA nets compute HHA from it with --camera or --intrinsics)")  # fmt: skip
    s.add_argument("--hha", action="append", metavar="SRC",
                   help="HHA PNGs (`fcnseg hha` makes them), paired by name as --depth "
                   "(nyud-fcn32s-color-hha, nyud-fcn32s-hha)")  # fmt: skip
    s.add_argument("--camera", choices=["nyud"],
                   help="the depth camera, to compute HHA from --depth")  # fmt: skip
    s.add_argument("--intrinsics", metavar="FX,FY,CX,CY",
                   help="the depth camera's intrinsics in pixels, instead of --camera")  # fmt: skip
    s.add_argument("--model", required=True, help="checkpoint file, weights file, or a name: "
                   "a release net (voc-fcn8s) or fcnseg name (fcn8s_vgg16) means its published "
                   "weights (fetched once into the cache)")  # fmt: skip
    s.add_argument("--untrained", action="store_true", help=UNTRAINED_HELP)
    s.add_argument("-o", "--out", default="predictions", help="output folder")
    s.add_argument("--device", help="cpu or cuda (default: cpu)")
    s.add_argument(
        "--save-probs",
        action="store_true",
        help="also write <stem>_probs.npz (SIFT Flow: <stem>_sem_probs.npz, <stem>_geo_probs.npz)",
    )
    s.add_argument("--no-overlay", action="store_true", help="skip <stem>_overlay images")
    s.add_argument("--batch-size", type=ranged(int, 1, 1024), default=4, help="images per pass")
    s.add_argument("--tile", type=ranged(int, 0, 65536),
                   help="tile size for huge images (0: never; default: auto)")  # fmt: skip
    s.add_argument("--num-classes", type=CLASSES, help="for a model name (default 21)")
    s.add_argument("--fast", action="store_true", help=FAST_HELP)
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.add_argument("--skip-existing", action="store_true",
                   help="continue an interrupted run: inputs whose outputs all exist are "
                   "skipped, the rest written (replacing what the run left of them)")  # fmt: skip
    s.add_argument(
        "--nproc",
        type=ranged(int, 1, 1024),
        default=1,
        help="processes, each segmenting a share of the inputs (torchrun)",
    )
    s.add_argument(
        "--workers", type=WORKERS, help="image-decoding processes per process (default: 0 on a CPU)"
    )
    s.add_argument("--net", help="for a release weights file (.caffemodel, the port's .pth): "
                   "which net, e.g. voc-fcn8s (default: the one its layers fit)")  # fmt: skip
    s.set_defaults(func=run)


UNTRAINED_HELP = (
    "with a model name: run the net with random weights instead of its published "
    "ones (tests, timing); every output then carries a warning"
)
FLAGS = {"depth": "--depth SRC", "hha": "--hha SRC",
         "camera": "--camera nyud or --intrinsics FX,FY,CX,CY"}  # fmt: skip


def _by_head(record: dict) -> dict[str, tuple[str, list[str]]]:
    """A result's {head: (labels file, classes present)}; head "" for a one-head net."""
    if isinstance(record["labels"], dict):
        return {h: (record["labels"][h], record["classes"][h]) for h in record["labels"]}
    return {"": (record["labels"], record["classes"])}


def run(args) -> int:
    """Segment images (files, folders, globs): label PNGs, overlays and probabilities; RGB-D
    nets pair each image with its depth or HHA file by name, two-head nets (SIFT Flow) write
    <stem>_sem.png and <stem>_geo.png."""
    import time
    from collections import Counter

    from torch import device as torch_device

    if launching(args):
        return relaunch(args)
    from ..checkpoint import load_model
    from ..data.hha import parse_intrinsics
    from ..feed import Dist, default_workers
    from ..predict import resolve_device
    from ..predict_folder import predict_paths
    from ..predict_inputs import expand_inputs, input_plan

    t0 = time.perf_counter()
    device = resolve_device(args.device)  # missing CUDA or inputs: fail before any work
    expand_inputs(args.paths, out_dir=args.out)  # outputs are never inputs
    camera = args.camera is not None or args.intrinsics is not None
    intrinsics = parse_intrinsics(args.intrinsics, args.camera) if camera else None
    dist = Dist.from_env(str(device))  # under torchrun (--nproc): each process a share
    if dist.world > 1 and device.type == "cuda":
        device = torch_device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    model, _ = load_model(args.model, num_classes=args.num_classes, device=device, net=args.net,
                          untrained=args.untrained)  # fmt: skip
    depth, hha = args.depth or [], args.hha or []
    # what the net takes against what was given, before any work, in the options' words
    input_plan(model, depth=" ".join(depth) or None, hha=" ".join(hha) or None,
               intrinsics=camera, flags=FLAGS)  # fmt: skip
    model = fast_model(model, args.fast, device)
    workers = default_workers(device, dist.world) if args.workers is None else args.workers
    results = predict_paths(model, args.paths, args.out, depth=depth, hha=hha,
                            intrinsics=intrinsics, device=device,
                            save_probs=args.save_probs, overlay=not args.no_overlay,
                            batch_size=args.batch_size, tile=args.tile,
                            overwrite=args.overwrite, skip_existing=args.skip_existing,
                            workers=workers, progress=dist.rank == 0,
                            # --nproc's check run: every process's outputs, then stop
                            shard=(0, 1) if dist.checking else (dist.rank, dist.world),
                            check_only=dist.checking)  # fmt: skip
    dist.checks_done()
    results = dist.gather(results)
    if dist.rank:
        return 0
    skipped = [r for r in results if r.get("skipped")]
    results = [r for r in results if not r.get("skipped")]
    if skipped:
        print(f"{len(skipped)} images already segmented in {args.out}: skipped")
    done = [r for r in results if r["ok"]]
    failed = [r for r in results if not r["ok"]]
    per_head = [_by_head(r) for r in done]  # {head: (labels file, class names)}
    for r, heads in zip(done, per_head, strict=True):
        h, w = r["size"]
        shown = "; ".join(f"{f}: {', '.join(c)}" for f, c in heads.values())
        print(f"  {r['input']}  {h}x{w}  -> {shown}")
        if r.get("warning"):
            print(f"  warning: {r['input']}: {r['warning']}", file=sys.stderr)
    seconds = time.perf_counter() - t0
    print(f"{len(done)} images segmented into {args.out} in {seconds:.1f} s")
    for head in per_head[0] if per_head else ():
        overall = Counter(c for heads in per_head for c in heads[head][1])
        print(f"{head + ' ' if head else ''}classes (images): "
              + ", ".join(f"{c} ({n})" for c, n in overall.most_common()))  # fmt: skip
    if failed:
        print(f"error: {len(failed)} of {len(results)} images failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r['error']}", file=sys.stderr)
        return 1
    return 0
