"""Pretrained weights described as data, and the loaders that put them into models.

A `Weights` entry says where a file lives (url + checksum), what it fits (arch, layout,
classes), how images must be prepared for it (`Preprocessing`) and its license. Any loader
argument may be a registered name, a url (cached by torch.hub) or a local file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

__all__ = [
    "CAFFE_BGR",
    "EFFICIENTNET_LITE",
    "GOOGLENET_RGB",
    "IMAGENET_RGB",
    "WEIGHTS",
    "Preprocessing",
    "Weights",
    "fetch",
    "load_state",
    "verify",
]


@dataclass(frozen=True)
class Preprocessing:
    """How an 8-bit RGB image becomes the float tensor a set of weights expects.

    x = (image[..., order] * scale - mean) / std, with mean/std given in `channel_order`.
    """

    channel_order: str  # "RGB" or "BGR"
    scale: float  # 1/255 for torchvision's [0, 1] inputs, 1 for Caffe's 0-255
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __call__(self, image) -> torch.Tensor:
        """PIL image or uint8 array (H, W, 3), RGB -> float32 tensor (3, H, W)."""
        a = np.asarray(image)
        if a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got array of shape {a.shape}")
        # np.array copies: a PIL image's buffer is read-only, which torch warns about
        x = torch.from_numpy(np.array(a)).permute(2, 0, 1).float()
        if self.channel_order == "BGR":
            x = x.flip(0)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x * self.scale - mean) / std

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0-255 float) batch (N, 3, H, W), RGB, any device -> normalized float32."""
        x = x.float()
        if self.channel_order == "BGR":
            x = x.flip(1)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x * self.scale - mean) / std

    def invert(self, x: torch.Tensor) -> np.ndarray:
        """float tensor (3, H, W) -> uint8 RGB array (H, W, 3): to show what the net saw."""
        x = x.detach().cpu() * torch.tensor(self.std).view(3, 1, 1) + torch.tensor(self.mean).view(
            3, 1, 1
        )
        x = x / self.scale
        if self.channel_order == "BGR":
            x = x.flip(0)
        return x.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


IMAGENET_RGB = Preprocessing("RGB", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
GOOGLENET_RGB = Preprocessing("RGB", 1 / 255, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # transform_input
CAFFE_BGR = Preprocessing("BGR", 1.0, (104.00699, 116.66877, 122.67892))  # FCN.md section 3
EFFICIENTNET_LITE = Preprocessing("RGB", 1.0, (127.0, 127.0, 127.0), (128.0, 128.0, 128.0))


@dataclass(frozen=True)
class Weights:
    name: str
    url: str
    arch: str  # the model the file fits: a classifier ("vgg16") or an FCN ("fcn8s_vgg16")
    layout: str  # "torchvision" (features.N / classifier.N keys) or "fcn-reference" (conv1_1 ...)
    preprocessing: Preprocessing
    categories: str  # "imagenet" (1000) or "voc" (21)
    num_classes: int
    license: str
    sha256: str | None = None  # full digest, when published
    hash_prefix: str | None = None  # torch.hub convention: sha256 prefix in the file name
    md5: str | None = None  # what the PyTorch FCN port published for its files
    metrics: dict[str, float] = field(default_factory=dict)
    source: str = ""

    @property
    def file_name(self) -> str:
        name = os.path.basename(urlparse(self.url).path)
        return name if name.endswith((".pth", ".pt")) else f"{self.name}.pth"


_TV = "https://download.pytorch.org/models"
_TV_LICENSE = "BSD-3-Clause (torchvision); trained on ImageNet-1k, whose terms of use apply"
_PORT = "FCN reference (BSD-2-Clause) converted from Caffe by the PyTorch FCN port (MIT)"
_GDRIVE = "https://drive.google.com/uc?export=download&id="

WEIGHTS: dict[str, Weights] = {
    w.name: w
    for w in (
        Weights("vgg16_imagenet", f"{_TV}/vgg16-397923af.pth", "vgg16", "torchvision",
                IMAGENET_RGB, "imagenet", 1000, _TV_LICENSE, hash_prefix="397923af",
                metrics={"imagenet_top1": 71.592}),
        Weights("alexnet_imagenet", f"{_TV}/alexnet-owt-7be5be79.pth", "alexnet", "torchvision",
                IMAGENET_RGB, "imagenet", 1000, _TV_LICENSE, hash_prefix="7be5be79",
                metrics={"imagenet_top1": 56.522}),
        Weights("googlenet_imagenet", f"{_TV}/googlenet-1378be20.pth", "googlenet",
                "torchvision", GOOGLENET_RGB, "imagenet", 1000, _TV_LICENSE,
                hash_prefix="1378be20", metrics={"imagenet_top1": 69.778}),
        Weights("fcn32s_vgg16_voc", f"{_GDRIVE}11k2Q0bvRQgQbT6-jYWeh6nmAsWlSCY3f", "fcn32s_vgg16",
                "fcn-reference", CAFFE_BGR, "voc", 21, _PORT,
                md5="d3eb467a80e7da0468a20dfcbc13e6c8", metrics={"seg11valid_mean_iu": 63.6},
                source="fcn32s-heavy-pascal.caffemodel"),
        Weights("fcn16s_vgg16_voc", f"{_GDRIVE}0B9P1L--7Wd2vVGE3TkRMbWlNRms", "fcn16s_vgg16",
                "fcn-reference", CAFFE_BGR, "voc", 21, _PORT,
                md5="991ea45d30d632a01e5ec48002cac617", metrics={"seg11valid_mean_iu": 65.0},
                source="fcn16s-heavy-pascal.caffemodel"),
        Weights("fcn8s_vgg16_voc", f"{_GDRIVE}1ieXWyoG68xqoHJPWdyrDyaIaaWlfmUxI", "fcn8s_vgg16",
                "fcn-reference", CAFFE_BGR, "voc", 21, _PORT,
                md5="de93e540ec79512f8770033849c8ae89", metrics={"seg11valid_mean_iu": 65.5},
                source="fcn8s-heavy-pascal.caffemodel"),
        Weights("fcn8s_atonce_vgg16_voc", f"{_GDRIVE}0B9P1L--7Wd2vblE1VUIxV1o2d2M",
                "fcn8s_atonce_vgg16", "fcn-reference", CAFFE_BGR, "voc", 21, _PORT,
                md5="bfed4437e941fef58932891217fe6464", metrics={"seg11valid_mean_iu": 65.4},
                source="fcn8s-atonce-pascal.caffemodel"),
    )
}  # fmt: skip


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _mismatch(path: Path, spec: Weights) -> str | None:
    """What is wrong with the file's checksum, or None when it matches what is published."""
    checks = [("sha256", spec.sha256, False), ("sha256", spec.hash_prefix, True),
              ("md5", spec.md5, False)]  # fmt: skip
    for algo, expected, prefix in checks:
        if not expected:
            continue
        got = _digest(path, algo)
        if not (got.startswith(expected) if prefix else got == expected):
            return (
                f"its {algo} is {got}, but weights '{spec.name}' are published with "
                f"{expected}{'...' if prefix else ''}"
            )
    return None


def verify(path: Path, spec: Weights) -> None:
    """Raise if the file's checksum differs from the one the weights are published with."""
    problem = _mismatch(path, spec)
    if problem:
        raise ValueError(
            f"{path}: {problem}. The file is corrupt or not these weights: "
            f"delete it and download again"
        )


def fetch(spec: Weights, *, progress: bool = True) -> Path:
    """Download `spec` into torch.hub's cache (``torch.hub.get_dir()/checkpoints``, by default
    ``$TORCH_HOME/hub/checkpoints``) once; verify it."""
    dst = Path(torch.hub.get_dir()) / "checkpoints" / spec.file_name
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        # per-process name: two processes fetching the same file do not clobber each other
        tmp = dst.with_name(f"{dst.name}.{os.getpid()}.part")
        torch.hub.download_url_to_file(spec.url, str(tmp), hash_prefix=None, progress=progress)
        problem = _mismatch(tmp, spec)
        if problem:
            tmp.unlink(missing_ok=True)  # never leave a bad download in the cache
            raise ValueError(
                f"downloaded {spec.url} for {dst}, but {problem}. The download was corrupt "
                f"or the url serves other weights; it was deleted: download again, or fix "
                f"the url / checksum of '{spec.name}'"
            )
        os.replace(tmp, dst)  # never leave a half-written file under the final name
    else:
        verify(dst, spec)
    return dst


def _torch_load(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle error, not a torch file
        raise ValueError(f"cannot read weights file {path}: {e}. Is it complete?") from e
    return _unwrap(obj, str(path))


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
