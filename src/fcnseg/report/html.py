"""The evaluation report as one HTML page: plain string templates over the report's summary
(report.json), no script, no network. Images are files beside index.html, linked relatively,
so the folder can be moved or mailed whole."""

from __future__ import annotations

import math
from html import escape
from importlib import resources
from string import Template

__all__ = ["render_page"]

COLUMNS = (("pixel_acc", "pixel acc."), ("mean_acc", "mean acc."), ("mean_iu", "mean IU"),
           ("fw_iu", "f.w. IU"))  # fmt: skip


def render_page(summary: dict) -> str:
    """index.html's text for a report summary (see report.evaluation.write_report)."""
    body = [f"<h1>{escape(summary['title'])}</h1>", _facts(summary.get("facts", []))]
    if summary.get("stages"):
        body.append(_stages(summary["stages"]))
    if summary.get("rows"):
        body += ["<h2>Metrics</h2>", _metrics_table(summary["rows"])]
        if any(r.get("paper") for r in summary["rows"]):
            body.append('<p class="note">Italic rows: the paper\'s published figures for this '
                        "net, for comparison.</p>")  # fmt: skip
    for head in summary.get("heads", []):
        body.append(_head(head, several=len(summary["heads"]) > 1))
    if summary.get("curves"):
        body.append("<h2>Training</h2>" + _figs(summary["curves"], "training curves"))
    template = Template(resources.files(__package__).joinpath("page.html").read_text("utf-8"))
    return template.substitute(title=escape(summary["title"]), body="\n".join(body))


def _facts(facts: list) -> str:
    cells = "".join(f"<span><b>{escape(str(k))}:</b> {escape(str(v))}</span>" for k, v in facts)
    return f'<p class="facts">{cells}</p>'


def _pct(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * float(v):.1f}"


def _metrics_table(rows: list[dict]) -> str:
    head = "<tr><th>model</th>" + "".join(f"<th>{h}</th>" for _, h in COLUMNS) + "</tr>"
    lines = []
    for r in rows:
        cls = ' class="paper"' if r.get("paper") else ""
        cells = "".join(f"<td>{_pct(r['metrics'].get(k))}</td>" for k, _ in COLUMNS)
        lines.append(f"<tr{cls}><td>{escape(r['name'])}</td>{cells}</tr>")
    return f'<table class="metrics">{head}{"".join(lines)}</table>'


def _head(h: dict, several: bool) -> str:
    title = f"Head: {h['name']}" if several and h["name"] else "Per class"
    parts = [f'<h2 id="head-{escape(h["name"] or "main")}">{escape(title)}</h2>']
    if several:
        parts.append(_metrics_table([{"name": h["title"], "metrics": h["metrics"]}]))
    parts.append(_class_table(h))
    parts.append(_figs([h["bars"], h["confusion"]], "per-class chart and confusion matrix"))
    parts.append(f"<h3>Per image ({h['images']} images)</h3>")
    parts.append(_figs([h["histogram"]], "per-image IU histogram"))
    csv = h.get("per_image_csv")
    if csv:
        parts.append(f'<p>Every image\'s IU: <a href="{escape(csv)}">{escape(csv)}</a></p>')
    parts.append(_per_image_table(h["per_image"]))
    for kind in ("worst", "best"):
        items = h["gallery"].get(kind, [])
        if items:
            parts.append(_gallery(kind, items, h))
    return "\n".join(parts)


def _class_table(h: dict) -> str:
    rows = []
    order = sorted(range(len(h["classes"])), key=lambda i: _sort_key(h["classes"][i]["iu"]))
    for i in order:
        c = h["classes"][i]
        width = 0 if c["iu"] is None or math.isnan(c["iu"]) else round(120 * c["iu"])
        rows.append(
            f'<tr class="class"><td><span class="swatch" style="background:{c["color"]}">'
            f'</span>{escape(c["name"])}</td><td>{_pct(c["iu"])}</td>'
            f'<td style="text-align:left"><span class="bar" style="width:{width}px"></span></td>'
            f"<td>{_pct(c['acc'])}</td><td>{c['gt_pixels']:,}</td><td>{c['pred_pixels']:,}</td></tr>"
        )  # fmt: skip
    m = h["metrics"]
    mean = (f'<tr class="mean"><td>mean</td><td>{_pct(m.get("mean_iu"))}</td><td></td>'
            f'<td>{_pct(m.get("mean_acc"))}</td><td></td><td></td></tr>')  # fmt: skip
    head = ("<tr><th>class (worst IU first)</th><th>IU</th><th></th><th>acc.</th>"
            "<th>ground-truth pixels</th><th>predicted pixels</th></tr>")  # fmt: skip
    return f'<table class="per-class">{head}{"".join(rows)}<tfoot>{mean}</tfoot></table>'


def _sort_key(v) -> tuple:
    nan = v is None or math.isnan(v)
    return (nan, 0.0 if nan else v)


def _figs(paths: list[str], alt: str) -> str:
    imgs = "".join(f'<img src="{escape(p)}" alt="{escape(alt)}">' for p in paths if p)
    return f'<div class="figs">{imgs}</div>'


def _per_image_table(rows: list[dict]) -> str:
    lines = "".join(f"<tr><td>{escape(r['image'])}</td><td>{_pct(r['mean_iu'])}</td>"
                    f"<td>{_pct(r['pixel_acc'])}</td></tr>" for r in rows)  # fmt: skip
    table = (f'<div class="scroll"><table class="per-image"><tr><th>image (worst first)</th>'
             f"<th>mean IU</th><th>pixel acc.</th></tr>{lines}</table></div>")  # fmt: skip
    return f"<details><summary>every image's scores</summary>{table}</details>"


def _gallery(kind: str, items: list[dict], h: dict) -> str:
    colours = {c["index"]: c for c in h["classes"]}
    rows = []
    for it in items:
        legend = "".join(f'<span><span class="swatch" style="background:{colours[c]["color"]}">'
                         f'</span>{escape(colours[c]["name"])}</span>'
                         for c in it["classes"] if c in colours)  # fmt: skip
        rows.append(f'<tr><td><img src="{escape(it["strip"])}" alt="{escape(it["image"])}" '
                    f'width="{it["width"]}" height="{it["height"]}">'
                    f'<div class="caption">{escape(it["image"])}: mean IU {_pct(it["mean_iu"])}, '
                    f'pixel acc. {_pct(it["pixel_acc"])}</div>'
                    f'<div class="legend">{legend}</div></td></tr>')  # fmt: skip
    title = {"worst": "Worst images", "best": "Best images"}[kind]
    return (
        f"<h3>{title} (input | prediction | ground truth | errors: red wrong, white right, "
        f'grey not scored)</h3><table class="gallery {kind}">{"".join(rows)}</table>'
    )


def _stages(s: dict) -> str:
    parts = ["<h2>Stages side by side</h2>", _metrics_table(s["rows"])]
    links = " · ".join(f'<a href="{escape(r["page"])}">{escape(r["name"])}</a>'
                       for r in s["rows"] if r.get("page"))  # fmt: skip
    if links:
        parts.append(f"<p>Each stage's full report: {links}</p>")
    if s.get("figure"):
        parts.append("<h3>The same images through every stage</h3>")
        parts.append(_figs([s["figure"]], "stages on the same images"))
    return "\n".join(parts)
