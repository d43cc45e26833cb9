"""`fcnseg predict`: Segment images (files, folders, globs): label PNGs, overlays and
probabilities."""

from __future__ import annotations

import os
import sys

from .common import CLASSES, FAST_HELP, OVERWRITE_HELP, WORKERS, fast_model, ranged, relaunch


def add(sub) -> None:
    s = sub.add_parser("predict", help=run.__doc__, description=run.__doc__)
    s.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or globs")
    s.add_argument("--model", required=True, help="checkpoint file or model name")
    s.add_argument("-o", "--out", default="predictions", help="output folder")
    s.add_argument("--device", help="cpu or cuda (default: cpu)")
    s.add_argument("--save-probs", action="store_true", help="also write <stem>_probs.npz")
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


def run(args) -> int:
    """Segment images (files, folders, globs): label PNGs, overlays and probabilities."""
    import time
    from collections import Counter

    from torch import device as torch_device

    if args.nproc > 1:
        return relaunch(args)
    from ..checkpoint import load_model
    from ..feed import Dist, default_workers
    from ..predict import expand_inputs, predict_paths, resolve_device

    t0 = time.perf_counter()
    device = resolve_device(args.device)  # missing CUDA or inputs: fail before any work
    expand_inputs(args.paths)
    dist = Dist.from_env(str(device))  # under torchrun (--nproc): each process a share
    if dist.world > 1 and device.type == "cuda":
        device = torch_device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    model, _ = load_model(args.model, num_classes=args.num_classes, device=device, net=args.net)
    model = fast_model(model, args.fast, device)
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
