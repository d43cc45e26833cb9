"""`fcnseg report RUN_OR_EVAL_DIR`: the HTML evaluation report of a training run (staged runs:
every stage, side by side on the same images), or an `eval --report` folder's page again."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import BATCH, OVERWRITE_HELP, WORKERS, ranged


def add(sub) -> None:
    from ..data.build import DATA_HELP

    s = sub.add_parser("report", help=run.__doc__, description=run.__doc__)
    s.add_argument("folder", help="a training run (its best.pt, else last.pt; a staged run: each "
                   "stage's), or a folder written by `fcnseg eval --report`")  # fmt: skip
    s.add_argument("--out", help="report folder (default: RUN/report; an eval report's own)")
    s.add_argument("--data", help=f"{DATA_HELP} (default: the run's validation data)")
    s.add_argument("--split", help="default: the run's validation split")
    s.add_argument("--batch-size", type=BATCH, default=8)
    s.add_argument("--device", default="cpu")
    s.add_argument("--workers", type=WORKERS, default=0)
    s.add_argument("--gallery", type=ranged(int, 0, 200), default=8,
                   help="worst and best images shown per head (default 8 each)")  # fmt: skip
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.set_defaults(func=run)


def run(args) -> int:
    """Write the HTML evaluation report of a training run (staged: every stage, side by side),
    or write an `eval --report` folder's page again from its report.json."""
    folder = Path(args.folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder}: pass a training run's --out, or a folder "
                                f"written by `fcnseg eval --report`")  # fmt: skip
    if (folder / "report.json").is_file() and not _checkpoint(folder):
        from ..report.evaluation import render_again

        page = render_again(folder)
        print(f"report written to {page}")
        return 0
    out = Path(args.out) if args.out else folder / "report"
    single = _checkpoint(folder)
    if single:
        return _eval(args, single, out)
    stages = _stages(folder)
    if not stages:
        raise FileNotFoundError(f"{folder} holds no checkpoint (best.pt, last.pt), no stages "
                                f"(<stage>/last.pt) and no report.json: pass a training run's "
                                f"--out or an `eval --report` folder")  # fmt: skip
    for name, ckpt in stages:
        code = _eval(args, ckpt, out / name)
        if code:
            return code
    page = _stage_page(args, folder, out, stages)
    print(f"stages report written to {page}")
    return 0


def _checkpoint(folder: Path) -> Path | None:
    for name in ("best.pt", "last.pt"):
        if (folder / name).is_file():
            return folder / name
    return None


def _stages(folder: Path) -> list[tuple[str, Path]]:
    """A staged run's stages, coarsest first (32s, 16s, 8s; others by name)."""
    import re

    found = [(d.name, c) for d in sorted(folder.iterdir()) if d.is_dir() and (c := _checkpoint(d))]

    def stride(name: str) -> int:
        m = re.search(r"(\d+)s", name)
        return -int(m.group(1)) if m else 0

    return sorted(found, key=lambda s: (stride(s[0]), s[0]))


def _eval_args(args, ckpt: Path, out: Path) -> argparse.Namespace:
    """`fcnseg eval CKPT --report OUT` with this command's options and the run's val data."""
    from . import eval as eval_

    config = json.loads((ckpt.parent / "config.json").read_text()) \
        if (ckpt.parent / "config.json").is_file() else {}  # fmt: skip
    argv = ["eval", str(ckpt), "--report", str(out), "--gallery", str(args.gallery),
            "--batch-size", str(args.batch_size), "--device", args.device,
            "--workers", str(args.workers),
            "--split", args.split or config.get("val_split") or "val"]  # fmt: skip
    data = args.data or config.get("val_data")
    if data:
        argv += ["--data", data]
    if args.overwrite:
        argv.append("--overwrite")
    parser = argparse.ArgumentParser(prog="fcnseg")
    eval_.add(parser.add_subparsers())
    return parser.parse_args(argv)


def _eval(args, ckpt: Path, out: Path) -> int:
    eval_args = _eval_args(args, ckpt, out)
    return eval_args.func(eval_args)


def _stage_page(args, folder: Path, out: Path, stages: list[tuple[str, Path]]) -> Path:
    """The staged run's page: each stage's metrics, the same images through every stage (the
    last stage's worst and best), links to each stage's full report."""
    from ..checkpoint import load_model
    from ..evaluate import scored_subset
    from ..figures import compare_figure
    from ..report.evaluation import image_ids, write_stages_page
    from .common import checkpoint_dataset

    rows, models, ckpt_last = [], {}, {}
    for name, ckpt in stages:
        summary = json.loads((out / name / "report.json").read_text())
        for r in summary["rows"]:
            if not r.get("paper"):
                rows.append({**r, "page": f"{name}/index.html"})
        models[name], ckpt_last = load_model(ckpt, device=args.device)
    last = json.loads((out / stages[-1][0] / "report.json").read_text())
    eval_args = _eval_args(args, stages[-1][1], out)
    _, dataset = checkpoint_dataset(eval_args, ckpt_last, models[stages[-1][0]])
    scored = scored_subset(dataset)
    ids = image_ids(scored)
    gallery = last["heads"][0]["gallery"]
    wanted = [g["image"] for g in gallery["worst"][:3] + gallery["best"][:1]]
    base = getattr(scored, "indices", range(len(dataset)))
    indices = [base[ids.index(w)] for w in dict.fromkeys(wanted) if w in ids]
    figure = None
    if indices:
        figure = "stages.png"
        names = getattr(dataset, "class_names", None)
        compare_figure(models, dataset, indices, out / figure, class_names=names,
                       device=args.device)  # fmt: skip
    facts = [("run", str(folder)), ("stages", ", ".join(n for n, _ in stages)),
             ("split", eval_args.split), ("images", len(scored))]  # fmt: skip
    return write_stages_page(out, title=f"{folder.name}: stages", facts=facts, rows=rows,
                             figure=figure)  # fmt: skip
