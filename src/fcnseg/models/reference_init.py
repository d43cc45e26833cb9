"""Starting points for training the release's nets, as the release initialised them.

- `reference_backbone(model, source)`: ImageNet VGG16 (torchvision's or Caffe's file) into the
  trunk(s) of a reference net: the same names for single-input nets; for early fusion
  (``conv1_1_bgrd``, colour + depth) conv1_1's filters with a 4th input channel equal to the
  mean of the three colour channels' (FCN.md 8); for late fusion each whole stream, its names
  suffixed (``conv1_1color``, ``conv1_1hha``). The net keeps its own preprocessing (the
  release's Caffe BGR means): with a torchvision file the first layer sees other units than
  it was trained on, as in any cross-framework start.
- `init_streams(model, {"color": ckpt, "hha": ckpt})`: late fusion from two trained
  single-modality nets (the release's nyud-fcn32s-color-hha started from nyud-fcn32s-color and
  nyud-fcn32s-hha): every layer of each, score layer included, under the stream's suffix.
"""

from __future__ import annotations

import torch
from torch import nn

from ..weights import load_state
from .backbones import VGG16, build_trunk
from .fcn import FCN, HEADS
from .load import load_backbone, transfer

__all__ = ["init_streams", "initialize", "reference_backbone"]


def _vgg16_state(width: float, source) -> dict[str, torch.Tensor]:
    """An ImageNet VGG16's trunk in fcnseg's names (conv1_1 ... fc7), at `width`."""
    donor = FCN(build_trunk(VGG16, width=width), HEADS["fcn32s"], 21)  # fc8 is not taken
    load_backbone(donor, VGG16, source)
    return {k: v for k, v in donor.state_dict().items() if not k.startswith(("score", "up"))}


def _copy(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> list[str]:
    own = model.state_dict()
    extra = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and own[k].shape != v.shape]  # fmt: skip
    if extra or shapes:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for label, keys in (("layers the net lacks", extra),
                                     ("shape mismatch, file vs net", shapes)) if keys]  # fmt: skip
        raise ValueError(f"{what} does not fit {model.name}: {'; '.join(parts)}. Each stream "
                         f"starts from a net of its own input with the same trunk, width and "
                         f"classes (nyud-fcn32s-color, nyud-fcn32s-hha)")  # fmt: skip
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
    return list(state)


def reference_backbone(model: nn.Module, source) -> list[str]:
    """Copy an ImageNet VGG16 into `model`'s trunk(s); returns the keys set (see module)."""
    spec = model.reference
    if spec.arch.name != "vgg16":
        raise ValueError(f"{model.name}: backbone_weights are for VGG16 nets; {spec.arch.name} "
                         f"nets start from their own weights (weights=)")  # fmt: skip
    vgg = _vgg16_state(model.options.get("width", 1.0), source)
    if spec.streams:  # late fusion: each stream a whole VGG16
        state = {_suffixed(k, s): v for s in spec.inputs for k, v in vgg.items()}
    elif spec.first_conv:  # early fusion: colour filters + their mean for the depth channel
        state = dict(vgg)
        for part in ("weight", "bias"):
            state[f"{spec.first_conv}.{part}"] = state.pop(f"conv1_1.{part}")
        w = state[f"{spec.first_conv}.weight"]  # (64, 3, 3, 3)
        state[f"{spec.first_conv}.weight"] = torch.cat([w, w.mean(1, keepdim=True)], 1)
    else:
        state = vgg
    return _copy(model, state, f"backbone {source}")


def init_streams(model: nn.Module, sources: dict[str, object]) -> list[str]:
    """Late fusion from one trained single-input net per stream (see module)."""
    spec = model.reference
    if not spec.streams or set(sources) != set(spec.inputs):
        raise ValueError(f"{model.name}: init_from per stream needs the streams "
                         f"{list(spec.inputs)}, got {list(sources)}")  # fmt: skip
    state = {}
    for stream, source in sources.items():
        loaded, _ = load_state(source)
        loaded = loaded.get("model", loaded) if isinstance(loaded, dict) else loaded
        for k, v in loaded.items():
            if not k.startswith("up"):  # the one fixed upscore is the fused net's own
                state[_suffixed(k, stream)] = v
    return _copy(model, state, "init_from " + ", ".join(f"{k}={v}" for k, v in sources.items()))


def initialize(model: nn.Module, init_from) -> str:
    """`init_from` (one source, or one per stream for late fusion) into `model`; returns the
    sentence that says what was copied from where (train prints it)."""
    if isinstance(init_from, dict):
        copied = init_streams(model, init_from)
        where = ", ".join(f"{k}={v}" for k, v in init_from.items())
    else:
        copied = transfer(model, init_from)
        where = str(init_from) if not isinstance(init_from, nn.Module) else "the given model"
    total = len(model.state_dict())
    return (f"init from {where}: copied {len(copied)} of the {total} tensors of "
            f"{getattr(model, 'name', 'the model')}; the other {total - len(copied)} keep "
            f"their initialisation")  # fmt: skip


def _suffixed(key: str, suffix: str) -> str:
    layer, _, part = key.rpartition(".")
    return f"{layer}{suffix}.{part}"
