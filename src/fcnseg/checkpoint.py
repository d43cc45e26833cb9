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
import math
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from .models.load import load_checked
from .models.reference import build_reference, nets_fitting
from .models.registry import build_model, list_models
from .safety import atomic_write, unreadable
from .weights import Preprocessing

__all__ = ["FORMAT", "CheckpointError", "load_checkpoint", "load_model", "save_checkpoint"]

FORMAT = "fcnseg-checkpoint-1"
_REQUIRED = ("model_name", "model_options", "num_classes", "model")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Atomically write `state` (see the module docstring) to `path`.

    Any failure (a full disk makes torch raise RuntimeError, not OSError) removes the temporary
    file and raises `WriteError` naming `path`; a previous checkpoint there is intact.
    """
    return atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f),
                        what="checkpoint", size=_expected_size(path, state))  # fmt: skip


def _expected_size(path: Path, state: dict) -> int:
    """The bytes a checkpoint will take: its tensors' bytes, or the previous file's size."""
    tensors: list[torch.Tensor] = []

    def walk(x) -> None:
        if isinstance(x, torch.Tensor):
            tensors.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list | tuple):
            for v in x:
                walk(v)

    walk(state)
    try:
        before = Path(path).stat().st_size
    except OSError:
        before = 0
    return max(sum(t.nelement() * t.element_size() for t in tensors), before)


def _first_sentence(e: BaseException, limit: int = 120) -> str:
    """The first sentence of an error: torch's zip reader appends a paragraph of advice."""
    line = (str(e).splitlines() or [""])[0]
    return line.split(". ")[0][:limit]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint`; detect truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' not found")
    try:  # weights_only: tensors and plain types, never arbitrary pickled objects (SECURITY.md)
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise CheckpointError(unreadable(path, "checkpoint")) from None
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
    problem = _field_problem(ckpt)
    if problem:
        raise CheckpointError(f"checkpoint '{path}': {problem}. It was not written by fcnseg or "
                              f"was edited: use another checkpoint of the run")  # fmt: skip
    return ckpt


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _field_problem(ckpt: dict) -> str | None:
    """What is wrong with a checkpoint's fields (types and ranges), or None."""
    n = ckpt["num_classes"]
    checks = [
        (isinstance(ckpt["model_name"], str), "model_name must be a string"),
        (isinstance(ckpt["model_options"], dict)
         and all(isinstance(k, str) for k in ckpt["model_options"]),
         "model_options must be a dict of option names"),
        (all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 65536
             for c in (n.values() if isinstance(n, dict) else [n])),
         "num_classes must be an integer in 1..65536 (or one per head)"),
        (isinstance(ckpt["model"], dict)
         and all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()),
         "model must be a state dict of tensors"),
        (ckpt.get("class_names") is None
         or (isinstance(ckpt["class_names"], list | tuple)
             and all(isinstance(c, str) for c in ckpt["class_names"])),
         "class_names must be a list of strings"),
        (ckpt.get("step") is None
         or (isinstance(ckpt["step"], int) and not isinstance(ckpt["step"], bool)
             and ckpt["step"] >= 0), "step must be an integer >= 0"),
        (ckpt.get("config") is None or isinstance(ckpt["config"], dict),
         "config must be a dict"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            field = message.split()[0]
            return f"{message}, got {ckpt.get(field)!r:.80}"
    pre = ckpt.get("preprocessing")
    if pre is not None:
        ok = (isinstance(pre, dict) and pre.get("channel_order") in ("RGB", "BGR")
              and _is_number(pre.get("scale")) and pre["scale"] != 0
              and all(isinstance(pre.get(k), list | tuple) and len(pre[k]) == 3
                      and all(_is_number(v) for v in pre[k]) for k in ("mean", "std"))
              and all(v != 0 for v in pre["std"]))  # fmt: skip
        if not ok:
            return (f"preprocessing must hold channel_order RGB/BGR, a finite non-zero scale and "
                    f"3 finite means and non-zero stds, got {pre!r:.120}")  # fmt: skip
    return None


def model_state(model: nn.Module) -> dict:
    """The model part of a checkpoint: how to rebuild it and its weights."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    pre = getattr(model, "preprocessing", None)
    return {
        "model_name": model.name,
        "model_options": dict(getattr(model, "options", {})),
        "num_classes": model.num_classes,
        # a release net's inputs (dicts, depth) come back with the net itself: not stored
        "preprocessing": dataclasses.asdict(pre) if isinstance(pre, Preprocessing) else None,
        "model": model.state_dict(),
    }


def load_model(
    source: str | Path,
    *,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
    net: str | None = None,
    untrained: bool = False,
) -> tuple[nn.Module, dict]:
    """A model from a checkpoint file, a registered name with its published weights, or one of
    the release's nets from its weights file (.caffemodel, or a .pth state dict with the
    release's layer names): `net` names it, else the one net whose layers the file matches.

    A name means trained weights: a release net's (voc-fcn8s) or an fcnseg name's published
    file (fcn8s_vgg16), fetched into the cache; a name without any is refused. `untrained`:
    the net with random weights instead, marked `model.untrained = True` (predict writes a
    warning into every output).

    Returns (model in eval mode on `device`, checkpoint dict or {} for a name or weights file).
    """
    if net is not None or str(source).endswith(".caffemodel"):
        return _release_weights(source, net).to(device).eval(), {}
    if str(source) in list_models():
        return _by_name(str(source), num_classes, untrained).to(device).eval(), {}
    if not Path(source).is_file():
        close = difflib.get_close_matches(Path(source).name, list_models(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise CheckpointError(
            f"'{source}' is neither a checkpoint file nor a model name.{hint} Valid names: "
            f"{', '.join(list_models())}"
        )
    try:
        ckpt = load_checkpoint(source)
    except CheckpointError as e:
        if "is not an fcnseg checkpoint" not in str(e):
            raise
        return _release_weights(source, None, e).to(device).eval(), {}
    if num_classes is not None and num_classes != ckpt["num_classes"]:
        raise CheckpointError(
            f"checkpoint '{source}' has {ckpt['num_classes']} classes, not num_classes="
            f"{num_classes}: drop the option or pass {ckpt['num_classes']}"
        )
    options = ckpt["model_options"]
    try:
        model = build_model(ckpt["model_name"], num_classes=ckpt["num_classes"], **options)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint '{source}' names a model fcnseg cannot build "
                              f"({ckpt['model_name']}, {options}): {e}") from None  # fmt: skip
    load_checked(model, ckpt["model"], f"checkpoint '{source}'")
    if ckpt.get("preprocessing"):
        p = ckpt["preprocessing"]
        model.preprocessing = Preprocessing(
            p["channel_order"], p["scale"], tuple(p["mean"]), tuple(p["std"])
        )
    model.class_names = ckpt.get("class_names")
    return model.to(device).eval(), ckpt


def _by_name(name: str, num_classes: int | None, untrained: bool) -> nn.Module:
    """A registered name: its published weights, or (asked for) the untrained net."""
    from . import weights as weights_pkg

    if untrained:
        model = build_model(name, num_classes=num_classes)
        model.untrained = True
        return model
    spec = next((w for w in weights_pkg.WEIGHTS.values() if w.arch == name), None)
    if spec is None:
        raise CheckpointError(
            f"'{name}' names an architecture without published weights: it would run with "
            f"random weights and give meaningless masks. Give a checkpoint (fcnseg train --model "
            f"{name} ... writes one) or a weights file; or pass --untrained (untrained=True) to "
            f"run the random net on purpose"
        )
    classes = spec.classes if hasattr(spec, "classes") else spec.num_classes
    if num_classes is not None and num_classes != classes:
        raise CheckpointError(f"the published weights of {name} ({spec.name}) score {classes} "
                              f"classes, not --num-classes {num_classes}: drop the option, or "
                              f"give a checkpoint trained with {num_classes}")  # fmt: skip
    try:
        path = weights_pkg.fetch(spec)
    except weights_pkg.DownloadError as e:
        raise CheckpointError(
            f"'{name}' means the published weights of {name}, which are not on this machine "
            f"and could not be fetched: {e}\nOr pass --untrained (untrained=True) to run the "
            f"net with random weights on purpose (its outputs mean nothing)"
        ) from None
    pre = spec.preprocessing if isinstance(spec, weights_pkg.Weights) else None
    return build_model(name, weights=path, preprocessing=pre)


def _release_weights(source, net: str | None, not_ckpt: Exception | None = None) -> nn.Module:
    """One of the release's nets with the weights in `source` (see `load_model`)."""
    from .weights import load_state

    if net is None:
        try:
            state, _ = load_state(source)
        except (ValueError, RuntimeError, OSError) as e:
            raise CheckpointError(f"'{source}': {not_ckpt or e}") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                                  for v in state.values()):  # fmt: skip
            raise CheckpointError(str(not_ckpt or f"'{source}' holds no weights"))
        fits = nets_fitting(state, from_caffe=str(source).endswith(".caffemodel"))
        if len(fits) != 1:
            found = f"fits {', '.join(fits)}" if fits else "fits none of the release's nets"
            raise CheckpointError(
                f"'{source}' is not an fcnseg checkpoint and {found}: "
                + ("say which with --net (net= in Python)" if fits else
                   "is it a checkpoint of another tool? For a bare state dict of a registered "
                   f"model use build_model(name, weights='{source}')")
            )  # fmt: skip
        net = fits[0]
    return build_reference(net, weights=source)
