"""The model registry: keyword-only builders in one explicit dict, and weight loading.

build_model(name, num_classes=21, **options) takes, for every model:
  weights           a full FCN checkpoint with the reference layer names (name, url or file)
  backbone_weights  an ImageNet classifier in torchvision's layout: its convs are copied and
                    fc6/fc7 reshaped into the FCN; the score layers start at zero
  init_from         a coarser FCN (model, state dict or file) for staged training: shared
                    layers are copied (FCN-16s from FCN-32s, FCN-8s from FCN-16s), new ones
                    keep their init (score layers zero, upsamplers bilinear)
  preprocessing     override the preprocessing the weights imply
VGG16 models also take width (channel multiplier), layout ("reference" or "same") and dropout
(fc6/fc7, 0.5 as the reference; AlexNet takes width and dropout).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch
from torch import nn

from ..safety import check_range
from ..weights import (
    CAFFE_BGR,
    GOOGLENET_RGB,
    IMAGENET_RGB,
    Preprocessing,
    caffe_backbone,
    load_state,
)
from .backbones import ALEXNET, VGG16, Arch, build_trunk, torchvision_to_fcn
from .fcn import FCN, HEADS, Head
from .googlenet import googlenet_trunk

__all__ = ["build_model", "list_models", "load_checked"]


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


_BUILDERS: dict[str, tuple[Callable[..., FCN], Arch | str]] = {
    "fcn32s_vgg16": (_vgg16("fcn32s"), VGG16),
    "fcn16s_vgg16": (_vgg16("fcn16s"), VGG16),
    "fcn8s_vgg16": (_vgg16("fcn8s"), VGG16),
    "fcn8s_atonce_vgg16": (_vgg16("fcn8s_atonce"), VGG16),
    "fcn32s_alexnet": (fcn32s_alexnet, ALEXNET),
    "fcn32s_googlenet": (fcn32s_googlenet, "googlenet"),
}


def list_models() -> list[str]:
    """Names accepted by build_model."""
    return sorted(_BUILDERS)


def _reference_names() -> list[str]:
    from .reference import reference_nets

    return reference_nets()


def check_model_name(name) -> None:
    """ValueError naming the closest registered name, for a name that is not one.

    Registered names are `list_models()` and the release's nets (`reference_nets()`).
    """
    known = [*_BUILDERS, *_reference_names()]
    if not isinstance(name, str) or name not in known:
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown model '{name}'.{hint} Valid names: {', '.join(list_models())} "
                         f"and the release's nets ({', '.join(_reference_names())})")  # fmt: skip


def _reference_model(name, num_classes, weights, backbone_weights, init_from, options) -> FCN:
    """A release net by its folder name, for training: its inputs are fixed; its classes too,
    unless `num_classes` asks for new score layers (one int, or a dict with the net's heads)."""
    import dataclasses

    from .reference import REFERENCE_NETS, _build, build_reference
    from .reference_init import init_streams, reference_backbone

    spec = REFERENCE_NETS[name]
    unknown = sorted(set(options) - {"width"})
    if unknown:
        raise ValueError(f"bad option for model '{name}': {', '.join(unknown)} (it takes width)")
    if num_classes is not None and num_classes != spec.classes:
        heads = set(spec.classes) if isinstance(spec.classes, dict) else None
        if heads != (set(num_classes) if isinstance(num_classes, dict) else None):
            raise ValueError(f"{name} has {spec.classes} classes: num_classes={num_classes!r} "
                             f"must name the same heads")  # fmt: skip
        if weights is not None:
            raise ValueError(f"{name}'s weights have {spec.classes} classes, not "
                             f"num_classes={num_classes}: drop one of the two")  # fmt: skip
        spec = dataclasses.replace(spec, classes=num_classes)  # the release's layers, new scores
        model = _build(spec, options.get("width", 1.0))
    else:
        model = build_reference(name, weights=weights, width=options.get("width", 1.0))
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
    """Build a registered FCN, or a release net by its folder name (see the module docstring).

    num_classes: None gives 21 for a registered model and a release net's own classes.
    """
    check_model_name(name)
    if name not in _BUILDERS:
        model = _reference_model(name, num_classes, weights, backbone_weights, init_from, options)
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
        _load_backbone(model, arch, backbone_weights)
    if init_from is not None:
        transfer(model, init_from)
    if weights is not None:
        state, spec = load_state(weights)
        classes = state.get("score_fr.weight")
        if classes is not None and classes.shape[0] != num_classes:
            raise ValueError(
                f"weights {_label(weights)} have {classes.shape[0]} classes but num_classes="
                f"{num_classes}: pass num_classes={classes.shape[0]}, or use init_from= / "
                f"backbone_weights= to start a new {num_classes}-class head"
            )
        load_checked(model, state, _label(weights))
        model.preprocessing = spec.preprocessing if spec else CAFFE_BGR
    if preprocessing is not None:
        model.preprocessing = preprocessing
    return model


def _label(source) -> str:
    return (
        f"'{source}'"
        if isinstance(source, str | bytes) or hasattr(source, "__fspath__")
        else (f"({type(source).__name__})")
    )


def load_checked(model: nn.Module, state: dict[str, torch.Tensor], what: str = "weights") -> None:
    """load_state_dict(strict=True), with a message that lists what differs."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state and state[k].shape != v.shape]  # fmt: skip
    if missing or extra or shapes:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", extra),
                                     ("shape mismatch", shapes)) if keys]  # fmt: skip
        raise ValueError(
            f"{what} do not fit {getattr(model, 'name', type(model).__name__)}: "
            + "; ".join(parts)
            + ". Is it a checkpoint of another architecture, class count or width?"
        )
    check_finite(state, what)
    model.load_state_dict(state, strict=True)


def check_finite(state: dict[str, torch.Tensor], what: str = "weights") -> None:
    """Refuse weights holding NaN or infinity: they cannot give a meaningful result."""
    bad = [f"{k} ({int((~torch.isfinite(v)).sum())} values)" for k, v in state.items()
           if v.is_floating_point() and not torch.isfinite(v).all()]  # fmt: skip
    if bad:
        raise ValueError(f"{what} hold NaN or infinite values in {len(bad)} tensor(s): "
                         f"{', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}. The file is "
                         f"damaged or its training diverged: use an earlier one")  # fmt: skip


def _load_backbone(model: FCN, arch: Arch | str, source) -> None:
    state, spec = load_state(source)
    arch_name = arch if isinstance(arch, str) else arch.name
    if spec is not None and spec.arch != arch_name:
        raise ValueError(f"backbone weights '{spec.name}' are for {spec.arch}, not {arch_name}")
    caffe = str(source).endswith(".caffemodel")  # a path or url
    if caffe:  # a Caffe classifier: the reference's layer names already; fc6/fc7 reshaped
        trunk_state = caffe_backbone(state, model.state_dict(), f"backbone {_label(source)}")
    elif isinstance(arch, Arch):
        try:
            trunk_state, _fc8 = torchvision_to_fcn(state, arch)  # fc8 (1000 classes) is replaced
        except KeyError as e:  # not a torchvision file of this architecture
            raise ValueError(f"backbone weights {_label(source)}: {e.args[0]}") from None
    else:  # GoogLeNet: our trunk uses torchvision's names; drop fc and the auxiliary heads
        trunk_state = {
            k: v for k, v in state.items() if not k.startswith(("fc.", "aux1.", "aux2."))
        }
    own = model.state_dict()
    head = {k for k in own if k not in trunk_state}
    # every trunk tensor must come from the file; only the FCN head keeps its own init
    expected_head = {k for k in own if k.startswith(("score_", "upscore"))}
    if head != expected_head:
        raise ValueError(
            f"backbone weights {_label(source)} miss trunk tensors "
            f"{sorted(head - expected_head)[:6]}"
        )
    load_checked(model, {**{k: own[k] for k in head}, **trunk_state}, f"backbone {_label(source)}")
    model.preprocessing = (
        spec.preprocessing
        if spec
        else CAFFE_BGR
        if caffe
        else (GOOGLENET_RGB if arch_name == "googlenet" else IMAGENET_RGB)
    )


def transfer(model: nn.Module, source) -> list[str]:
    """Staged initialisation: copy every tensor of `source` that `model` has with the same name.

    Shapes must agree (same trunk, width and class count); layers only `model` has keep their
    init. Returns the copied keys. Raises if nothing is shared.
    """
    state, _ = load_state(source)
    own = model.state_dict()
    shared = [k for k in own if k in state]
    if not shared:
        raise ValueError("init_from shares no layer names with this model")
    bad = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
           for k in shared if state[k].shape != own[k].shape]  # fmt: skip
    if bad:
        raise ValueError(f"init_from does not fit (class count or width differ): {bad[:4]}")
    with torch.no_grad():
        for k in shared:
            own[k].copy_(state[k])
    if isinstance(source, FCN) and source.preprocessing is not None:
        model.preprocessing = source.preprocessing
    return shared
