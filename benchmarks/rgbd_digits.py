"""The paper's Tables 4 and 5 in miniature, on the RGB-D digit scenes (fcnseg.data.digits_rgbd).

Trains the release's nets (small width, from scratch, the "modern" recipe) through
`fcnseg.train`, each with score layers for the scenes' classes (num_classes: 11 digit classes;
3 geometric for the second head), one run per input, as Table 4 (NYUDv2):

    RGB                  nyud-fcn32s-color       colour
    depth                nyud-fcn32s-color-d     depth alone (its colour input blank: 0)
    RGBD (early fusion)  nyud-fcn32s-color-d     colour + depth, 4 channels
    HHA                  nyud-fcn32s-hha         HHA from the rendered depth
    RGB-HHA (late)       nyud-fcn32s-color-hha   two streams summed; from scratch, and (as the
                                                 release) each stream started from the RGB and
                                                 HHA runs (so it has trained longer in all)

and, as Table 5 (SIFT Flow), siftflow-fcn16s: one trunk, two heads (11 semantic + 3 geometric
classes, ground / raised digit / wall), the losses summed. Prints one table: the four metrics
of the semantic task on the validation scenes (`--task geo`: the nyud nets on the geometric
task instead; the two-head net: semantic, and the geometric pixel accuracy beside), the last
logged training loss, wall-clock and CPU seconds of each training run and its images/s, then
the paper's rows (FCN.md 10) for scale; the digit scenes are not NYUDv2, so only the ordering
compares. Asserts nothing; the machine is named with its load, as it is shared.

    .venv/bin/python benchmarks/rgbd_digits.py [--steps 150] [--batch 8] [--n-train 1200]
        [--n-val 100] [--size 96] [--scale 2.0,2.6] [--bold 1] [--width 0.0625]
        [--task sem|geo] [--only rgb,hha,...] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from fcnseg import TrainConfig, train
from fcnseg.data.build import open_dataset
from fcnseg.paper import paper_rows

SEM = 11  # the digit classes with background
# key -> (row label, net, data options, num_classes, init_from: {stream: run key} or None)
RUNS = {
    "rgb": ("RGB", "nyud-fcn32s-color", {"modality": "color"}, SEM, None),
    "depth": ("depth", "nyud-fcn32s-color-d",
              {"modality": "color-depth", "blank_color": True}, SEM, None),
    "rgbd": ("RGBD (early fusion)", "nyud-fcn32s-color-d", {"modality": "color-depth"}, SEM,
             None),
    "hha": ("HHA", "nyud-fcn32s-hha", {"modality": "hha"}, SEM, None),
    "rgb-hha": ("RGB-HHA (late fusion, scratch)", "nyud-fcn32s-color-hha",
                {"modality": "color-hha"}, SEM, None),
    "rgb-hha-init": ("RGB-HHA (late fusion, from RGB + HHA)", "nyud-fcn32s-color-hha",
                     {"modality": "color-hha"}, SEM, {"color": "rgb", "hha": "hha"}),
    "two-head": ("two heads: sem + geo (FCN-16s)", "siftflow-fcn16s",
                 {"modality": "color", "task": "both"}, {"sem": SEM, "geo": 3}, None),
}  # fmt: skip


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))  # fmt: skip
    except (OSError, subprocess.CalledProcessError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return (f"{name}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads")  # fmt: skip


def load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def prepare_data(args) -> dict:
    """Render both splits once (HHA included) so the runs share them; returns the seconds."""
    base = scene_options(args)
    times = {}
    for split in ("train", "val"):
        t0 = time.perf_counter()
        open_dataset("digits-rgbd", split, {**base, "modality": "color"})
        t1 = time.perf_counter()
        open_dataset("digits-rgbd", split, {**base, "modality": "hha"})
        times[split] = (t1 - t0, time.perf_counter() - t1)
    return times


def scene_options(args) -> dict:
    return {"n_train": args.n_train, "n_val": args.n_val, "size": args.size, "seed": args.seed,
            "scale": args.scale, "bold": args.bold}  # fmt: skip


def final_loss(folder: Path) -> float:
    """The last training loss logged in the run's log.csv."""
    import csv

    with open(folder / "log.csv") as f:
        return float([r for r in csv.DictReader(f) if r["loss"]][-1]["loss"])


def run(key: str, args, out: Path, done: dict) -> dict:
    label, net, data, num_classes, init = RUNS[key]
    if args.task == "geo" and "task" not in data:  # the single-task nets on the geometric task
        data, num_classes, label = {**data, "task": "geo"}, 3, f"{label}, geometric task"
    init_from = None
    if init is not None:
        missing = [k for k in init.values() if k not in done]
        if missing:
            raise SystemExit(f"run {key} starts from the runs {missing}: include them in --only")
        init_from = {stream: str(done[k]["checkpoint"]) for stream, k in init.items()}
    config = TrainConfig(
        model=net, model_options={"width": args.width}, num_classes=num_classes,
        data="digits-rgbd", recipe="modern", steps=args.steps, batch_size=args.batch,
        data_options={**scene_options(args), **data},
        seed=args.seed, out=str(out / key), log_every=max(args.steps // 10, 1),
        ckpt_every=args.steps, channels_last=True, init_from=init_from,
    )  # fmt: skip
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    result = train(config, progress=False, overwrite=True)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    m = result["metrics"]
    loss = final_loss(out / key)
    row = {"label": label, "net": net, "wall": wall, "cpu": cpu, "train_s": result["seconds"],
           "ips": args.steps * args.batch / result["seconds"], "geo": m.get("geo_pixel_acc"),
           "checkpoint": result["checkpoint"], "loss": loss,
           **{k: m[k] for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")}}  # fmt: skip
    print(f"  {key}: {format_row(row)}  (load {load()})", flush=True)
    return row


def format_row(r: dict) -> str:
    geo = "" if r["geo"] is None else f"{100 * r['geo']:.1f}"
    cells = [r["label"], f"`{r['net']}`",
             *(f"{100 * r[k]:.1f}" for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")),
             geo, f"{r['loss']:.3f}", f"{r['train_s']:.0f}", f"{r['cpu']:.0f}",
             f"{r['ips']:.1f}"]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--n-train", type=int, default=1200)
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--scale", type=lambda s: tuple(float(v) for v in s.split(",")),
                   default=(2.0, 2.6), help="digit scale range, e.g. 2.0,2.6")  # fmt: skip
    p.add_argument("--bold", type=int, default=1, help="stroke thickening (pixels at 28x28)")
    p.add_argument("--width", type=float, default=0.0625)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--task",
        choices=("sem", "geo"),
        default="sem",
        help="the task of the single-task (nyud) nets: the 11 digit classes (Table "
        "4's analogue) or the 3 geometric ones (ground, raised digit, wall)",
    )
    p.add_argument("--only", default=",".join(k for k in RUNS if k != "rgb-hha"),
                   help=f"runs, of {', '.join(RUNS)} (default: all but rgb-hha)")  # fmt: skip
    p.add_argument("--out", default=None, help="run folders (default: a temporary folder)")
    args = p.parse_args()
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in RUNS]
    if unknown:
        raise SystemExit(f"--only: unknown runs {unknown}; the runs are {', '.join(RUNS)}")
    print(f"# RGB-D digit scenes: {machine()}; load average {load()} at the start")
    print(f"# {args.n_train} train / {args.n_val} val scenes of {args.size}x{args.size} (digit "
          f"scale {args.scale}, bold {args.bold}), {args.steps} steps of batch {args.batch} "
          f"(recipe modern), width {args.width}, seed {args.seed}; nyud nets on task "
          f"{args.task}")  # fmt: skip
    times = prepare_data(args)
    for split, (render, hha) in times.items():
        print(f"# data {split}: rendered in {render:.1f} s, HHA in {hha:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        done: dict[str, dict] = {}
        for key in keys:
            done[key] = run(key, args, out, done)
    print()
    print("| input | net | pixel acc. | mean acc. | mean IU | f.w. IU | geo. acc. | last loss "
          "| train s | CPU s | img/s |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in done.values():
        print(format_row(r))
    print(f"\nload average at the end: {load()}")
    print("\nThe paper (NYUDv2 test, SIFT Flow test; FCN.md 10), for scale only:")
    seen = set()
    for r in done.values():
        for label, m in paper_rows(r["net"]).items():
            if label not in seen:
                seen.add(label)
                geo = f", geo. acc. {100 * m['geo_pixel_acc']:.1f}" if "geo_pixel_acc" in m else ""
                print(f"  {label}: {100 * m['pixel_acc']:.1f} / {100 * m['mean_acc']:.1f} / "
                      f"{100 * m['mean_iu']:.1f} / {100 * m['fw_iu']:.1f}{geo}")  # fmt: skip


if __name__ == "__main__":
    main()
