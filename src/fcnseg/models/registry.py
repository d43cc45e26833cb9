"""THE model registry: every name fcnseg builds, in one place, behind `build_model(name, ...)`.

Two families of names, one function:

- fcnseg's architectures (`fcn8s_vgg16`, `fcn32s_alexnet`, ...): keyword-only builders in
  `_BUILDERS`; they take `num_classes` (default 21) and builder options (VGG16: width, layout,
  dropout; AlexNet: width, dropout).
- the reference release's 15 nets by their folder names (`voc-fcn8s`, `nyud-fcn32s-color-hha`,
  `siftflow-fcn16s`, ...): data in `reference.REFERENCE_NETS` over the same trunk and head
  (classes, inputs, heads as released); they take `width`, and `num_classes` only to start new
  score layers.

Every name also takes:
  weights           the net's whole weights: a registered name (`fcnseg.WEIGHTS`), url or file;
                    for a release net "reference" means its published file
  backbone_weights  an ImageNet classifier (torchvision's layout or a Caffe file): its convs are
                    copied and fc6/fc7 reshaped into the FCN; the score layers start at zero
  init_from         a coarser FCN (model, state dict or file) for staged training: shared layers
                    are copied, new ones keep their init (score layers zero, upsamplers
                    bilinear); late fusion: {"color": ..., "hha": ...}, one net per stream
  preprocessing     override the preprocessing the weights imply

Release names and fcnseg names for the same layers (`SAME_LAYERS`): `voc-fcn32s`, `voc-fcn16s`,
`voc-fcn8s` and `voc-fcn8s-atonce` have exactly the layers, names and shapes of `fcn32s_vgg16`,
`fcn16s_vgg16`, `fcn8s_vgg16` and `fcn8s_atonce_vgg16` (both are built from the same trunk and
head data; a test checks it), and load each other's state dicts. They differ in these
conventions only, stated here and in `RELEASE_CONVENTIONS` (README: "One name per net"):

  preprocessing   release name: its dataset's Caffe input (BGR, 0-255, minus the dataset's
                  mean), whatever the weights. fcnseg name: follows the weights: ImageNet RGB
                  mean/std for a fresh net or a torchvision backbone, Caffe BGR for the port's
                  or the release's files.
  2x upsamplers   release name: fixed bilinear (lr 0), as the release's solvers. fcnseg name:
                  learned from bilinear, as the paper's text describes.
  classes         release name: as released (VOC 21). fcnseg name: num_classes (default 21).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
from collections.abc import Callable

from ..safety import check_range
from ..weights import (
    CAFFE_BGR,
    IMAGENET_RGB,
    WEIGHTS,
    LogDepth,
    Preprocessing,
    ReferenceWeights,
    load_state,
)
from .backbones import ALEXNET, VGG16, Arch, build_trunk
from .efficientnet import EFFICIENTNET_LITE0
from .fcn import FCN, HEADS, Head
from .googlenet import googlenet_trunk
from .load import check_finite, label_of, load_backbone, load_checked, transfer
from .mobilenet import MOBILENET_V3_LARGE
from .modern import ModernArch, check_bn, paper_fcn, paper_head, set_bn
from .reference import REFERENCE_NETS, ReferenceNet, _build, build_reference
from .reference_init import init_streams, reference_backbone
from .resnet import DILATED_RESNET50, RESNETS

__all__ = [
    "RELEASE_CONVENTIONS",
    "SAME_LAYERS",
    "build_model",
    "check_finite",
    "check_model_name",
    "list_models",
    "load_checked",
    "model_table",
    "stage_names",
    "transfer",
]


def _vgg16(variant: str) -> Callable[..., FCN]:
    def build(
        *,
        num_classes: int = 21,
        width: float = 1.0,
        layout: str = "reference",
        dropout: float = 0.5,
    ) -> FCN:
        trunk = build_trunk(VGG16, width=width, layout=layout, dropout=dropout)
        return FCN(trunk, HEADS[variant], num_classes, same_padding=layout == "same")

    build.__doc__ = f"{variant} on VGG16 (reference layout unless layout='same')."
    return build


def fcn32s_alexnet(*, num_classes: int = 21, width: float = 1.0, dropout: float = 0.5) -> FCN:
    """FCN-AlexNet: conv1 padded by 100, upscore 63/32 (crop 18), as the reference."""
    trunk = build_trunk(ALEXNET, width=width, layout="reference", dropout=dropout)
    return FCN(trunk, Head((), "upscore", 32, final_kernel=63), num_classes)


def fcn32s_googlenet(*, num_classes: int = 21) -> FCN:
    """FCN-32s on GoogLeNet (the paper drops its final average pooling).

    Input is zero-padded to a multiple of 32; upscore is 63/32 because GoogLeNet's stem puts
    its stride-32 grid half a pixel off the 64/32 kernel's centre (63 gives an integer crop).
    """
    return FCN(googlenet_trunk(), Head((), "upscore", 32, final_kernel=63), num_classes, pad_to=32)


def _paper(arch: ModernArch, variant: str) -> Callable[..., FCN]:
    def build(*, num_classes: int = 21, width: float = 1.0, bn: str = "auto") -> FCN:
        return paper_fcn(arch, variant, num_classes, width=width, bn=bn)

    build.__doc__ = (f"{variant} on {arch.name} (taps {', '.join(arch.taps)}); bn: 'auto', "
                     f"'frozen' or 'batch' (see fcnseg.models.modern)")  # fmt: skip
    return build


def fcn_dilated_resnet50(*, num_classes: int = 21, width: float = 1.0, bn: str = "auto") -> FCN:
    """torchvision's fcn_resnet50 design on fcnseg's FCN: ResNet-50 with layer3/4 dilated
    (output stride 8), its FCNHead (3x3 conv 512, BN, ReLU, dropout 0.1, then our zero-init
    score_fr), no skips, a fixed bilinear 8x upsampler (15/8) instead of F.interpolate."""
    model = FCN(DILATED_RESNET50.trunk(width=width), Head((), "upscore8", 8, final_kernel=15),
                num_classes)  # fmt: skip
    model.bn_mode = check_bn(bn)
    return model


def _timm(variant: str) -> Callable[..., FCN]:
    def build(*, num_classes: int = 21, timm_model: str = "resnet18", pretrained: bool = False,
              bn: str = "auto") -> FCN:  # fmt: skip
        from .timm_trunk import timm_features, trunk_from_features

        trunk, taps = trunk_from_features(timm_features(timm_model, pretrained=pretrained))
        try:  # "same" convs put stride s at s * x: odd bilinear kernels (modern.paper_head)
            model = FCN(trunk, paper_head(variant, taps), num_classes, pad_to=32)
        except ValueError:  # k/s patchify stems (ConvNeXt) at s * x + (s-1)/2: the paper's
            head = paper_head(variant, taps)
            model = FCN(trunk, dataclasses.replace(head, up_kernel=None, final_kernel=None),
                        num_classes, pad_to=32)  # fmt: skip
        bn = check_bn(bn)
        model.bn_mode = "frozen" if bn == "auto" and pretrained else bn
        return model

    build.__doc__ = (f"{variant} on a timm classifier (`timm_model`; timm's ImageNet weights "
                     f"with pretrained=True) via features_only: needs fcnseg[timm]")  # fmt: skip
    return build


_MODERN = {
    **{f"resnet{d}": a for d, a in RESNETS.items()},
    "mobilenet_v3_large": MOBILENET_V3_LARGE,
    "efficientnet_lite0": EFFICIENTNET_LITE0,
}

_BUILDERS: dict[str, tuple[Callable[..., FCN], Arch | ModernArch | str]] = {
    **{
        f"{v}_{name}": (_paper(arch, v), arch)
        for name, arch in _MODERN.items()
        for v in ("fcn32s", "fcn16s", "fcn8s")
    },
    "fcn_dilated_resnet50": (fcn_dilated_resnet50, DILATED_RESNET50),
    **{f"{v}_timm": (_timm(v), "timm") for v in ("fcn32s", "fcn16s", "fcn8s")},
    "fcn32s_vgg16": (_vgg16("fcn32s"), VGG16),
    "fcn16s_vgg16": (_vgg16("fcn16s"), VGG16),
    "fcn8s_vgg16": (_vgg16("fcn8s"), VGG16),
    "fcn8s_atonce_vgg16": (_vgg16("fcn8s_atonce"), VGG16),
    "fcn32s_alexnet": (fcn32s_alexnet, ALEXNET),
    "fcn32s_googlenet": (fcn32s_googlenet, "googlenet"),
}


def _same_layers(spec: ReferenceNet) -> str | None:
    """The fcnseg name with exactly a release net's layers: one VGG16 photo input, one head of
    21 classes (fcnseg's default; PASCAL-Context's nets are those with num_classes=60)."""
    one_photo = list(spec.inputs) == ["image"] and spec.classes == 21
    name = f"{spec.variant}_vgg16"
    return name if one_photo and spec.arch is VGG16 and name in _BUILDERS else None


# release name <-> fcnseg name with the same layers (voc-fcn8s <-> fcn8s_vgg16, ...)
SAME_LAYERS: dict[str, str] = {
    n: same for n, s in REFERENCE_NETS.items() if (same := _same_layers(s)) is not None
}
SAME_LAYERS.update({same: n for n, same in list(SAME_LAYERS.items())})

RELEASE_CONVENTIONS = {
    "preprocessing": "release name: the dataset's Caffe input (BGR, 0-255, minus its mean); "
    "fcnseg name: follows the weights (ImageNet RGB mean/std fresh or from torchvision)",
    "2x upsamplers": "release name: fixed bilinear (lr 0, the release's solvers); "
    "fcnseg name: learned from bilinear (the paper's text)",
    "classes": "release name: as released; fcnseg name: num_classes (default 21)",
}


def _buildable(name: str) -> bool:
    """False for a name whose optional extra is not installed (fcn8s_timm without timm)."""
    arch = _BUILDERS[name][1]
    return arch != "timm" or importlib.util.find_spec("timm") is not None


def list_models(family: str | None = None) -> list[str]:
    """Every name `build_model` takes here: fcnseg's architectures, then the release's 15 nets;
    `family` "fcnseg" or "release" for one of the two. The timm names (fcn8s_timm ...) are
    listed where timm is installed (`fcnseg[timm]`); elsewhere they say how to install it."""
    families = {"fcnseg": sorted(n for n in _BUILDERS if _buildable(n)),
                "release": list(REFERENCE_NETS)}  # fmt: skip
    if family is not None and family not in families:
        raise ValueError(f"family {family!r}: use 'fcnseg', 'release' or None (both)")
    return families[family] if family else [*families["fcnseg"], *families["release"]]


def check_model_name(name) -> None:
    """ValueError naming the closest registered name, for a name that is not one."""
    known = list_models()
    if not isinstance(name, str) or (name not in known and name not in _BUILDERS):
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown model '{name}'.{hint} Valid names: {', '.join(known)}")


def stage_names(model: str, stages: list[str]) -> list[str]:
    """The nets of staged training (`stages` e.g. ["32s", "16s", "8s"]) in `model`'s family.

    An fcnseg name: fcn<stage>_<backbone> (fcn8s_vgg16 -> fcn32s_vgg16, ...). A release net:
    the release's nets of the same data (name prefix), trunk, inputs and classes whose head is
    FCN-32s, 16s or 8s (voc-fcn8s -> voc-fcn32s, voc-fcn16s, voc-fcn8s; likewise
    pascalcontext-* and siftflow-*). A release net with no such chain (NYUDv2's, the at-once
    and AlexNet nets) is refused.
    """
    spec = REFERENCE_NETS.get(model)
    if spec is None:
        names = [f"fcn{s}_{model.split('_', 1)[-1]}" for s in stages]
        for name in names:
            try:
                check_model_name(name)
            except ValueError as e:
                raise ValueError(f"--stages {','.join(stages)} from {model}: {e}") from None
        return names
    staged = {f"fcn{s}" for s in ("32s", "16s", "8s")}
    family = {s.variant: s.name for s in REFERENCE_NETS.values()
              if s.variant in staged and s.name.split("-")[0] == spec.name.split("-")[0]
              and (s.arch, s.inputs, s.classes, s.streams, s.first_conv)
              == (spec.arch, spec.inputs, spec.classes, spec.streams, spec.first_conv)}  # fmt: skip
    if spec.variant not in staged or len(family) < 2:
        chains = sorted({n.name.split("-")[0] for n in REFERENCE_NETS.values()
                         if n.variant == "fcn16s"})  # fmt: skip
        alt = f", or train {family['fcn8s']} in stages" if "fcn8s" in family else ""
        raise ValueError(f"--stages: the release trained {model} in one stage (its head: "
                         f"{spec.variant}; the staged chains FCN-32s -> 16s -> 8s are "
                         f"{', '.join(f'{c}-fcn32s/16s/8s' for c in chains)}): drop --stages"
                         f"{alt}")  # fmt: skip
    missing = [s for s in stages if f"fcn{s}" not in family]
    if missing:
        raise ValueError(f"--stages {','.join(stages)}: the release has no FCN-{missing[0]} of "
                         f"{model}'s family ({', '.join(family.values())})")  # fmt: skip
    return [family[f"fcn{s}"] for s in stages]


# ------------------------------------------------------------------------------ building
def _release_model(name, num_classes, weights, backbone_weights, init_from, options) -> FCN:
    """A release net by its folder name: its inputs are fixed; its classes too, unless
    `num_classes` asks for new score layers (one int, or a dict with the net's heads)."""
    spec = REFERENCE_NETS[name]
    unknown = sorted(set(options) - {"width"})
    if unknown:
        raise ValueError(f"bad option for model '{name}': {', '.join(unknown)} (it takes width)")
    width = options.get("width", 1.0)
    check_range("width", width, 1 / 64, 8.0)
    if num_classes is not None and num_classes != spec.classes:
        heads = set(spec.classes) if isinstance(spec.classes, dict) else None
        if heads != (set(num_classes) if isinstance(num_classes, dict) else None):
            raise ValueError(f"{name} has {spec.classes} classes: num_classes={num_classes!r} "
                             f"must name the same heads")  # fmt: skip
        if weights is not None:
            raise ValueError(f"{name}'s weights have {spec.classes} classes, not "
                             f"num_classes={num_classes}: drop one of the two")  # fmt: skip
        spec = dataclasses.replace(spec, classes=num_classes)  # the release's layers, new scores
        model = _build(spec, width)
    else:
        model = build_reference(name, weights=weights, width=width)
    if backbone_weights is not None:
        reference_backbone(model, backbone_weights)
    if isinstance(init_from, dict):
        init_streams(model, init_from)
    elif init_from is not None:
        transfer(model, init_from)
    return model


def build_model(
    name: str,
    *,
    num_classes: int | dict[str, int] | None = None,
    weights=None,
    backbone_weights=None,
    init_from=None,
    preprocessing: Preprocessing | None = None,
    **options,
) -> FCN:
    """Build any registered net: an fcnseg architecture or a release net (module docstring).

    num_classes: None gives 21 for an fcnseg architecture and a release net's own classes.
    """
    check_model_name(name)
    if name in REFERENCE_NETS:
        model = _release_model(name, num_classes, weights, backbone_weights, init_from, options)
        if preprocessing is not None:
            model.preprocessing = preprocessing
        return model
    num_classes = 21 if num_classes is None else num_classes
    check_range("num_classes", num_classes, 1, 65536, integer=True)
    builder, arch = _BUILDERS[name]
    try:
        model = builder(num_classes=num_classes, **options)
    except TypeError as e:
        raise ValueError(f"bad option for model '{name}': {e}") from None
    model.name = name
    model.options = dict(options)  # what a checkpoint needs to rebuild this model
    model.preprocessing = IMAGENET_RGB
    if backbone_weights is not None:
        load_backbone(model, arch, backbone_weights)
    bn = getattr(model, "bn_mode", None)  # BN trunks: frozen statistics on pretrained weights
    if bn is not None:
        pretrained = backbone_weights is not None
        model.bn_mode = bn if bn != "auto" else "frozen" if pretrained else "batch"
        set_bn(model, model.bn_mode)
    if init_from is not None:
        transfer(model, init_from)
    if weights is not None:
        state, spec = load_state(weights)
        classes = state.get("score_fr.weight")
        if classes is not None and classes.shape[0] != num_classes:
            raise ValueError(
                f"weights {label_of(weights)} have {classes.shape[0]} classes but num_classes="
                f"{num_classes}: pass num_classes={classes.shape[0]}, or use init_from= / "
                f"backbone_weights= to start a new {num_classes}-class head"
            )
        if isinstance(spec, ReferenceWeights):  # a release net's file: its layers as mapped
            if SAME_LAYERS.get(spec.net) != name:
                raise ValueError(f"weights '{spec.net}' are the release net {spec.net}'s, which "
                                 f"has other layers than {name}: build_model('{spec.net}', "
                                 f"weights='reference')")  # fmt: skip
            state = build_reference(spec.net, weights=weights).state_dict()
        load_checked(model, state, label_of(weights))
        pre = spec.preprocessing if spec else CAFFE_BGR
        model.preprocessing = pre if isinstance(pre, Preprocessing) else CAFFE_BGR
    if preprocessing is not None:
        model.preprocessing = preprocessing
    return model


# ------------------------------------------------------------------------------ the table
def _inputs_text(inputs: dict) -> str:
    """ "color (3 BGR) + depth (1 log)": each input's channels and kind."""
    kind = {"BGR": "3 BGR", "RGB": "3 as stored"}
    return " + ".join(
        f"{k} ({'1 log' if isinstance(p, LogDepth) else kind[p.channel_order]})"
        for k, p in inputs.items()
    )


def _classes_text(classes) -> str:
    return str(classes) if isinstance(classes, int) else " + ".join(
        f"{k} {v}" for k, v in classes.items())  # fmt: skip


def model_table() -> list[dict[str, str]]:
    """One row per registered name, for `fcnseg models` and the README's table: family,
    trunk, head, classes, inputs, outputs, published weights, and the name with the same layers."""
    rows = []
    for name, (_, arch) in sorted((n, b) for n, b in _BUILDERS.items() if _buildable(n)):
        files = [w.name for w in WEIGHTS.values() if w.arch == name]
        rows.append({"name": name, "family": "fcnseg",
                     "trunk": arch if isinstance(arch, str) else arch.name,
                     "head": name.split("_")[0] + ("-atonce" if "_atonce_" in name else ""),
                     "classes": "num_classes (21)",
                     "inputs": "image (3 RGB/BGR, as the weights)", "outputs": "logits",
                     "weights": ", ".join(files) or "backbone only",
                     "same layers as": SAME_LAYERS.get(name, "")})  # fmt: skip
    for name, spec in REFERENCE_NETS.items():
        w = WEIGHTS.get(name)
        files = ", ".join(s.file_name + (" (md5)" if s.md5 else "") for s in w.sources) if w \
            else "none published (build it, train it)"  # fmt: skip
        outputs = " + ".join(spec.classes) if isinstance(spec.classes, dict) else "logits"
        rows.append({"name": name, "family": "release", "trunk": spec.arch.name,
                     "head": spec.variant.replace("_", "-"),
                     "classes": _classes_text(spec.classes), "inputs": _inputs_text(spec.inputs),
                     "outputs": outputs, "weights": files,
                     "same layers as": SAME_LAYERS.get(name, "")})  # fmt: skip
    return rows
