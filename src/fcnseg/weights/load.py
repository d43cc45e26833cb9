"""Loading weights from wherever they are: a registered name, a url, a file, a dict, a model.

A `.caffemodel` file (by name, or behind a url) loads as the generic reference-named state dict of
`caffe_state_dict` (layer name + .weight / .bias); fitting it to a particular net is the model
code's job (`fcnseg.models.reference.state_dict_from_caffe`).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ..safety import unreadable
from .caffe import caffe_state_dict
from .download import fetch
from .preprocessing import IMAGENET_RGB
from .registry import WEIGHTS, Weights

__all__ = ["load_state"]


def _torch_load(path: Path) -> dict:
    if path.suffix == ".caffemodel":  # caffe.read_layers checks the content as well
        return caffe_state_dict(path)
    _check_not_caffe(path)
    try:  # weights_only: tensors and plain types only, never arbitrary pickles (SECURITY.md)
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise ValueError(unreadable(path, "weights file")) from None
    except Exception as e:  # truncated zip, pickle error, not a torch file
        raise ValueError(f"cannot read weights file {path}: {e}. Is it complete?") from e
    return _unwrap(obj, str(path))


def _check_not_caffe(path: Path) -> None:
    """A Caffe file under another name (.bin, no suffix) is not read as a PyTorch one: the
    name decides how fc6/fc7 and the Scale blobs are fitted, so the message asks for it."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return  # torch.load says what is wrong
    if head[:2] == b"PK" or head[:1] == b"\x80":  # a zip or a pickle: PyTorch's forms
        return
    try:
        caffe_state_dict(path)
    except ValueError:
        return  # neither: torch.load's own error follows
    raise ValueError(
        f"{path} is a Caffe .caffemodel by its content, but its name does not say so: "
        f"rename it to {path.with_suffix('.caffemodel').name} (fcnseg reads Caffe weights "
        f"from .caffemodel files) or convert it with `fcnseg convert`"
    )


def _unwrap(obj, where: str) -> dict[str, torch.Tensor]:
    """A state dict, or a training checkpoint holding one (ours: 'model'; others: ...)."""
    if isinstance(obj, dict):
        for key in ("model", "model_state_dict", "state_dict"):
            if isinstance(obj.get(key), dict):
                return obj[key]
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise ValueError(f"{where} holds no state dict (got {type(obj).__name__})")


def load_state(source, *, progress: bool = True) -> tuple[dict[str, torch.Tensor], Weights | None]:
    """Weights from a registered name, a `Weights`, a url, a local file, or a state dict."""
    if isinstance(source, dict):
        return _unwrap(source, "the given dict"), None
    if isinstance(source, nn.Module):
        return source.state_dict(), None
    if isinstance(source, Weights):
        return _torch_load(fetch(source, progress=progress)), source
    text = os.fspath(source)
    if text in WEIGHTS:
        spec = WEIGHTS[text]
        return _torch_load(fetch(spec, progress=progress)), spec
    if urlparse(text).scheme in ("http", "https", "file"):
        name = os.path.basename(urlparse(text).path)
        # torch.hub's convention: "name-<sha256 prefix>.pth" is checked against its digest
        prefix = torch.hub.HASH_REGEX.search(name)
        spec = Weights(name, text, "?", "?", IMAGENET_RGB, "?", 0, "unknown",
                       hash_prefix=prefix.group(1) if prefix else None)  # fmt: skip
        return _torch_load(fetch(spec, progress=progress)), None
    path = Path(text).expanduser()
    if path.is_file():
        return _torch_load(path), None
    raise ValueError(
        f"weights '{text}' are neither a file nor a url nor a registered name; "
        f"registered: {', '.join(WEIGHTS)}"
    )
