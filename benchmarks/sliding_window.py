"""The paper's efficiency claim: one pass of a convolutionalized classifier vs sliding it.

Same classifier, same weights (random, fixed seed; speed does not depend on their values):
  per window  the classifier (torchvision layout) on every crop at stride 32, one at a time
  batched     all crops in one batch
  FCN         fcnseg.convolutionalize(classifier) once on the whole image
Columns: the score map size, the three times (median of --repeats, variants interleaved), the
FCN's speedup over both, and agreement: max |FCN - per window| / max |per window| (not zero:
a crop's zero padding replaces the real neighbouring pixels at its border, FCN.md section 1)
and the share of windows whose top-1 class agrees. The paper: ~5x on a 2015 GPU (AlexNet).

AlexNet crop: 224 and 227 both give a 1x1 output here (conv1 11/4 pad 2 -> 55 or 56 maps that
pool to 6x6), but at 224 the last conv1 column reads 2 pixels of zero padding where the FCN sees
image, so 227 (the Caffe crop) matches the FCN more closely: both are measured.

Run: python benchmarks/sliding_window.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from fcnseg.models import alexnet_classifier, convolutionalize, vgg16_classifier
from fcnseg.sliding import sliding_window_scores

CASES = [  # (classifier, crop, image)
    ("alexnet", 227, 384),
    ("alexnet", 227, 500),
    ("alexnet", 224, 500),
    ("vgg16", 224, 384),
    ("vgg16", 224, 500),
]


@torch.no_grad()
def run_case(name: str, crop: int, image: int, repeats: int) -> str:
    torch.manual_seed(0)
    clf = (alexnet_classifier() if name == "alexnet" else vgg16_classifier()).eval()
    fcn = convolutionalize(clf).eval()
    x = torch.randn(1, 3, image, image, generator=torch.Generator().manual_seed(1))
    dense = fcn(x)
    slid = sliding_window_scores(clf, x, crop)
    rows, cols = slid.shape[2:]
    n = rows * cols
    batched = sliding_window_scores(clf, x, crop, batch=n)
    d = dense[:, :, :rows, :cols]
    err = ((d - slid).abs().max() / slid.abs().max()).item()
    err_batch = ((batched - slid).abs().max() / slid.abs().max()).item()
    top1 = (d.argmax(1) == slid.argmax(1)).float().mean().item() * 100
    variants = {
        "fcn": lambda: fcn(x),
        "window": lambda: sliding_window_scores(clf, x, crop),
        "batched": lambda: sliding_window_scores(clf, x, crop, batch=n),
    }
    times = {k: [] for k in variants}
    for _ in range(repeats):  # interleaved, so machine drift hits all three
        for k, f in variants.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return (
        f"| {name} | {crop} | {image}x{image} | {tuple(dense.shape[2:])} / {rows}x{cols} | "
        f"{med['window']:.3f} | {med['batched']:.3f} | {med['fcn']:.3f} | "
        f"{med['window'] / med['fcn']:.1f}x | {med['batched'] / med['fcn']:.1f}x | "
        f"{err:.1e} | {top1:.0f}% | {err_batch:.0e} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", choices=["alexnet", "vgg16"], help="one classifier only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.machine()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, fp32, batch 1\n")  # fmt: skip
    print("| classifier | crop | image | FCN map / windows | per window s | batched s | FCN s "
          "| FCN vs per window | FCN vs batched | max rel err FCN vs windows | same top-1 "
          "| batched vs per window err |")  # fmt: skip
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, crop, image in CASES:
        if args.only in (None, name):
            print(run_case(name, crop, image, args.repeats), flush=True)


if __name__ == "__main__":
    main()
