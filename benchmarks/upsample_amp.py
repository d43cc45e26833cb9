"""Issue 12's precision cliff: digit-scenes training steps, fp32 vs bf16, dense vs per-class.

Table 1: one optimizer step (zero_grad, forward, loss, backward, AdamW update) of the demo's
FCN-32s and FCN-8s (VGG16 at width 1/8, "same" layout, 128x128 real digit scenes, batch 16,
11 classes, channels_last, the "modern" recipe: 2x upsamplers learned, the final one fixed),
in fp32 and under bf16 autocast, with the upsamplers run densely (as before, forced here) and
per class (fcnseg.models.upsample, now the default wherever it is exact). All variants live in
one process and are timed interleaved, each round in a rotated order; median of --rounds, wall
seconds and CPU seconds of this process (all its threads: less inflated when other processes
compete for the cores; compare the load average printed).

Table 3 (--inference): evaluation forward of the full-size FCN-32s and FCN-8s (VGG16, reference
layout, 500x500, 21 classes, random weights), fp32, dense vs per-class upsampling, interleaved.

Table 2: what `--amp auto` chooses for each demo stage (fresh measurements, in a temporary
cache folder, so the user's ~/.cache/fcnseg/amp.json is neither read nor written).

Run: python benchmarks/upsample_amp.py [--rounds 7] [--threads N] [--inference]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fcnseg import amp
from fcnseg.data.build import build_datasets, collate_items
from fcnseg.demo_digits import VARIANTS, digits_config
from fcnseg.engine import _pixel_loss, make_optimizer
from fcnseg.models import build_model
from fcnseg.models.upsample import ClassUpsample
from fcnseg.recipes import get_recipe


def batch_like_the_demo() -> tuple[torch.Tensor, torch.Tensor, object]:
    config, _ = digits_config(Path(tempfile.gettempdir()) / "unused", quick=False)
    config.data_options = {**config.data_options, "n_train": 32, "n_val": 4}
    train_set, _, _ = build_datasets(config)
    x, t = collate_items(train_set, list(range(config.batch_size)))
    return x, t, config


def force_dense(model: torch.nn.Module) -> torch.nn.Module:
    """The old behaviour: every upsampler runs as the dense (C, C, k, k) transposed conv."""
    for m in model.modules():
        if isinstance(m, ClassUpsample):
            m.per_class_kernel = lambda: None
    return model


def make_case(name: str, config, x: torch.Tensor, dense: bool, bf16: bool):
    torch.manual_seed(0)
    model = build_model(name, num_classes=11, **config.model_options)
    model.to(memory_format=torch.channels_last).train()
    if dense:
        force_dense(model)
    recipe = get_recipe(config.recipe)
    opt = make_optimizer(model, recipe, recipe.lr_for(name))
    xb = model.preprocessing.batch(x).contiguous(memory_format=torch.channels_last)

    def step(target: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = _pixel_loss(model(xb), target) / max(int((target != 255).sum()), 1)
        loss.backward()
        opt.step()

    return step


def table1(rounds: int) -> None:
    x, t, config = batch_like_the_demo()
    cols = [("dense", False), ("dense", True), ("per-class", False), ("per-class", True)]
    print("\n| model | upsampler | fp32 s/step | bf16 s/step | bf16 / fp32 | fp32 cpu-s | "
          "bf16 cpu-s | bf16 / fp32 (cpu) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in ("fcn32s_vgg16", "fcn8s_vgg16"):
        steps = {c: make_case(name, config, x, c[0] == "dense", c[1]) for c in cols}
        for s in steps.values():
            s(t)  # warm-up: oneDNN primitives, optimizer state
        times, cpu = {c: [] for c in cols}, {c: [] for c in cols}
        for r in range(rounds):
            for c in cols[r % len(cols) :] + cols[: r % len(cols)]:
                t0, c0 = time.perf_counter(), time.process_time()
                steps[c](t)
                times[c].append(time.perf_counter() - t0)
                cpu[c].append(time.process_time() - c0)
        med = {c: statistics.median(v) for c, v in times.items()}
        mcpu = {c: statistics.median(v) for c, v in cpu.items()}
        for up in ("dense", "per-class"):
            f, b = med[(up, False)], med[(up, True)]
            fc, bc = mcpu[(up, False)], mcpu[(up, True)]
            print(f"| {name} | {up} | {f:.3f} | {b:.3f} | {b / f:.2f} | {fc:.3f} | {bc:.3f} | "
                  f"{bc / fc:.2f} |")  # fmt: skip
        base = med[("dense", False)]
        best = min(med, key=med.get)
        print(f"| {name} | best: {best[0]} {'bf16' if best[1] else 'fp32'} | | | "
              f"{base / med[best]:.2f}x vs dense fp32 | | | |")  # fmt: skip


def table2(rounds: int) -> None:
    x, t, config = batch_like_the_demo()
    print("\n| demo stage | fp32 s (fwd+bwd) | bf16 s (fwd+bwd) | --amp auto | why |")
    print("|---|---:|---:|---|---|")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["FCNSEG_CACHE"] = cache
        for name in VARIANTS:
            torch.manual_seed(0)
            model = build_model(name, num_classes=11, **config.model_options)
            model.to(memory_format=torch.channels_last)
            recipe = get_recipe(config.recipe)
            make_optimizer(model, recipe, recipe.lr_for(name))  # freezes what training freezes
            xb = model.preprocessing.batch(x).contiguous(memory_format=torch.channels_last)
            c = amp.auto_amp(model, xb, t, _pixel_loss, name=name, options=config.model_options,
                             rounds=rounds, log=None)  # fmt: skip
            print(f"| {name} | {c.times['fp32']:.3f} | {c.times['bf16']:.3f} | "
                  f"{c.amp or 'fp32'} | {c.reason} |")  # fmt: skip
    del os.environ["FCNSEG_CACHE"]


@torch.no_grad()
def table3(rounds: int) -> None:
    print("\n| model, 500x500 eval fp32 | dense s | per-class s | speed-up | max rel. diff |")
    print("|---|---:|---:|---:|---:|")
    x = torch.randn(1, 3, 500, 500)
    for name in ("fcn32s_vgg16", "fcn8s_vgg16"):
        torch.manual_seed(0)
        model = build_model(name, num_classes=21).eval()
        for p in model.parameters():  # score layers non-zero, so the upsamplers see signal
            if p.abs().max() == 0:
                p.normal_(0, 0.01)
        models = {False: model, True: force_dense(copy.deepcopy(model))}
        ref, fast = models[True](x), models[False](x)  # also the warm-up
        rel = float((ref - fast).abs().max() / ref.abs().max())
        times = {True: [], False: []}
        for r in range(rounds):
            for dense in (True, False) if r % 2 == 0 else (False, True):
                t0 = time.perf_counter()
                models[dense](x)
                times[dense].append(time.perf_counter() - t0)
        d, f = statistics.median(times[True]), statistics.median(times[False])
        print(f"| {name} | {d:.3f} | {f:.3f} | {d / f:.2f}x | {rel:.1e} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--inference", action="store_true", help="also table 3 (full-size eval)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{amp.machine_name('cpu')}; torch {torch.__version__}; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} at start")  # fmt: skip
    table1(args.rounds)
    table2(max(3, args.rounds // 2))
    if args.inference:
        table3(max(3, args.rounds // 2))
    print(f"\nload average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
