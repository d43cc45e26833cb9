"""Any timm classifier as an FCN trunk, through timm's documented ``features_only`` API.

``timm.create_model(name, features_only=True)`` returns a feature net (``FeatureListNet``): an
``nn.ModuleDict`` of the classifier's top-level modules, run in order, whose ``return_layers``
name the modules that give features and whose ``feature_info`` gives each one's channels and
reduction (stride). That is exactly fcnseg's trunk as data: its modules become the FCN's trunk
layers (same names, so timm's pretrained weights are the trunk's), the features at reductions
8, 16 and 32 become FCN-8s's taps and the trunk's output.

Crop offsets need each layer's geometry, which timm does not state. `measure_geometry` derives it
from the layers themselves: one probe forward records, in execution order, every leaf conv and
pool with its input and output sizes; the first one that lowers the resolution at each level is
the main path's (a shortcut's strided conv runs after it in timm's blocks, and must agree for the
sum to be aligned anyway), and its coordinate map (geometry.coord_map) is composed into the map
of the top-level layer it belongs to. Leaves that pad inside their forward (the ``tf_`` models'
TensorFlow "SAME" convs) or stride-1 leaves that shift the grid are refused: their geometry is
not what their parameters say. The maps are attached to the layers (a `coord_map` attribute),
and FCN derives its crops from them as for every other trunk.

timm is an optional extra (``pip install 'fcnseg[timm]'``); timm imports torchvision, which could
not be installed where fcnseg was developed, so this adapter is tested there only against a
feature net built like timm's (tests/test_modern_backbones.py), not against timm itself.
"""

from __future__ import annotations

from collections import OrderedDict
from fractions import Fraction

import torch
from torch import nn

from .backbones import Trunk
from .geometry import IDENTITY, CoordMap, coord_map

__all__ = ["FixedMap", "measure_geometry", "timm_features", "trunk_from_features"]

TAP_STRIDES = (8, 16, 32)


class FixedMap:
    """A measured coordinate map, callable as a module's `coord_map()` (picklable)."""

    def __init__(self, m: CoordMap):
        self.m = m

    def __call__(self) -> CoordMap:
        return self.m


def timm_features(model_name: str, *, pretrained: bool = False) -> nn.Module:
    """timm's feature net for `model_name` (its ImageNet weights with `pretrained`)."""
    try:
        import timm
    except ImportError as e:
        raise RuntimeError(f"timm trunks need timm: pip install 'fcnseg[timm]' (timm also needs "
                           f"torchvision) ({e})") from e  # fmt: skip
    try:
        return timm.create_model(model_name, pretrained=pretrained, features_only=True)
    except RuntimeError as e:  # timm: unknown model, or no features_only support
        raise ValueError(f"timm model {model_name!r}: {e}") from None


def _expected_size(leaf: nn.Module, size: int) -> int:
    k = leaf.kernel_size if isinstance(leaf.kernel_size, int) else leaf.kernel_size[0]
    s = leaf.stride if isinstance(leaf.stride, int) else leaf.stride[0]
    p = leaf.padding if isinstance(leaf.padding, int) else leaf.padding[0]
    d = getattr(leaf, "dilation", 1)
    d = d if isinstance(d, int) else d[0]
    if isinstance(p, str):  # padding="same" (stride 1 only in torch)
        return size
    ceil = getattr(leaf, "ceil_mode", False)
    span = size + 2 * p - d * (k - 1) - 1
    return (-(-span // s) if ceil else span // s) + 1


@torch.no_grad()
def measure_geometry(layers: OrderedDict[str, nn.Module], size: int = 256) -> dict[str, CoordMap]:
    """The coordinate map of every top-level layer, from one probe forward (module doc)."""
    calls: list[tuple[str, str, nn.Module, int, int]] = []
    owner = {}
    for top, module in layers.items():
        for name, leaf in module.named_modules():
            if isinstance(leaf, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
                owner[leaf] = (top, f"{top}.{name}" if name else top)

    def hook(leaf, args, out):
        if isinstance(out, torch.Tensor) and args and isinstance(args[0], torch.Tensor):
            top, name = owner[leaf]
            calls.append((top, name, leaf, args[0].shape[-2], out.shape[-2]))

    handles = [leaf.register_forward_hook(hook) for leaf in owner]
    training = {m: m.training for m in layers.values()}
    try:
        x = torch.zeros(1, 3, size, size)
        for module in layers.values():
            module.eval()
            x = module(x)
            x = x[0] if isinstance(x, list | tuple) else x
    finally:
        for h in handles:
            h.remove()
        for m, t in training.items():
            m.train(t)
    maps = {top: IDENTITY for top in layers}
    level = size
    for top, name, leaf, h_in, h_out in calls:
        if _expected_size(leaf, h_in) != h_out:
            raise ValueError(f"{name} ({type(leaf).__name__}) gives {h_out} rows from {h_in}, not "
                             f"what its padding says: it pads in its forward (TensorFlow "
                             f"'SAME'); use the model's non-tf_ variant")  # fmt: skip
        m = coord_map(leaf)
        if h_in != level:
            continue  # a branch at another resolution (e.g. a shortcut after the main path)
        if h_out < h_in:  # the main path's downsampling at this level
            maps[top] = maps[top].then(m)
            level = h_out
        elif m.shift != 0 and m.scale == 1:
            raise ValueError(f"{name} shifts the grid by {m.shift} px at stride 1: its "
                             f"branch, so this trunk's geometry, is not derivable")  # fmt: skip
    return maps


def trunk_from_features(features: nn.Module, probe: int = 256) -> tuple[Trunk, tuple[str, str]]:
    """A timm-style feature net -> (the FCN trunk up to stride 32, its (stride-16, stride-8)
    taps). The net's modules become the trunk's layers, with measured geometry attached."""
    info = getattr(features, "feature_info", None)
    returns = getattr(features, "return_layers", None)
    if not isinstance(features, nn.ModuleDict) or info is None or returns is None:
        raise ValueError(f"{type(features).__name__} is not a module-list feature net (timm's "
                         f"FeatureListNet): fcnseg runs a trunk's modules in order, and this "
                         f"model's features come from hooks or a getter")  # fmt: skip
    by_id = {str(i): (c, r) for i, c, r in zip(info.out_indices, info.channels(),
                                               info.reduction(), strict=True)}  # fmt: skip
    stride_of = {name: by_id[out][1] for name, out in returns.items()}
    chans = {name: by_id[out][0] for name, out in returns.items()}
    at = {}
    for name, r in stride_of.items():
        at.setdefault(r, name)  # the first module giving each reduction
    missing = [s for s in TAP_STRIDES if s not in at]
    if missing:
        raise ValueError(f"this feature net gives reductions {sorted(at)}; FCN-8s needs "
                         f"features at 8, 16 and 32 (missing {missing})")  # fmt: skip
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for name, module in features.items():
        layers[name] = module
        if name == at[32]:
            break
    maps = measure_geometry(layers, probe)
    total = IDENTITY
    for name, module in layers.items():
        total = total.then(maps[name])
        if name in (at[8], at[16], at[32]) and total.scale != Fraction(1, stride_of[name]):
            raise ValueError(f"{name}: measured stride {1 / total.scale}, feature_info says "
                             f"{stride_of[name]}")  # fmt: skip
        module.coord_map = FixedMap(maps[name])
    channels = {at[s]: chans[at[s]] for s in TAP_STRIDES}
    return Trunk(layers, channels, at[32]), (at[16], at[8])
