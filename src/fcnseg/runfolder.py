"""The run folder of a training run: its files, its lock, its log and plot, the checks a
resume makes, and the signals that stop a run cleanly.

    config.json   the resolved config (written once; a resume must match it)
    last.pt       model, optimizer, step, RNG state, config (atomic: temp file + rename)
    best.pt       the checkpoint with the best validation mean IU so far
    log.csv       one row per logged step: loss, lr, images/s, validation metrics
    curves.png    loss and validation mean IU over steps
    .lock         held (lockf) by the process training in the folder (fcnseg.safety.RunLock)
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import tempfile
from pathlib import Path

from .checkpoint import CheckpointError
from .safety import WriteError, atomic_write, open_append, save_figure

__all__ = ["RUN_FILES", "Interrupt", "Log", "check_restart", "check_same_run", "check_writable",
           "plot_curves", "progress_bar", "stopped_before_first_checkpoint",
           "write_json"]  # fmt: skip


class Log:
    """log.csv: rewritten once from the rows up to `start` (a resume), then appended row by row."""

    FIELDS = ("step", "epoch", "loss", "lr", "images_per_s", "pixel_acc", "mean_acc",
              "mean_iu", "fw_iu")  # fmt: skip

    def __init__(self, path: Path, start: int, enabled: bool):
        self.path, self.enabled = path, enabled
        self.rows: list[dict] = []
        if path.exists():
            with open(path) as f:  # a row cut short by a crash lacks its last field: dropped
                rows = [r for r in csv.DictReader(f) if r[self.FIELDS[-1]] is not None]
                self.rows = [r for r in rows if int(r["step"]) <= start]
        if enabled:
            text = io.StringIO()
            w = csv.DictWriter(text, self.FIELDS)
            w.writeheader()
            w.writerows(self.rows)
            atomic_write(path, lambda f: f.write(text.getvalue().encode()), what="training log")

    def add(self, **row) -> None:
        self.rows.append({k: row.get(k, "") for k in self.FIELDS})
        if self.enabled:
            try:  # appended: a row cut short by a crash or a full disk is dropped on reading
                with os.fdopen(open_append(self.path), "a", newline="") as f:  # never via a link
                    csv.DictWriter(f, self.FIELDS).writerow(self.rows[-1])
            except OSError as e:
                raise WriteError(e.errno, f"could not append to the training log {self.path} "
                                          f"({e.strerror}): free disk space, then --resume",
                                 str(self.path)) from e  # fmt: skip


RUN_FILES = ("last.pt", "best.pt", "config.json", "log.csv", "curves.png")


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out)  # a new name: O_EXCL
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(e.errno, f"cannot write the run folder '{out}' ({e.strerror}): choose "
                               f"another --out") from None  # fmt: skip


# options whose change would make the resumed run differ from one uninterrupted run
_SAME_RUN = ("model", "model_options", "recipe", "data", "data_options", "train_split",
             "val_data", "val_split", "crop", "seed", "batch_size", "accumulate", "lr",
             "num_classes", "world_size", "amp", "steps")  # fmt: skip


def check_same_run(ckpt: dict, now: dict, path: Path, recipe, defaults: dict) -> None:
    """Refuse a --resume whose options differ from the checkpoint's, saying why each matters."""
    saved = ckpt.get("config")
    if not isinstance(saved, dict) or not isinstance(ckpt.get("step"), int):
        raise CheckpointError(f"{path} lacks its run config or step (written by another tool?): "
                              f"start a new run with --init-from {path}")  # fmt: skip
    diff = [k for k in _SAME_RUN if saved.get(k, defaults.get(k)) != now.get(k)]
    if diff == ["steps"] and recipe.schedule != "poly":  # a fixed lr: more steps extend the run
        print(
            f"note: the run had {saved['steps']} steps, now {now['steps']}: the fixed learning "
            f"rate of recipe '{recipe.name}' makes this the same as one longer run"
        )
        return
    if diff:
        why = [f"{k}: {saved.get(k, defaults.get(k))!r} -> {now.get(k)!r}" for k in diff]
        extra = (" (the poly learning-rate schedule depends on the total steps)"
                 if "steps" in diff else "")  # fmt: skip
        raise ValueError(f"--resume with {path}: the run was started with other settings "
                         f"({'; '.join(why)}){extra}, so continuing would not give the run it "
                         f"started. Resume with the same settings, or start a new run in "
                         f"another --out with --init-from {path}")  # fmt: skip


def stopped_before_first_checkpoint(out: Path) -> dict | None:
    """The config.json of a run fcnseg started in `out` and that was stopped before its first
    checkpoint (no last.pt or best.pt, no row in log.csv, no curves.png), else None. Such a run
    lost nothing: it can be started again (docs/errors.md, run folders)."""
    if any((out / n).exists() or (out / n).is_symlink() for n in ("last.pt", "best.pt",
                                                                   "curves.png")):  # fmt: skip
        return None
    config, log = out / "config.json", out / "log.csv"
    if config.is_symlink() or log.is_symlink() or not config.is_file():
        return None
    try:
        saved = json.loads(config.read_text())
        rows = list(csv.DictReader(log.open())) if log.exists() else []
    except (OSError, ValueError, UnicodeDecodeError, csv.Error):
        return None
    ours = isinstance(saved, dict) and {"model", "steps", "seed", "out"} <= set(saved)
    return saved if ours and not rows else None


def check_restart(saved: dict, now: dict, out: Path, defaults: dict, overwrite: bool) -> None:
    """Starting again a run stopped before its first checkpoint: with the same settings it is
    the same run (a note says so); other settings need --overwrite (its config.json is
    replaced)."""
    now = json.loads(json.dumps(now, default=str))  # as config.json holds it (tuples: lists)
    diff = [k for k in _SAME_RUN if saved.get(k, defaults.get(k)) != now.get(k)]
    if diff and not overwrite:
        why = "; ".join(f"{k}: {saved.get(k, defaults.get(k))!r} -> {now.get(k)!r}"
                        for k in diff)  # fmt: skip
        raise FileExistsError(f"{out} holds a run that stopped before its first checkpoint "
                              f"(config.json, no last.pt) with other settings ({why}): pass "
                              f"--overwrite to start this one there instead, or choose another "
                              f"--out")  # fmt: skip
    print(f"note: {out} holds a run that stopped before its first checkpoint (config.json, no "
          f"last.pt): nothing was lost; starting it again"
          + (" with the new settings (--overwrite)" if diff else ""))  # fmt: skip


def write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=2, default=str).encode()
    atomic_write(path, lambda f: f.write(text), what="run config")


class Interrupt:
    """The first SIGINT or SIGTERM asks the loop to checkpoint and stop; a second one stops at
    once (the checkpoint on disk is then the previous one, whole)."""

    requested = False
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self._old = {}
        for sig in self.SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def progress_bar(it, enabled: bool, start: int, total: int):
    from tqdm import tqdm

    return tqdm(it, initial=start, total=total, desc="train", unit="step", dynamic_ncols=True,
                disable=not enabled)  # fmt: skip


def plot_curves(rows: list[dict], path: Path, title: str) -> None:
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = [int(r["step"]) for r in rows if r["loss"]]
    ax.plot(steps, [float(r["loss"]) for r in rows if r["loss"]], color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    ax.set_yscale("log")
    val = [(int(r["step"]), float(r["mean_iu"])) for r in rows if r["mean_iu"]]
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val, strict=True), "o-", color="tab:red")
        ax2.set_ylabel("val mean IU", color="tab:red")
        ax2.set_ylim(0, 1)
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path, what="training curves")
