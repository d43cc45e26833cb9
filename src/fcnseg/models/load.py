"""Weights into a built FCN: a whole state dict checked key by key, an ImageNet classifier into
its trunk, or the shared layers of a coarser FCN (staged training). No model is built here."""

from __future__ import annotations

import torch
from torch import nn

from ..weights import CAFFE_BGR, GOOGLENET_RGB, IMAGENET_RGB, caffe_backbone, load_state
from .backbones import Arch, torchvision_to_fcn
from .fcn import FCN

__all__ = ["check_finite", "label_of", "load_backbone", "load_checked", "transfer"]


def label_of(source) -> str:
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


def load_backbone(model: FCN, arch, source) -> None:
    """ImageNet weights into `model`'s trunk. `arch`: an `Arch` (VGG16, AlexNet: torchvision's
    or a Caffe file), "googlenet", or a `modern.ModernArch` (ResNet, MobileNetV3,
    EfficientNet-Lite: its `to_fcn` renames the file's keys; `resolve` finds a local file)."""
    resolve = getattr(arch, "resolve", None)
    state, spec = load_state(resolve(source) if resolve else source)
    arch_name = arch if isinstance(arch, str) else arch.name
    if spec is not None and spec.arch != arch_name:
        raise ValueError(f"backbone weights '{spec.name}' are for {spec.arch}, not {arch_name}")
    caffe = str(source).endswith(".caffemodel")  # a path or url
    if caffe:  # a Caffe classifier: the reference's layer names already; fc6/fc7 reshaped
        trunk_state = caffe_backbone(state, model.state_dict(), f"backbone {label_of(source)}")
    elif isinstance(arch, Arch):
        try:
            trunk_state, _fc8 = torchvision_to_fcn(state, arch)  # fc8 (1000 classes) is replaced
        except KeyError as e:  # not a torchvision file of this architecture
            raise ValueError(f"backbone weights {label_of(source)}: {e.args[0]}") from None
    elif hasattr(arch, "to_fcn"):  # ResNet, MobileNetV3, EfficientNet-Lite: keys renamed
        try:
            trunk_state = arch.to_fcn(state)  # the classifier's 1000-class layer is dropped
        except KeyError as e:
            raise ValueError(f"backbone weights {label_of(source)}: {e.args[0]}") from None
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
            f"backbone weights {label_of(source)} miss trunk tensors "
            f"{sorted(head - expected_head)[:6]}"
        )
    load_checked(
        model, {**{k: own[k] for k in head}, **trunk_state}, f"backbone {label_of(source)}"
    )
    model.preprocessing = (
        spec.preprocessing
        if spec
        else CAFFE_BGR
        if caffe
        else (
            GOOGLENET_RGB
            if arch_name == "googlenet"
            else getattr(arch, "preprocessing", IMAGENET_RGB)
        )
    )


def _fixed(key: str) -> bool:
    """The bilinear upsampling kernels: every FCN has them, they carry nothing learned."""
    return key.startswith("up")


def transfer(model: nn.Module, source) -> list[str]:
    """Staged initialisation: copy every tensor of `source` that `model` has with the same name.

    Shapes must agree (same trunk, width and class count); layers only `model` has keep their
    init. Returns the copied keys. Raises, naming the file, if no learned layer is shared (the
    fixed upsampling kernels do not count): a late-fusion net's layers are per stream.
    """
    state, _ = load_state(source)
    own = model.state_dict()
    shared = [k for k in own if k in state]
    name = getattr(model, "name", type(model).__name__)
    if not [k for k in shared if not _fixed(k)]:
        streams = getattr(getattr(model, "reference", None), "streams", None)
        inputs = list(getattr(getattr(model, "reference", None), "inputs", {}) or {})
        fix = (f"{name} is a late-fusion net whose layers are per input stream "
               f"({', '.join(k for k in own if k.startswith('conv1_1'))[:80]}): give one "
               f"checkpoint per stream, --init-from "
               + ",".join(f"{s}=PATH" for s in inputs)
               + f" (init_from={{{', '.join(repr(s) + ': ...' for s in inputs)}}})"
               if streams else "give a checkpoint of a net with the same layers (a coarser "
               "FCN of the same trunk, width and class count)")  # fmt: skip
        raise ValueError(f"init_from {label_of(source)} shares no layer with {name} that "
                         f"holds learned weights (of its {len(state)} tensors, none but the "
                         f"fixed upsampling kernels has a name of this net's {len(own)}), so "
                         f"nothing would be copied: {fix}")  # fmt: skip
    bad = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
           for k in shared if state[k].shape != own[k].shape]  # fmt: skip
    if bad:
        raise ValueError(f"init_from {label_of(source)} does not fit {name} (class count or "
                         f"width differ): {'; '.join(bad[:4])}")  # fmt: skip
    with torch.no_grad():
        for k in shared:
            own[k].copy_(state[k])
    if isinstance(source, FCN) and source.preprocessing is not None:
        model.preprocessing = source.preprocessing
    return shared
