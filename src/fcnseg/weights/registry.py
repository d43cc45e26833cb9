"""Pretrained weights described as data: where each file lives, what it fits, how to feed it.

Two tables:
- `WEIGHTS`: files that fit the `build_model` names (torchvision classifiers, the PyTorch FCN
  port's VOC nets), one url each.
- `REFERENCE_WEIGHTS`: the reference release's 14 published nets (FCN.md section 8), keyed by the
  release's folder name (`build_reference` names). Each lists its `sources` in the order they
  are tried: the release's .caffemodel on its original host, then (VOC nets) the port's .pth.
  Checksums are only those that were published (the port's md5); none is invented.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlparse

from .preprocessing import (
    CAFFE_BGR,
    GOOGLENET_RGB,
    IMAGENET_RGB,
    NYUD_BGR,
    NYUD_HHA,
    SIFTFLOW_BGR,
    Preprocessing,
)

__all__ = [
    "REFERENCE_WEIGHTS",
    "WEIGHTS",
    "ReferenceWeights",
    "Source",
    "Weights",
    "reference_table",
]


@dataclass(frozen=True)
class Source:
    """One place a weights file can be downloaded from, and the name it is cached under."""

    url: str
    file_name: str  # in the cache; also where a file downloaded by hand goes
    format: str = "pth"  # "pth" (a state dict) or "caffemodel"
    sha256: str | None = None
    hash_prefix: str | None = None  # torch.hub convention: sha256 prefix in the file name
    md5: str | None = None


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
    mirrors: tuple[Source, ...] = ()  # tried after `url`, in order

    @property
    def file_name(self) -> str:
        name = os.path.basename(urlparse(self.url).path)
        return name if name.endswith((".pth", ".pt", ".caffemodel")) else f"{self.name}.pth"

    @property
    def sources(self) -> tuple[Source, ...]:
        first = Source(self.url, self.file_name, "pth", self.sha256, self.hash_prefix, self.md5)
        return (first, *self.mirrors)


_TV = "https://download.pytorch.org/models"
_TV_LICENSE = "BSD-3-Clause (torchvision); trained on ImageNet-1k, whose terms of use apply"
_PORT = "FCN reference (BSD-2-Clause) converted from Caffe by the PyTorch FCN port (MIT)"
_GDRIVE = "https://drive.google.com/uc?export=download&id="
_RELEASE = "http://dl.caffe.berkeleyvision.org"


def _release(file: str) -> tuple[Source, ...]:
    """The release's own .caffemodel of a port's file: the same layer names (FCN.md 11)."""
    return (Source(f"{_RELEASE}/{file}", file, "caffemodel"),)


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
                source="fcn32s-heavy-pascal.caffemodel",
                mirrors=_release("fcn32s-heavy-pascal.caffemodel")),
        Weights("fcn16s_vgg16_voc", f"{_GDRIVE}0B9P1L--7Wd2vVGE3TkRMbWlNRms", "fcn16s_vgg16",
                "fcn-reference", CAFFE_BGR, "voc", 21, _PORT,
                md5="991ea45d30d632a01e5ec48002cac617", metrics={"seg11valid_mean_iu": 65.0},
                source="fcn16s-heavy-pascal.caffemodel",
                mirrors=_release("fcn16s-heavy-pascal.caffemodel")),
        Weights("fcn8s_vgg16_voc", f"{_GDRIVE}1ieXWyoG68xqoHJPWdyrDyaIaaWlfmUxI", "fcn8s_vgg16",
                "fcn-reference", CAFFE_BGR, "voc", 21, _PORT,
                md5="de93e540ec79512f8770033849c8ae89", metrics={"seg11valid_mean_iu": 65.5},
                source="fcn8s-heavy-pascal.caffemodel",
                mirrors=_release("fcn8s-heavy-pascal.caffemodel")),
        Weights("fcn8s_atonce_vgg16_voc", f"{_GDRIVE}0B9P1L--7Wd2vblE1VUIxV1o2d2M",
                "fcn8s_atonce_vgg16", "fcn-reference", CAFFE_BGR, "voc", 21, _PORT,
                md5="bfed4437e941fef58932891217fe6464", metrics={"seg11valid_mean_iu": 65.4},
                source="fcn8s-atonce-pascal.caffemodel"),
    )
}  # fmt: skip


@dataclass(frozen=True)
class ReferenceWeights:
    """The published weights of one net of the reference release (FCN.md section 8)."""

    net: str  # the release's folder name, as `build_reference` spells it
    sources: tuple[Source, ...]  # tried in order
    dataset: str  # "voc", "nyud", "pascalcontext", "siftflow"
    classes: int | dict[str, int]  # one output: 21; several: {"sem": 33, "geo": 3} (SIFT Flow)
    inputs: dict[str, Preprocessing]  # per input, in the forward's order: {"color": ...}
    license: str
    metrics: dict[str, float] = field(default_factory=dict)  # the paper's (FCN.md 6, 10)

    @property
    def name(self) -> str:
        return self.net


_RELEASE_LICENSE = "BSD-2-Clause (FCN reference release, fcn.berkeleyvision.org); trained on "
_LICENSE = {
    "voc": _RELEASE_LICENSE + "PASCAL VOC 2011 + SBD, whose terms of use apply",
    "nyud": _RELEASE_LICENSE + "NYU Depth v2, whose terms of use apply",
    "pascalcontext": _RELEASE_LICENSE + "PASCAL-Context (VOC 2010), whose terms of use apply",
    "siftflow": _RELEASE_LICENSE + "SIFT Flow (LabelMe), whose terms of use apply",
}
_PORT_SITE = "http://drive.google.com/uc?id="
_CLASSES = {"voc": 21, "nyud": 40, "pascalcontext": 60, "siftflow": {"sem": 33, "geo": 3}}
_INPUTS = {"voc": {"image": CAFFE_BGR}, "pascalcontext": {"image": CAFFE_BGR},
           "siftflow": {"image": SIFTFLOW_BGR}}  # fmt: skip


def _reference(net: str, caffe_file: str, *, inputs=None, port=None, **metrics) -> ReferenceWeights:
    """net's entry: its .caffemodel on the release's host, then the port's .pth if any.

    port = (Google Drive id, file name, md5), as the PyTorch FCN port (wkentaro/pytorch-fcn,
    torchfcn/models) publishes them.
    """
    dataset = net.split("-")[0]
    sources = [Source(f"{_RELEASE}/{caffe_file}.caffemodel", f"{caffe_file}.caffemodel",
                      "caffemodel")]  # fmt: skip
    if port:
        drive_id, file_name, md5 = port
        sources.append(Source(_PORT_SITE + drive_id, file_name, "pth", md5=md5))
    return ReferenceWeights(net, tuple(sources), dataset, _CLASSES[dataset],
                            inputs or _INPUTS[dataset], _LICENSE[dataset], metrics)  # fmt: skip


_COLOR, _HHA = {"color": NYUD_BGR}, {"hha": NYUD_HHA}

REFERENCE_WEIGHTS: dict[str, ReferenceWeights] = {
    w.net: w
    for w in (
        _reference("voc-fcn32s", "fcn32s-heavy-pascal", seg11valid_mean_iu=63.6,
                   port=("11k2Q0bvRQgQbT6-jYWeh6nmAsWlSCY3f", "fcn32s_from_caffe.pth",
                         "d3eb467a80e7da0468a20dfcbc13e6c8")),
        _reference("voc-fcn16s", "fcn16s-heavy-pascal", seg11valid_mean_iu=65.0,
                   port=("0B9P1L--7Wd2vVGE3TkRMbWlNRms", "fcn16s_from_caffe.pth",
                         "991ea45d30d632a01e5ec48002cac617")),
        _reference("voc-fcn8s", "fcn8s-heavy-pascal", seg11valid_mean_iu=65.5,
                   port=("1ieXWyoG68xqoHJPWdyrDyaIaaWlfmUxI", "fcn8s_from_caffe.pth",
                         "de93e540ec79512f8770033849c8ae89")),
        _reference("voc-fcn8s-atonce", "fcn8s-atonce-pascal", seg11valid_mean_iu=65.4,
                   port=("0B9P1L--7Wd2vblE1VUIxV1o2d2M", "fcn8s-atonce_from_caffe.pth",
                         "bfed4437e941fef58932891217fe6464")),
        _reference("voc-fcn-alexnet", "fcn-alexnet-pascal", seg11valid_mean_iu=48.0),
        _reference("nyud-fcn32s-color", "nyud-fcn32s-color-heavy", inputs=_COLOR,
                   paper_test_mean_iu=29.2),
        _reference("nyud-fcn32s-hha", "nyud-fcn32s-hha-heavy", inputs=_HHA,
                   paper_test_mean_iu=24.2),
        _reference("nyud-fcn32s-color-hha", "nyud-fcn32s-color-hha-heavy",
                   inputs=_COLOR | _HHA, paper_test_mean_iu=32.8),
        _reference("pascalcontext-fcn32s", "pascalcontext-fcn32s-heavy", paper_val_mean_iu=31.8),
        _reference("pascalcontext-fcn16s", "pascalcontext-fcn16s-heavy", paper_val_mean_iu=34.8),
        _reference("pascalcontext-fcn8s", "pascalcontext-fcn8s-heavy", paper_val_mean_iu=35.1),
        _reference("siftflow-fcn32s", "siftflow-fcn32s-heavy"),
        _reference("siftflow-fcn16s", "siftflow-fcn16s-heavy", paper_test_mean_iu=39.5,
                   paper_test_geo_acc=94.3),
        _reference("siftflow-fcn8s", "siftflow-fcn8s-heavy"),
    )
}  # fmt: skip


_KIND = {"BGR": "3 BGR", "RGB": "3 as stored"}


def _inputs(inputs: dict) -> str:
    """ "color (3 BGR) + depth (1 log)": each input's channels and kind (means: in the entry)."""
    return " + ".join(
        f"{name} ({_KIND[p.channel_order] if isinstance(p, Preprocessing) else '1 log'})"
        for name, p in inputs.items()
    )


def reference_table() -> list[str]:
    """Lines of `fcnseg models`: each release net, its classes, inputs and published weights."""
    from ..models.reference import REFERENCE_NETS  # models import weights: not at the top

    rows = [("net", "classes", "inputs", "published weights (tried in order)")]
    for name, net in REFERENCE_NETS.items():
        w = REFERENCE_WEIGHTS.get(name)
        files = ", ".join(s.file_name + (" (md5)" if s.md5 else "") for s in w.sources) if w else (
            "none published (build it, train it)")  # fmt: skip
        classes = net.classes if isinstance(net.classes, int) else (
            " + ".join(f"{k} {v}" for k, v in net.classes.items()))  # fmt: skip
        rows.append((name, str(classes), _inputs(net.inputs), files))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, [*widths, 0], strict=True)).rstrip()
            for r in rows]  # fmt: skip
