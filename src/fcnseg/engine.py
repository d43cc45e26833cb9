"""Training: plain functions over a typed config; every run resumable, every checkpoint whole.

A run lives in one folder:
    config.json   the resolved config (written once; a resume must match it)
    last.pt       model, optimizer, step, RNG state, config (atomic: temp file + rename)
    best.pt       the checkpoint with the best validation mean IU so far
    log.csv       one row per logged step: loss, lr, images/s, validation metrics
    curves.png    loss and validation mean IU over steps

Data order is a pure function of (seed, step): step s of epoch e takes its images from a
permutation seeded by (seed, e), so a run resumed at step s sees exactly the images an
uninterrupted run would, and with the RNG state restored, the same dropout masks too.
With several processes (torchrun), each takes a slice of every step's images and the loss
is normalized by the labelled pixels of the whole step, so K steps on N processes give the
weights of K steps on one with the same global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, model_state, save_checkpoint
from .config import TrainConfig, TrainingDiverged
from .evaluate import compute_metrics, scored_subset, select_head, to_device
from .feed import Dist, StepBatches, default_workers, labelled_pixels, step_indices
from .models import build_model
from .netdata import data_head, net_data_options, run_classes
from .recipes import Recipe, get_recipe
from .runfolder import (
    RUN_FILES,
    Interrupt,
    Log,
    check_restart,
    check_same_run,
    check_writable,
    plot_curves,
    progress_bar,
    stopped_before_first_checkpoint,
    write_json,
)
from .safety import (
    RunLock,
    RunLockedError,
    check_outputs,
)
from .threads import step_threads
from .weights import prepare

__all__ = [
    "TrainConfig",
    "TrainingDiverged",
    "make_optimizer",
    "net_data_options",
    "train",
    "train_stages",
]


# ------------------------------------------------------------------------- parts


def make_optimizer(model: nn.Module, recipe: Recipe, lr: float) -> torch.optim.Optimizer:
    """Weights at lr with decay; biases at lr x bias_lr_mult, decayed only if the recipe says.

    Upsampling layers: the final one stays bilinear (frozen); the 2x ones learn only if the
    recipe says so (the reference release froze them all).
    """
    final = {"upscore", "upscore16", "upscore8"}
    weights, biases = [], []
    for name, p in model.named_parameters():
        layer = name.split(".")[0]
        if layer.startswith("upscore") and (layer in final or not recipe.learn_upsampling):
            p.requires_grad_(False)
            continue
        (biases if name.endswith("bias") else weights).append(p)
    groups = [
        {"params": weights, "lr": lr, "weight_decay": recipe.weight_decay},
        {"params": biases, "lr": lr * recipe.bias_lr_mult,
         "weight_decay": recipe.weight_decay if recipe.bias_decay else 0.0},
    ]  # fmt: skip
    for g in groups:
        g["initial_lr"] = g["lr"]
    # fused: one kernel per parameter tensor instead of ~5 passes over memory; on CPU the SGD
    # momentum update of VGG16's 134M parameters takes 0.06 s instead of 0.30 s a step
    fused = all(p.device.type in ("cpu", "cuda") for p in weights + biases)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, fused=fused or None)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=fused or None)
    raise ValueError(f"recipe '{recipe.name}': unknown optimizer '{recipe.optimizer}'")


def _set_lr(opt: torch.optim.Optimizer, recipe: Recipe, step: int, steps: int) -> float:
    factor = (1 - step / steps) ** 0.9 if recipe.schedule == "poly" else 1.0
    for g in opt.param_groups:
        g["lr"] = g["initial_lr"] * factor
    return opt.param_groups[0]["lr"]


def _pixel_loss(logits, target, norm: float | dict = 1.0) -> torch.Tensor:
    """Sum over labelled pixels of the softmax cross-entropy (255 ignored), / `norm`.

    Several heads (dicts by head, SIFT Flow's sem + geo): the heads' losses summed with equal
    weight, as the release's two SoftmaxWithLoss layers; `norm` then one number per head.
    """
    if isinstance(logits, dict):
        return sum(_pixel_loss(logits[k], target[k], norm[k] if isinstance(norm, dict) else norm)
                   for k in logits)  # fmt: skip
    return F.cross_entropy(logits.float(), target, ignore_index=255, reduction="sum") / norm


def _flat(metrics: dict) -> dict:
    """Several heads' metrics -> the first head's (what best.pt and the log follow), with the
    other heads' pixel accuracy as `<head>_pixel_acc` (the paper's geometric accuracy)."""
    if "pixel_acc" in metrics:
        return metrics
    first, *others = metrics
    return {**metrics[first], **{f"{k}_pixel_acc": metrics[k]["pixel_acc"] for k in others},
            "heads": metrics}  # fmt: skip


# ------------------------------------------------------------------------- train


def train(
    config: TrainConfig, *, resume: bool = False, progress: bool = True, overwrite: bool = False
) -> dict:
    """Train one model; returns {"checkpoint", "best", "metrics", "steps", "seconds", "amp",
    "amp_choice"} (the last two: the precision that ran, and --amp auto's measurement).

    The run folder is locked while this runs (a second process training in it is refused).
    A new run refuses a folder that holds another run's files unless `overwrite`.
    """
    from .models.registry import check_model_name
    from .predict import resolve_device

    config.check()
    resolve_device(config.device)  # mistakes found before any folder is made
    check_model_name(config.model)
    if config.tensorboard:  # missing: one line saying what to install, before any work
        from .report.tensorboard import require_tensorboard

        require_tensorboard()
    out = Path(config.out)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 holds the folder's lock
        return _train(config, resume, progress, overwrite)
    new, lock_file = not out.exists(), out / ".lock"
    had_lock = lock_file.exists()
    check_writable(out)
    try:
        with RunLock(out):
            return _train(config, resume, progress, overwrite)
    except BaseException:
        if not had_lock and not isinstance(sys.exc_info()[1], RunLockedError):
            lock_file.unlink(missing_ok=True)  # a refused or failed start leaves no trace
            if new and not any(out.iterdir()):
                out.rmdir()
        raise


def _train(config: TrainConfig, resume: bool, progress: bool, overwrite: bool) -> dict:
    from .data.build import build_datasets, collate_items, make_loader
    from .evaluate import evaluate
    from .memory import keep_freed_memory
    from .predict import resolve_device

    keep_freed_memory()  # each step's large tensors reuse the last step's memory
    device = resolve_device(config.device)
    dist = Dist.from_env(config.device)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    recipe = get_recipe(config.recipe).for_model(config.model)
    if recipe.name != config.recipe and dist.rank == 0:
        print(f"note: {config.model} trains with the release's own solver, recipe "
              f"'{recipe.name}' ({recipe.description})")  # fmt: skip
    out = Path(config.out)
    last, best_path = out / "last.pt", out / "best.pt"
    # a run stopped before its first checkpoint (config.json alone) lost nothing: it restarts
    restart = None if last.exists() else stopped_before_first_checkpoint(out)
    if not (resume and last.exists()):  # a new run: another run's files are not ours to replace
        if last.exists() and not overwrite:
            raise FileExistsError(f"{out} already holds a run (last.pt): pass --resume to "
                                  f"continue it, --overwrite to start it again, or choose "
                                  f"another --out")  # fmt: skip
        ours = ("config.json", "log.csv") if restart is not None else ()
        check_outputs([(out / n, n) for n in RUN_FILES if n not in ours], overwrite=overwrite,
                      flag="--out")  # fmt: skip
        best_path.unlink(missing_ok=True)  # --overwrite: the old run's best is not this run's

    def for_net(spec: str, options: dict) -> dict:
        return net_data_options(config.model, spec, options)

    data_options = for_net(config.data, config.data_options)
    train_set, val_set, class_names = build_datasets(config, for_net)
    head = data_head(config.model, train_set)  # a two-head net on one head's targets
    num_classes = run_classes(config, train_set, class_names, head)
    batch = config.batch_size or recipe.batch_size
    accumulate = config.accumulate or recipe.accumulate
    if batch % (accumulate * dist.world):
        raise ValueError(f"batch_size {batch} must be a multiple of accumulate x processes "
                         f"= {accumulate} x {dist.world}")  # fmt: skip
    lr = config.lr or recipe.lr_for(config.model)  # the release's nets: their own (FCN.md 8)
    resolved = {**dataclasses.asdict(config), "num_classes": num_classes, "batch_size": batch,
                "accumulate": accumulate, "lr": lr, "world_size": dist.world,
                "data_options": data_options, "solver": recipe.name}  # fmt: skip
    if restart is not None:
        check_restart(restart, resolved, out, _defaults(), overwrite)
    dist.checks_done()  # --nproc: the check run (cli.launch) stops here, before any worker

    torch.manual_seed(config.seed)
    model = build_model(config.model, num_classes=num_classes,
                        backbone_weights=config.backbone_weights,
                        **config.model_options)  # fmt: skip
    if config.init_from is not None:  # says what it copied from where; refuses when nothing
        from .models.reference_init import initialize

        copied = initialize(model, config.init_from)
        if dist.rank == 0 and not (resume and last.exists()):
            print(copied)
    model.to(device)
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    optimizer = make_optimizer(model, recipe, lr)
    start, best_iu, kept_amp = 0, -1.0, ()
    if resume and last.exists():
        try:
            ckpt = load_checkpoint(last, map_location=device)
        except CheckpointError as e:
            raise CheckpointError(f"{e}. To resume anyway, copy {best_path.name} (if any) over "
                                  f"{last.name}, or start again without --resume in a new "
                                  f"--out") from None  # fmt: skip
        check_same_run(ckpt, resolved, last, recipe, _defaults())
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start, best_iu = ckpt["step"], ckpt.get("best_mean_iu", -1.0)
        if config.amp == "auto" and ckpt.get("amp_ran", "?") in (None, "bf16", "fp16"):
            kept_amp = (ckpt["amp_ran"],)  # --amp auto's choice is the run's: kept on resume
        if start >= config.steps:  # nothing to do: say so and touch nothing
            if dist.rank == 0:  # --nproc: said once
                print(f"nothing to do: {last} is already at step {start} of {config.steps}")
            return {"checkpoint": last, "best": best_path if best_path.exists() else last,
                    "metrics": ckpt.get("metrics", {}), "steps": start, "seconds": 0.0}  # fmt: skip
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    elif resume and dist.rank == 0:
        print(f"note: nothing to resume in {out} (no last.pt): starting a new run")
    if dist.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", resolved)
    net = model
    # on a CPU shared with other programs, each step runs on the faster of torch's threads and
    # the free cores (measured on the steps: the step's parallel regions wait for their
    # slowest thread, and whether fewer threads win depends on the model and its input)
    fitted = step_threads(device)
    if config.fast:  # the same forward and gradients, without the padding's waste
        from .fast.train import FastTrainFCN

        net = FastTrainFCN(model)
    if dist.world > 1:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=head is not None,  # the other head gets no gradient
        )  # fmt: skip

    def loss_of(logits, target, norm=1.0):  # one head of two (task=sem or geo): that head's
        return _pixel_loss(logits[head] if head else logits, target, norm)

    def checkpoint(step: int, path: Path = last, **extra) -> None:
        if dist.rank == 0:
            rng = {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            }
            save_checkpoint(path, {**model_state(model), "class_names": list(class_names),
                                   "optimizer": optimizer.state_dict(), "step": step,
                                   "config": resolved, "rng": rng, "best_mean_iu": best_iu,
                                   "amp_ran": amp_name, **extra})  # fmt: skip
            tb.flush()  # a killed run keeps every event up to its checkpoint

    def validate(step: int) -> dict:
        # fork_rng: validating (DataLoader seeds) must not change the training run's RNG
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            # each process scores its share; the matrices are summed (SIFT Flow: without its
            # two unannotated images)
            scored = dist.shard(scored_subset(val_set))
            loader = make_loader(scored, max(micro, 1), model.preprocessing, workers)
            scored_net = select_head(model, head)
            classes = num_classes[head] if head else num_classes
            result = dist.all_reduce(evaluate(scored_net, loader, classes, device=device))
            metrics = _flat(compute_metrics(result, val_set))
            tb.validation(step, metrics, result, class_names, getattr(val_set, "head_classes", {}))
            tb.predictions(step, model, val_set, head, device)
            return metrics

    log = Log(out / "log.csv", start, dist.rank == 0)
    tb = _tensorboard(config, out, start, resolved, dist.rank == 0)
    stop = Interrupt()
    per_epoch = max(len(train_set) // batch, 1)
    micro = batch // accumulate // dist.world
    workers = default_workers(device, dist.world) if config.workers is None else config.workers
    amp_name, choice = config.amp, None
    if amp_name == "auto" and kept_amp:  # the precision the run used, not a new measurement
        amp_name = kept_amp[0]
        if dist.rank == 0:
            print(f"amp auto: {amp_name or 'fp32'}, as the run chose at its start (kept on "
                  f"resume: {last})")  # fmt: skip
    elif amp_name == "auto":  # bf16 only where it measures faster here (fcnseg.amp)
        from .amp import auto_amp

        first = step_indices(start, len(train_set), batch, config.seed)[:micro]
        x, t = collate_items(train_set, first)  # a micro-batch of the run's shape
        x = to_device(prepare(model.preprocessing, to_device(x, device)), device, fmt)
        log_to = print if dist.rank == 0 else None
        try:
            choice = auto_amp(model, x, to_device(t, device), loss_of, name=config.model,
                              options=config.model_options, log=log_to)  # fmt: skip
        except KeyboardInterrupt:
            kept = (f"{last} (step {start}) is intact: continue with --resume" if start else
                    "no training step had run: run the same command again")  # fmt: skip
            raise KeyboardInterrupt(f"interrupted while measuring --amp auto (bf16 against "
                                    f"fp32, before step {start + 1}): nothing was lost; "
                                    f"{kept}") from None  # fmt: skip
        amp_name = choice.amp
        amp_name = amp_name if dist.sum(float(amp_name is not None)) == dist.world else None
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp_name or "")
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    bar = progress_bar(range(start, config.steps), progress and dist.rank == 0, start, config.steps)
    steps = StepBatches(train_set, start, config.steps, batch, micro, config.seed, dist)
    feed = steps.loader(workers, pin=device.type == "cuda")
    metrics, t0, seen, waited = {}, time.perf_counter(), 0, 0.0
    model.train()
    batches = iter(feed)
    with stop, contextlib.closing(tb):
        for step in bar:
            t_wait = time.perf_counter()
            fed, chunks = next(batches)  # ready, unless the workers fall behind
            waited += time.perf_counter() - t_wait
            assert fed == step, (fed, step)
            cur_lr = _set_lr(optimizer, recipe, step, config.steps)
            norm = labelled_pixels([t for _, t in chunks], dist) if recipe.loss == "mean" else 1.0
            with fitted():
                optimizer.zero_grad(set_to_none=True)
                total = 0.0
                for k, (x, t) in enumerate(chunks):
                    x = to_device(prepare(model.preprocessing, to_device(x, device)), device, fmt)
                    t = to_device(t, device)
                    sync = k == len(chunks) - 1 or dist.world == 1
                    ctx = net.no_sync() if not sync else contextlib.nullcontext()
                    with ctx, torch.autocast(device.type, amp, enabled=amp is not None):
                        loss = loss_of(net(x), t, norm) * dist.world  # DDP averages grads
                    if not torch.isfinite(loss):
                        raise TrainingDiverged(_diverged(step, loss.item(), cur_lr, recipe, last))
                    (scaler.scale(loss) if scaler else loss).backward()
                    total += float(loss.detach()) / dist.world
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
            total = dist.sum(total)
            seen += batch
            done = step + 1
            ips = seen / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{total:.4g}", img_s=f"{ips:.1f}")
            row = {}
            if (config.eval_every and done % config.eval_every == 0) or done == config.steps:
                metrics = validate(done)
                row = {k: f"{metrics[k]:.5f}" for k in ("pixel_acc", "mean_acc", "mean_iu",
                                                        "fw_iu")}  # fmt: skip
                if metrics["mean_iu"] > best_iu:
                    best_iu = metrics["mean_iu"]
                    checkpoint(done, best_path, metrics=_plain(metrics))
            if row or done % config.log_every == 0:
                log.add(step=done, epoch=f"{done / per_epoch:.3f}", loss=f"{total:.6g}",
                        lr=f"{cur_lr:.3g}", images_per_s=f"{ips:.2f}", **row)  # fmt: skip
                tb.step(done, loss=total, lrs=[g["lr"] for g in optimizer.param_groups],
                        images_per_s=ips, data_wait=waited)  # fmt: skip
            if done % config.ckpt_every == 0 or done == config.steps or stop.requested:
                checkpoint(done, metrics=_plain(metrics))
            if stop.requested:
                raise KeyboardInterrupt(f"interrupted at step {done}: checkpoint {last} "
                                        f"saved; continue with --resume")  # fmt: skip
    if dist.rank == 0:
        plot_curves(log.rows, out / "curves.png", config.model)
    return {
        "checkpoint": last,
        "best": best_path if best_path.exists() else last,
        "metrics": metrics,
        "steps": config.steps,
        "seconds": time.perf_counter() - t0,
        "images": seen,  # this run's steps x global batch (not counting earlier runs)
        "data_wait": waited,  # seconds the steps waited for their images (this process)
        "amp": amp_name,  # what ran (config "auto": the measured choice, its times in amp_choice)
        "amp_choice": choice,
    }


def _tensorboard(config: TrainConfig, out: Path, start: int, resolved: dict, rank0: bool):
    """The run's TensorBoard stream (a no-op without --tensorboard or off rank 0); a resumed run
    purges what the killed one wrote past its checkpoint, a new one what was there before."""
    from .report.tensorboard import TensorBoardLog

    folder = Path(config.tensorboard) if isinstance(config.tensorboard, str) else out / "tb"
    tb = TensorBoardLog(folder, start=start, enabled=bool(config.tensorboard) and rank0)
    if start == 0:
        tb.config(resolved)
    return tb


def _defaults() -> dict:
    """TrainConfig's defaults: what a checkpoint written before an option existed had."""
    return {f.name: f.default for f in dataclasses.fields(TrainConfig)
            if f.default is not dataclasses.MISSING}  # fmt: skip


def train_stages(
    config: TrainConfig, stages: list[tuple[str, int]], *, resume: bool = True, **kw
) -> list[dict]:
    """Staged training (FCN-32s -> 16s -> 8s): each stage starts from the previous one.

    `stages` is [(model name, steps), ...]; stage i runs in `config.out/<model name>` and is
    skipped when its last checkpoint already reached its steps; with `resume`, an unfinished
    stage continues from its last checkpoint (else an existing run folder is an error).
    """
    results, previous = [], config.init_from
    for name, steps in stages:
        out = Path(config.out) / name
        stage = dataclasses.replace(config, model=name, steps=steps, out=str(out),
                                    init_from=previous)  # fmt: skip
        if config.tensorboard:  # one stream per stage under the run's tb/
            root = config.tensorboard if isinstance(config.tensorboard, str) else None
            stage.tensorboard = str(Path(root or Path(config.out) / "tb") / name)
        last = out / "last.pt"
        done = last.exists() and load_checkpoint(last)["step"] >= steps
        if done:
            ckpt = load_checkpoint(last)
            res = {"checkpoint": last, "best": last, "metrics": ckpt.get("metrics", {}),
                   "steps": steps, "seconds": 0.0}  # fmt: skip
        else:
            res = train(stage, resume=resume and last.exists(), **kw)
        results.append({"model": name, **res})
        previous = str(res["checkpoint"])
    return results


# ------------------------------------------------------------------------- helpers


def _diverged(step: int, loss: float, lr: float, recipe: Recipe, last: Path) -> str:
    cause = (
        "the summed ('heavy') loss needs the tiny learning rates of that recipe"
        if recipe.loss == "sum"
        else "the learning rate is too high for this model and data, or an input holds NaN"
    )
    kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint yet"
    return (f"loss became {loss} at step {step + 1} (lr {lr:.3g}, recipe '{recipe.name}'): "
            f"likely {cause}. Lower --lr; {kept}")  # fmt: skip


def _plain(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, float | int)}
