"""Checkpoints: everything a run needs to resume, written so that none is ever half-written.

A checkpoint is one `torch.save` dict:
    format          "fcnseg-checkpoint-1"
    model_name      a `build_model` name, e.g. "fcn8s_vgg16"
    model_options   the builder's options (width, layout, ...)
    num_classes     int; class_names: list[str]
    preprocessing   the `Preprocessing` fields the model was trained with
    model           state_dict (reference layer names)
    optimizer, step, epoch, config, metrics, rng   (training runs only)

Writes go to a temporary file in the same folder, are flushed to disk, then renamed over the
target: a crash or a full disk leaves the previous checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from .models import build_model, list_models
from .models.registry import load_checked
from .weights import Preprocessing

__all__ = ["FORMAT", "CheckpointError", "load_checkpoint", "load_model", "save_checkpoint"]

FORMAT = "fcnseg-checkpoint-1"
_REQUIRED = ("model_name", "model_options", "num_classes", "model")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Atomically write `state` (see the module docstring) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer that was killed
        if stale != tmp and not _alive(stale.name.split(".")[-2]):
            stale.unlink(missing_ok=True)
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(
            e.errno,
            f"could not write checkpoint {path}: {e.strerror or e}. The previous checkpoint "
            f"(if any) is intact; free disk space or choose another --out",
        ) from e
    return path


def _first_sentence(e: BaseException, limit: int = 120) -> str:
    """The first sentence of an error: torch's zip reader appends a paragraph of advice."""
    line = (str(e).splitlines() or [""])[0]
    return line.split(". ")[0][:limit]


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint`; detect truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"checkpoint '{path}' ({path.stat().st_size} bytes) is truncated or corrupt "
            f"({type(e).__name__}: {_first_sentence(e)}): use an earlier checkpoint of the run"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"'{path}' is not an fcnseg checkpoint (no format '{FORMAT}'). For a bare state "
            f"dict use build_model(name, weights='{path}')"
        )
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint '{path}' lacks {', '.join(missing)}")
    return ckpt


def model_state(model: nn.Module) -> dict:
    """The model part of a checkpoint: how to rebuild it and its weights."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    pre = getattr(model, "preprocessing", None)
    return {
        "model_name": model.name,
        "model_options": dict(getattr(model, "options", {})),
        "num_classes": model.num_classes,
        "preprocessing": dataclasses.asdict(pre) if pre is not None else None,
        "model": model.state_dict(),
    }


def load_model(
    source: str | Path, *, num_classes: int | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """A model from a checkpoint file, or a fresh one from a registered name.

    Returns (model in eval mode on `device`, checkpoint dict or {} for a name).
    """
    if str(source) in list_models():
        model = build_model(str(source), num_classes=num_classes or 21)
        return model.to(device).eval(), {}
    if not Path(source).is_file():
        close = difflib.get_close_matches(Path(source).name, list_models(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise CheckpointError(
            f"'{source}' is neither a checkpoint file nor a model name.{hint} Valid names: "
            f"{', '.join(list_models())}"
        )
    ckpt = load_checkpoint(source)
    if num_classes is not None and num_classes != ckpt["num_classes"]:
        raise CheckpointError(
            f"checkpoint '{source}' has {ckpt['num_classes']} classes, not num_classes="
            f"{num_classes}: drop the option or pass {ckpt['num_classes']}"
        )
    options = ckpt["model_options"]
    model = build_model(ckpt["model_name"], num_classes=ckpt["num_classes"], **options)
    load_checked(model, ckpt["model"], f"checkpoint '{source}'")
    if ckpt.get("preprocessing"):
        p = ckpt["preprocessing"]
        model.preprocessing = Preprocessing(
            p["channel_order"], p["scale"], tuple(p["mean"]), tuple(p["std"])
        )
    model.class_names = ckpt.get("class_names")
    return model.to(device).eval(), ckpt
