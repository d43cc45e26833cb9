"""The evaluation report's folder: index.html, report.json (what the page shows, to render it
again), per_image*.csv, charts/ and gallery/ (thumbnails), all linked relatively.

    DIR/index.html            the page (fcnseg.report.html)
    DIR/report.json           its summary: metrics, per-class and per-image scores, file names
    DIR/per_image.csv         every image's IU, worst first (per_image_<head>.csv: two heads)
    DIR/charts/*.png          per-class bars, confusion heat map, per-image IU histogram
    DIR/gallery/*.png         worst and best images: input | prediction | truth | errors
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np

from ..evaluate import plot_confusion, save_confusion
from ..safety import atomic_write
from .charts import class_bars, iu_histogram, palette, save_png, shown_input, strip
from .html import render_page
from .scores import PerImageScores, sort_scores, write_per_image

__all__ = [
    "eval_outputs",
    "image_ids",
    "per_image_path",
    "render_again",
    "write_report",
    "write_stages_page",
]

PAGE, SUMMARY = "index.html", "report.json"


def image_ids(dataset) -> list[str]:
    """The scored items' names, in order: the dataset's ids (a Subset's, mapped), else their
    numbers."""
    import torch

    indices, base = range(len(dataset)), dataset
    if isinstance(dataset, torch.utils.data.Subset):
        indices, base = dataset.indices, dataset.dataset
    ids = getattr(base, "ids", None)
    if ids is None or len(ids) < len(base):
        return [str(i) for i in indices]
    return [str(ids[i]) for i in indices]


def per_image_path(path: Path, head: str, several: bool) -> Path:
    """The CSV of one head: `path` itself for one head, `<stem>_<head>.csv` for several."""
    return path.with_name(f"{path.stem}_{head}{path.suffix}") if several and head else path


def write_report(
    out: Path, *, title: str, facts: list[tuple[str, str]], rows: list[dict], dataset,
    heads: dict[str, dict], per_image: PerImageScores, curves: list[Path] = (),
) -> Path:  # fmt: skip
    """Write the report folder and return index.html's path.

    `dataset`: the scored items (inputs for the gallery, ids); `rows`: [{"name", "metrics",
    "paper"}] for the metrics table; `heads`: {head: {"matrix", "metrics", "names"}} (head ""
    for one-head nets); `per_image`: the scores gathered during evaluation.
    """
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    ids = image_ids(dataset)
    several = len(heads) > 1
    summary = {"title": title, "facts": [list(f) for f in facts], "rows": rows, "heads": [],
               "curves": []}  # fmt: skip
    for head, h in heads.items():
        summary["heads"].append(_head(out, head, h, per_image, dataset, ids, several, title))
    for k, c in enumerate(curves):
        name = f"charts/curves_{k}.png"
        shutil.copyfile(c, out / name)
        summary["curves"].append(name)
    summary["seconds_to_write"] = round(time.perf_counter() - t0, 3)
    text = json.dumps(summary, indent=1, default=_plain, allow_nan=True)
    atomic_write(out / SUMMARY, lambda f: f.write(text.encode()), what="report summary")
    return _write_page(out, summary)


def write_stages_page(out: Path, *, title: str, facts: list, rows: list[dict],
                      figure: str | None) -> Path:  # fmt: skip
    """A staged run's page: each stage's metrics (rows with "page": its own report), the same
    images through every stage (`figure`, relative to `out`)."""
    summary = {"title": title, "facts": [list(f) for f in facts], "rows": [], "heads": [],
               "stages": {"rows": rows, "figure": figure}}  # fmt: skip
    text = json.dumps(summary, indent=1, default=_plain)
    atomic_write(out / SUMMARY, lambda f: f.write(text.encode()), what="report summary")
    return _write_page(out, summary)


def render_again(folder: Path) -> Path:
    """index.html written again from a report folder's report.json (e.g. by a newer fcnseg)."""
    path = folder / SUMMARY
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a report summary written by `fcnseg eval --report` "
                         f"({e})") from None  # fmt: skip
    return _write_page(folder, summary)


def _write_page(out: Path, summary: dict) -> Path:
    page = render_page(summary)
    return atomic_write(out / PAGE, lambda f: f.write(page.encode("utf-8")), what="report page")


def _head(out: Path, head: str, h: dict, per_image: PerImageScores, dataset, ids, several: bool,
          title: str) -> dict:  # fmt: skip
    m, names, matrix = h["metrics"], list(h["names"]), np.asarray(h["matrix"])
    tag = f"_{head}" if head else ""
    pal = palette(len(names))
    gt, pred = matrix.sum(1), matrix.sum(0)
    classes = [{"index": c, "name": names[c], "iu": _f(m["iu"][c]), "acc": _f(m["acc"][c]),
                "gt_pixels": int(gt[c]), "pred_pixels": int(pred[c]),
                "color": "#" + "".join(f"{int(v):02x}" for v in pal[c])}
               for c in range(len(names))]  # fmt: skip
    head_title = f"{title} ({head})" if head else title
    charts = out / "charts"
    class_bars(
        names, m["iu"], m["acc"], gt, charts / f"classes{tag}.png", f"per class: {head_title}"
    )
    plot_confusion(matrix, names, charts / f"confusion{tag}.png")
    save_confusion(matrix, names, out / f"confusion{tag}.csv")
    scores = per_image.scores[head]
    iu_histogram([s.mean_iu for s in scores], charts / f"per_image{tag}.png",
                 f"per-image IU: {head_title}")  # fmt: skip
    csv_name = f"per_image{tag}.csv"
    write_per_image(out / csv_name, scores, ids, names)
    gallery = {"worst": [], "best": []}
    for kind, picked in (("worst", per_image.worst(head)), ("best", per_image.best(head))):
        for rank, s in enumerate(picked):
            image = shown_input(dataset[s.order][0])
            p, t = per_image.maps(head, s.order)
            im = strip(image, p, t, len(names), per_image.ignore_index)
            name = f"gallery/{kind}{tag}_{rank:02d}.png"
            save_png(im, out / name)
            shown = np.unique(np.concatenate([p[: image.shape[0], : image.shape[1]].ravel(),
                                              np.asarray(s.classes, dtype=p.dtype)]))  # fmt: skip
            gallery[kind].append(
                {
                    "image": ids[s.order],
                    "mean_iu": s.mean_iu,
                    "pixel_acc": s.pixel_acc,
                    "strip": name,
                    "width": im.width,
                    "height": im.height,
                    "classes": [int(c) for c in shown if c < len(names)],
                }
            )
    return {
        "name": head, "title": head_title,
        "metrics": {k: _f(m[k]) for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")},
        "classes": classes, "images": len(scores),
        "bars": f"charts/classes{tag}.png", "confusion": f"charts/confusion{tag}.png",
        "confusion_csv": f"confusion{tag}.csv", "histogram": f"charts/per_image{tag}.png",
        "per_image_csv": csv_name,
        "per_image": [{"image": ids[s.order], "mean_iu": s.mean_iu, "pixel_acc": s.pixel_acc}
                      for s in sort_scores(scores)],
        "gallery": gallery,
    }  # fmt: skip


def _f(v) -> float:
    return float(v)


def _plain(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)


def eval_outputs(
    report: tuple[str | None, str | None], *, label: str, checkpoint: str, split: str, dataset,
    results: dict, metrics: dict, names: dict[str, list[str]], per_image: PerImageScores,
    seconds: float,
) -> None:  # fmt: skip
    """`fcnseg eval`'s --report DIR and --save-per-image CSV, from one evaluation's results
    (by head: `results` ConfusionMatrix, `metrics`, class `names`)."""
    from ..paper import paper_rows

    folder, csv_path = report
    several = len(results) > 1
    # a one-head model's scores come as head "" (also when it scores one named head)
    key = {h: h if h in per_image.scores else "" for h in results}
    if csv_path:
        ids = image_ids(dataset)
        for h in results:
            path = per_image_path(Path(csv_path), h, several)
            write_per_image(path, per_image.scores[key[h]], ids, names[h])
            print(f"per-image scores written to {path}")
    if not folder:
        return
    t0 = time.perf_counter()
    rows = []
    for h, m in metrics.items():
        rows.append({"name": f"{label} ({h})" if h else label, "metrics": _four(m)})
        if h in ("", "sem"):
            rows += [{"name": k, "metrics": v, "paper": True} for k, v in paper_rows(label).items()]
    if key != {h: h for h in results}:  # the scores' head "" under the head's name
        per_image.rename({"": next(iter(results))})
    heads = {h: {"matrix": results[h].matrix, "metrics": metrics[h], "names": names[h]}
             for h in results}  # fmt: skip
    facts = [("checkpoint", checkpoint), ("split", split), ("images", len(dataset)),
             ("scored in", f"{seconds:.1f} s"),
             ("written", time.strftime("%Y-%m-%d %H:%M"))]  # fmt: skip
    page = write_report(Path(folder), title=f"{label} on {split}", facts=facts, rows=rows,
                        dataset=dataset, heads=heads, per_image=per_image)  # fmt: skip
    print(f"report written to {page} ({time.perf_counter() - t0:.1f} s)")


def _four(m: dict) -> dict:
    return {k: float(m[k]) for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu") if k in m}
