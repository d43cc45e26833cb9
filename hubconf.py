"""torch.hub entry points: one per name of `fcnseg.list_models()`, the release's nets included.

    model = torch.hub.load("/path/to/fcnseg", "fcn8s_vgg16", source="local", num_classes=21)
    model = torch.hub.load("/path/to/fcnseg", "fcn8s_vgg16", source="local", pretrained=True)
    model = torch.hub.load("/path/to/fcnseg", "nyud-fcn32s-color-hha", source="local",
                           pretrained=True)     # the release's own weights (weights="reference")

A release net is reached by its folder name (`voc-fcn8s`) or with underscores (`voc_fcn8s`,
a Python name for `torch.hub.list`'s readers). pretrained=True loads the release's published
file for a release net, and the registered PASCAL VOC weights ("<name>_voc", 21 classes) for an
fcnseg architecture (downloaded once into torch.hub's cache). Other keyword arguments go to fcnseg.build_model (num_classes,
width, layout, weights=FILE, backbone_weights=...). The images a model expects are described by
`model.preprocessing`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

try:
    import fcnseg
except ImportError:  # a plain clone, not installed: use its src/
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    import fcnseg

from torch import nn

dependencies = ["torch", "numpy", "PIL"]


def _entry(name: str) -> Callable[..., nn.Module]:
    def load(pretrained: bool = False, **kwargs) -> nn.Module:
        if pretrained and name in fcnseg.reference_nets():
            if "weights" in kwargs:
                raise ValueError("pass pretrained=True or weights=..., not both")
            kwargs["weights"] = "reference"
        elif pretrained:
            weights = f"{name}_voc"
            if weights not in fcnseg.WEIGHTS:
                have = [w.arch for w in fcnseg.WEIGHTS.values() if w.categories == "voc"]
                raise ValueError(
                    f"no pretrained VOC weights are registered for {name}; models with them: "
                    f"{', '.join(have)}. Use pretrained=False, or weights=FILE"
                )
            if "weights" in kwargs:
                raise ValueError("pass pretrained=True or weights=..., not both")
            kwargs["weights"] = weights
        return fcnseg.build_model(name, **kwargs)

    load.__name__ = name
    load.__doc__ = f"{name}: fcnseg.build_model('{name}', **kwargs); pretrained: VOC weights."
    return load


for _name in fcnseg.list_models():  # hub looks entries up by name: "voc-fcn8s" and voc_fcn8s
    globals()[_name] = globals()[_name.replace("-", "_")] = _entry(_name)
