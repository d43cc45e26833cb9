"""The demo's training part: FCN-32s -> 16s -> 8s in stages on digit scenes, on a CPU.

The model keeps the paper's topology (VGG16 trunk, the three heads, staged training with
zero-initialised score layers and bilinear upsampling) at 1/8 of the channels and in the
"same" layout, trained from scratch with our "modern" recipe (AdamW, poly decay): the
paper's ImageNet initialisation and VOC data do not fit a 2-core CPU and 10 minutes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_model
from .data.build import make_loader, open_dataset
from .engine import TrainConfig, train_stages

__all__ = ["DIGITS_FULL", "DIGITS_QUICK", "train_digit_stages"]

# (stage steps 32s/16s/8s, dataset options): the full run fits the demo's 10-minute budget
# (measured: 32s 0.110, 16s 0.487, 8s 0.824 mean IU in 265 s on a shared 2-core CPU)
DIGITS_FULL = ((400, 300, 1200), {"n_train": 3000, "n_val": 300, "size": 128, "bold": 1,
                                  "scale": (2.5, 3.5)})  # fmt: skip
DIGITS_QUICK = ((6, 4, 6), {"n_train": 64, "n_val": 16, "size": 64, "bold": 1,
                            "scale": (1.5, 2.0)})  # fmt: skip
VARIANTS = ("fcn32s_vgg16", "fcn16s_vgg16", "fcn8s_vgg16")
TITLES = {"fcn32s_vgg16": "FCN-32s", "fcn16s_vgg16": "FCN-16s", "fcn8s_vgg16": "FCN-8s"}


def digits_config(out: Path, quick: bool) -> tuple[TrainConfig, tuple[int, ...]]:
    steps, data = DIGITS_QUICK if quick else DIGITS_FULL
    config = TrainConfig(
        model=VARIANTS[0], model_options={"width": 0.125, "layout": "same"}, recipe="modern",
        data="digits", data_options=dict(data), batch_size=16, out=str(out), ckpt_every=100,
        log_every=20, eval_every=200, amp="auto", channels_last=True, seed=0,
    )  # fmt: skip
    return config, steps


def train_digit_stages(out: Path, quick: bool) -> dict:
    """Train the three stages (or reuse them), score them, draw the figures.

    Returns {"table", "bound", "images", "seconds", "metrics"} for the report.
    """
    from .evaluate import evaluate, format_per_class, format_table, plot_confusion
    from .figures import compare_figure
    from .metrics import upper_bound

    config, steps = digits_config(out, quick)
    results = train_stages(config, list(zip(VARIANTS, steps, strict=True)), progress=not quick)
    val = open_dataset("digits", "val", config.data_options)
    from .report import PerImageScores

    models, rows, cms = {}, {}, {}
    per_image = PerImageScores(val.num_classes, keep=6)  # the last stage's: FCN-8s
    for r in results:
        model, _ = load_model(r["checkpoint"])
        models[TITLES[r["model"]]] = model
        loader = make_loader(val, 32, model.preprocessing)
        scores = per_image if r is results[-1] else None
        cms[r["model"]] = evaluate(model, loader, val.num_classes, per_image=scores)
        rows[TITLES[r["model"]]] = cms[r["model"]].compute()
    bound = upper_bound((val[i][1] for i in range(len(val))), val.num_classes,
                        factors=(32, 16, 8))  # fmt: skip
    images = [out / "compare.png", out / "confusion_fcn8s.png"]
    compare_figure(models, val, list(range(6)), images[0], class_names=val.class_names)
    plot_confusion(cms[VARIANTS[-1]].matrix, val.class_names, images[1])
    images += [Path(r["checkpoint"]).parent / "curves.png" for r in results]  # loss, mean IU
    images += _predictions(models["FCN-8s"], val, out / "predictions", n=4)
    page = _report_page(out / "report", rows, cms[VARIANTS[-1]], val, per_image)
    images = [str(p.relative_to(out.parent)) for p in images if p.exists()]  # report-relative
    return {
        "table": format_table(rows),
        "per_class": format_per_class(rows["FCN-8s"], val.class_names),
        "bound": format_table({f"stride {f}": m for f, m in bound.items()}),
        "images": images,
        "page": str(page.relative_to(out.parent)),
        "seconds": sum(r["seconds"] for r in results),
        "metrics": {k: v["mean_iu"] for k, v in rows.items()},
        "steps": dict(zip(VARIANTS, steps, strict=True)),
        "amp": {r["model"]: _amp_note(r) for r in results},
        "config": dataclasses.asdict(config),
    }


def _report_page(folder: Path, rows: dict, cm, val, per_image) -> Path:
    """FCN-8s's evaluation report (fcnseg.report): the stages' metrics, per class, per image,
    the worst and best scenes."""
    from .report.evaluation import write_report

    four = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")
    table = [{"name": k, "metrics": {m: float(v[m]) for m in four}} for k, v in rows.items()]
    heads = {"": {"matrix": cm.matrix, "metrics": rows["FCN-8s"], "names": val.class_names}}
    facts = [("data", "digit scenes (held out)"), ("images", len(val))]
    return write_report(folder, title="fcnseg demo: FCN-8s on digit scenes", facts=facts,
                        rows=table, dataset=val, heads=heads, per_image=per_image)  # fmt: skip


def _amp_note(result: dict) -> str:
    """What --amp auto chose for a stage, with the times it measured (s per fwd + bwd)."""
    choice = result.get("amp_choice")
    if choice is None:  # a stage reused from an earlier run: not measured this time
        return "reused from an earlier run"
    times = ", ".join(f"{k} {v:.3f} s" for k, v in choice.times.items())
    cached = "; cached" if choice.cached else ""
    return f"{choice.amp or 'fp32'} ({times}: {choice.reason}{cached})"


@torch.inference_mode()
def _predictions(model, dataset, folder: Path, n: int) -> list[Path]:
    """Coloured label maps (palette PNG, readable back as indices) of held-out scenes."""
    from PIL import Image

    from .data.io import write_mask

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        image, _ = dataset[i]
        pred = model(model.preprocessing.batch(image[None])).argmax(1)[0].numpy()
        write_mask(folder / f"scene{i}_fcn8s.png", pred.astype(np.uint8))
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"scene{i}.png")
        names += [folder / f"scene{i}.png", folder / f"scene{i}_fcn8s.png"]
    return names
