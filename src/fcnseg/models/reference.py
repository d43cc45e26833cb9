"""The reference release's 15 nets (FCN.md 8), as data over the one FCN trunk and head.

Each `ReferenceNet` says what differs between the release's folders: the trunk (VGG16 or
CaffeNet), which head (FCN-32s/16s/8s, at-once), the class count of each output, the inputs
(channels, the name of the first layer), and the input streams. `build_reference` turns it
into an `FCN` whose ``state_dict()`` keys are the release's layer names + ``.weight`` /
``.bias`` (deconvolutions have no bias) with the release's shapes; crop offsets come from
the layers' geometry (geometry.py), as for every other FCN.

Conventions (the forward's inputs and outputs):

- one RGB-like input (VOC, PASCAL-Context, SIFT Flow, ``nyud-fcn32s-color``, ``-hha``): a
  tensor (N, 3, H, W) prepared by ``model.preprocessing`` (BGR minus the dataset's mean; HHA
  in its stored channel order minus the HHA mean).
- ``nyud-fcn32s-color-d`` (early fusion): one tensor (N, 4, H, W), the prepared colour image
  (3 channels, BGR) followed by log(depth) - 7.844 (``NYUD_LOG_DEPTH``), as the release's
  Concat(color, depth) into ``conv1_1_bgrd``.
- ``nyud-fcn32s-color-hha`` (late fusion): a dict ``{"color": x, "hha": y}``, both
  (N, 3, H, W); two whole VGG16 streams (layer names suffixed ``color`` / ``hha``), whose
  1/32 score maps are summed 0.5 / 0.5 before the one fixed upscore.
- ``siftflow-*``: the output is a dict ``{"sem": (N, 33, H, W), "geo": (N, 3, H, W)}`` from two
  heads on one trunk (layer names suffixed ``_sem`` / ``_geo``).

``voc-fcn8s-atonce`` scales pool4 by 0.01 and pool3 by 0.0001 before their score layers. The
release holds these as fixed (lr 0) Scale layers ``scale_pool4`` / ``scale_pool3`` whose
per-channel blobs are in its .caffemodel; here they are constants of the head (as in the
PyTorch port), not parameters: loading a .caffemodel checks the blobs are there and hold
exactly those values, and refuses the file otherwise (the plain FCN-8s file has the same
layers and no Scale blobs); they do not appear in ``state_dict()``, so a .pth (ours, the
port's) has none.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import weights as weights_files
from ..safety import atomic_write
from ..weights import (
    CAFFE_BGR,
    NYUD_BGR,
    NYUD_HHA,
    NYUD_LOG_DEPTH,
    REFERENCE_WEIGHTS,
    SIFTFLOW_BGR,
    LogDepth,
    Preprocessing,
    load_state,
    read_caffemodel,
)
from .backbones import CAFFENET, VGG16, Arch, build_trunk, scaled
from .fcn import FCN, HEADS
from .load import check_finite, load_checked

__all__ = [
    "REFERENCE_NETS",
    "ReferenceNet",
    "build_reference",
    "convert_caffemodel",
    "nets_fitting",
    "reference_nets",
    "release_class_names",
    "state_dict_from_caffe",
]


@dataclass(frozen=True)
class ReferenceNet:
    """One folder of the release: what differs from the plain VOC FCN-32s/16s/8s."""

    name: str  # the release's folder name, e.g. "voc-fcn8s"
    variant: str  # the head, a key of fcn.HEADS
    classes: int | dict[str, int]  # a dict: one head per output, names suffixed "_<output>"
    inputs: dict[str, Preprocessing | LogDepth]  # per input, in channel / stream order
    arch: Arch = VGG16
    streams: bool = False  # each input runs its own whole trunk, names suffixed by the input
    first_conv: str | None = None  # renamed first layer (colour + depth: "conv1_1_bgrd")
    stream_weights: dict[str, float] = field(default_factory=dict)  # late fusion's Eltwise coeff

    @property
    def in_channels(self) -> int:
        """Channels of the (single) input tensor: 3 per image, 1 per depth map."""
        return sum(1 if isinstance(p, LogDepth) else 3 for p in self.inputs.values())

    @property
    def fixed_scales(self) -> dict[str, tuple[str, float]]:
        """The at-once net's Scale layers: name -> (the trunk feature it scales, its value)."""
        return {f"scale_{s.tap}": (s.tap, s.feature_scale)
                for s in HEADS[self.variant].skips if s.feature_scale != 1}  # fmt: skip


_IMAGE = {"image": CAFFE_BGR}  # VOC and PASCAL-Context: BGR minus the VOC mean


def _nets() -> tuple[ReferenceNet, ...]:
    voc, context = {"classes": 21, "inputs": _IMAGE}, {"classes": 60, "inputs": _IMAGE}
    sift = {"classes": {"sem": 33, "geo": 3}, "inputs": {"image": SIFTFLOW_BGR}}
    return (
        ReferenceNet("voc-fcn32s", "fcn32s", **voc),
        ReferenceNet("voc-fcn16s", "fcn16s", **voc),
        ReferenceNet("voc-fcn8s", "fcn8s", **voc),
        ReferenceNet("voc-fcn8s-atonce", "fcn8s_atonce", **voc),
        ReferenceNet("voc-fcn-alexnet", "fcn_alexnet", **voc, arch=CAFFENET),
        ReferenceNet("nyud-fcn32s-color", "fcn32s", 40, {"color": NYUD_BGR}),
        ReferenceNet("nyud-fcn32s-hha", "fcn32s", 40, {"hha": NYUD_HHA}),
        ReferenceNet("nyud-fcn32s-color-d", "fcn32s", 40,
                     {"color": NYUD_BGR, "depth": NYUD_LOG_DEPTH}, first_conv="conv1_1_bgrd"),
        ReferenceNet("nyud-fcn32s-color-hha", "fcn32s", 40, {"color": NYUD_BGR, "hha": NYUD_HHA},
                     streams=True, stream_weights={"color": 0.5, "hha": 0.5}),
        ReferenceNet("pascalcontext-fcn32s", "fcn32s", **context),
        ReferenceNet("pascalcontext-fcn16s", "fcn16s", **context),
        ReferenceNet("pascalcontext-fcn8s", "fcn8s", **context),
        ReferenceNet("siftflow-fcn32s", "fcn32s", **sift),
        ReferenceNet("siftflow-fcn16s", "fcn16s", **sift),
        ReferenceNet("siftflow-fcn8s", "fcn8s", **sift),
    )  # fmt: skip


REFERENCE_NETS: dict[str, ReferenceNet] = {n.name: n for n in _nets()}


def reference_nets() -> list[str]:
    """The release's 15 folder names, in the release's order (VOC, NYUDv2, Context, SIFT Flow)."""
    return list(REFERENCE_NETS)


def release_class_names(name: str) -> dict[str, tuple[str, ...]]:
    """The class names of a release net's outputs, from its dataset (the folder name's prefix):
    {"": VOC's 21 | NYUD's 40 | Context's 59 + background}, or SIFT Flow's {"sem": 33, "geo": 3}.
    A name that is not a release net's gives {}."""
    if name not in REFERENCE_NETS:
        return {}
    dataset = name.split("-")[0]
    if dataset == "siftflow":
        from ..data.siftflow import SIFTFLOW_GEOMETRIC_CLASSES, SIFTFLOW_SEMANTIC_CLASSES

        return {"sem": SIFTFLOW_SEMANTIC_CLASSES, "geo": SIFTFLOW_GEOMETRIC_CLASSES}
    if dataset == "nyud":
        from ..data.nyud import NYUD_CLASSES as names
    elif dataset == "pascalcontext":
        from ..data.context import CONTEXT_CLASSES as names
    else:
        from ..categories import VOC_CLASSES as names
    return {"": tuple(names)}


def _spec(name: str) -> ReferenceNet:
    if name not in REFERENCE_NETS:
        close = difflib.get_close_matches(str(name), REFERENCE_NETS, n=1, cutoff=0.4)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(
            f"unknown reference net '{name}'.{hint} The release's nets: {', '.join(REFERENCE_NETS)}"
        )
    return REFERENCE_NETS[name]


def _build(spec: ReferenceNet, width: float) -> FCN:
    """The net with random trunk weights, zero score layers and bilinear upsamplers."""
    head = HEADS[spec.variant]
    rename = {"conv1_1": spec.first_conv} if spec.first_conv else None
    if spec.streams:  # late fusion: one whole trunk per input, its names suffixed by the input
        trunk = {s: build_trunk(spec.arch, width=width, suffix=s) for s in spec.inputs}
    else:
        trunk = build_trunk(spec.arch, width=width, in_channels=spec.in_channels, rename=rename)
    if isinstance(spec.classes, dict):  # two heads on one trunk: score_fr_sem, upscore2_geo ...
        head = {k: head.suffixed(f"_{k}") for k in spec.classes}
    # the release keeps every deconvolution fixed (lr 0), the 2x ones included
    model = FCN(trunk, head, spec.classes, stream_weights=spec.stream_weights or None,
                learn_2x=False)  # fmt: skip
    model.name = spec.name
    model.options = {} if width == 1 else {"width": width}
    model.reference = spec
    model.preprocessing = (
        next(iter(spec.inputs.values())) if len(spec.inputs) == 1 else dict(spec.inputs)
    )
    return model


def build_reference(name: str, *, weights=None, width: float = 1.0) -> FCN:
    """The release's net `name` (see `reference_nets()`), exactly as released.

    weights: None (trunk random, score layers zero, deconvolutions bilinear); "reference" (the
    release's published weights, downloaded and cached, see fcnseg.weights.REFERENCE_WEIGHTS);
    or a path or url of a .caffemodel or a .pth state dict with the release's layer names.
    A .caffemodel's InnerProduct fc6/fc7 are reshaped into convolutions; a file of another
    net fails with the layers that differ. `width` < 1 shrinks every layer (tests only: no
    published weights fit it). The module docstring gives each net's inputs and outputs.
    """
    spec = _spec(name)
    model = _build(spec, width)
    if weights is None:
        return model

    source, label = weights, repr(os.fspath(weights)) if _pathish(weights) else "(state dict)"
    if isinstance(weights, str) and weights == "reference":
        if name not in REFERENCE_WEIGHTS:
            raise ValueError(
                f"{name} has no published weights (the release trained it but did not publish "
                f"a .caffemodel); train it, or pass weights=PATH"
            )
        source = weights_files.fetch(REFERENCE_WEIGHTS[name])  # looked up at call time
        label = f"the release's weights of {name} ({source})"
    state, _ = load_state(source)
    from_caffe = os.fspath(source).endswith(".caffemodel") if _pathish(source) else False
    load_checked(model, fit_state(spec, state, label, width, from_caffe=from_caffe), label)
    return model


def _pathish(x) -> bool:
    return isinstance(x, str | bytes) or hasattr(x, "__fspath__")


# ---------------------------------------------------------------- blobs -> state dict


def _expected_shapes(spec: ReferenceNet, width: float = 1.0) -> dict[str, torch.Size]:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return {k: v.shape for k, v in _build(spec, width).state_dict().items()}


def _reshape(t: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """A file's tensor in the net's shape, or None if it cannot be.

    Accepted: equal; the legacy 4-d form with leading ones ((1, 1, 1, n) bias, (1, 1, out, in)
    InnerProduct); an InnerProduct (out, in) into a conv (out, c, k, k) with in = c*k*k, in the
    (C, H, W) order the classifier flattened (convolutionalization, FCN.md 1).
    """
    if t.shape == shape:
        return t

    def core(dims) -> list[int]:  # without leading ones
        dims = list(dims)
        while len(dims) > 1 and dims[0] == 1:
            dims.pop(0)
        return dims

    dims = core(t.shape)
    if dims == core(shape):
        return t.reshape(shape)
    fc = len(dims) == 2 and len(shape) == 4
    if fc and dims[0] == shape[0] and dims[1] == math.prod(shape[1:]):
        return t.reshape(shape)
    return None


def _check_scales(spec: ReferenceNet, state: Mapping, width: float, required: bool) -> list[str]:
    """The at-once net's fixed Scale blobs: one value per channel, the release's; present if
    `required` (a .caffemodel holds them; a PyTorch state dict, ours or the port's, does not)."""
    problems = []
    channels = dict(zip(("pool3", "pool4"), (256, 512), strict=True))
    for layer, (tap, value) in spec.fixed_scales.items():
        blob = state.get(f"{layer}.weight")
        if blob is None:
            if not required:
                continue
            problems.append(f"{layer} is missing (the release's {spec.name} file holds it)")
            continue
        b, n = blob.detach().double().flatten(), scaled(channels[tap], width)
        want = torch.full_like(b, float(torch.tensor(value, dtype=torch.float32)))
        if b.numel() != n or not torch.allclose(b, want, rtol=1e-6, atol=0.0):
            shown = f"{b.numel()} values in [{b.min():.6g}, {b.max():.6g}]" if b.numel() else "none"
            problems.append(
                f"{layer} holds {shown}; {spec.name} fixes it at {value} on each of {n} "
                f"channels of {tap} (fcnseg applies it as that constant, so other values "
                "cannot be honoured: is this another net's file, or was the scale trained?)"
            )
    return problems


def fit_state(
    spec: ReferenceNet | str,
    state: Mapping[str, torch.Tensor],
    label: str,
    width: float = 1.0,
    *,
    from_caffe: bool = True,
) -> dict[str, torch.Tensor]:
    """A file's state dict (reference layer names + .weight / .bias) in `spec`'s shapes.

    Raises a ValueError naming `label` and every layer that is missing, foreign, of the
    wrong shape, or (at-once) a Scale blob with other values than the release's; the Scale
    blobs must be there when the state comes from a .caffemodel (`from_caffe`): they are what
    tells the at-once file from the plain FCN-8s one, whose layers are the same.
    """
    spec = _spec(spec) if isinstance(spec, str) else spec
    expected = _expected_shapes(spec, width)
    fixed = {f"{layer}.weight" for layer in spec.fixed_scales}
    out: dict[str, torch.Tensor] = {}
    missing, shapes = [], []
    for key, shape in expected.items():
        if key not in state:
            missing.append(key)
            continue
        t = _reshape(state[key], shape)
        if t is None:
            shapes.append(f"{key} {tuple(state[key].shape)} (net: {tuple(shape)})")
        else:
            out[key] = t
    extra = [k for k in state if k not in expected and k not in fixed]
    problems = _check_scales(spec, state, width, required=from_caffe)
    for what, keys in (("missing", missing), ("not in this net", extra), ("shape", shapes)):
        if keys:
            more = f" ... (+{len(keys) - 8})" if len(keys) > 8 else ""
            problems.append(f"{what} ({len(keys)}): {', '.join(keys[:8])}{more}")
    if problems:
        raise ValueError(
            f"{label} does not fit {spec.name}: " + "; ".join(problems)
            + ". Is it the file of another net? reference_nets() lists the release's nets."
        )  # fmt: skip
    return out


def nets_fitting(state: Mapping[str, torch.Tensor], *, from_caffe: bool) -> list[str]:
    """The release's nets whose every layer name and shape `state` matches (several when the
    nets differ only in what they were trained on, e.g. nyud-fcn32s-color and -hha)."""
    fits = []
    for name, spec in REFERENCE_NETS.items():
        try:
            fit_state(spec, state, name, from_caffe=from_caffe)
        except ValueError:
            continue
        fits.append(name)
    return fits


def state_dict_from_caffe(
    name: str, blobs: Mapping[str, Sequence[torch.Tensor]], *, label: str = "the .caffemodel"
) -> dict[str, torch.Tensor]:
    """`read_caffemodel`'s {layer: blobs} -> `name`'s state dict, every name and shape checked.

    Blob 0 is the weight, blob 1 the bias; layers without blobs (ReLU, pooling, data) are
    ignored. InnerProduct weights (a classifier's fc6 / fc7) become the net's convolutions;
    at-once Scale blobs are checked, then dropped (see the module docstring).
    """
    state: dict[str, torch.Tensor] = {}
    for layer, ts in blobs.items():
        for i, t in enumerate(ts):
            state[f"{layer}.{('weight', 'bias')[i] if i < 2 else f'blob{i}'}"] = t
    return fit_state(name, state, label)


def convert_caffemodel(path, net_name: str, out) -> Path:
    """`fcnseg convert`: a release net's .caffemodel -> a plain state dict file (.pth).

    `read_caffemodel` reads the blobs (fcnseg.weights knows files, not nets);
    `state_dict_from_caffe` maps them onto the net's layers, every name and shape checked; the
    file is written atomically (temp file + rename).
    """
    blobs = read_caffemodel(path)
    # what every loader refuses is not written: NaN / inf, named by layer and blob
    check_finite({f"{layer} blob {i}": t for layer, ts in blobs.items()
                  for i, t in enumerate(ts)}, f"{path}'s layers")  # fmt: skip
    state = state_dict_from_caffe(net_name, blobs, label=str(path))
    return atomic_write(out, lambda f: torch.save(state, f), what="state dict")
