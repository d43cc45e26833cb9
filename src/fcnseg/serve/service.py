"""What the service holds and does, without HTTP: the nets it serves (by the names given at
start, never a path from a request), one request's inputs prepared by fcnseg's own rules
(`fcnseg.predict_inputs`), the pass (`fcnseg.predict._run`), and the answer: the label PNG
`fcnseg predict` writes (`fcnseg.data.io.mask_png`) and the JSON summary."""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..categories import voc_palette
from ..data.io import mask_png
from ..predict import _run, _tile_plan, class_names, resolve_device
from ..predict_inputs import camera_intrinsics, head_names, input_kinds, input_plan, load_sample
from ..predict_inputs import net_name as _net_name
from .batcher import Batcher
from .limits import Limits, ServeError
from .uploads import Part, decode_depth, decode_image, text_fields

__all__ = ["ServedModel", "Service", "head_key"]

FORM_FLAGS = {"depth": "the form field 'depth'", "hha": "the form field 'hha'",
              "camera": "the form field camera=nyud or intrinsics=fx,fy,cx,cy"}  # fmt: skip
PALETTE = voc_palette(256)


def head_key(head: str) -> str:
    """A head's name in the API: "sem" / "geo" for SIFT Flow, "labels" for one-head nets."""
    return head or "labels"


@dataclass
class ServedModel:
    name: str  # as the API names it (--model NAME=SRC, else the file's stem or the model name)
    model: nn.Module
    device: torch.device
    fast: bool = False
    net: str = ""
    kinds: tuple[str, ...] = ()
    heads: tuple[str, ...] = ("",)
    names: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        self.model.eval()
        self.net = _net_name(self.model)
        self.kinds = input_kinds(self.model)
        self.heads = head_names(self.model)
        self.names = {h: class_names(self.model, h) for h in self.heads}

    def describe(self) -> dict:
        inputs = {"color": "image", "depth": "depth", "hha": "hha"}
        return {
            "name": self.name,
            "net": self.net,
            "inputs": [inputs[k] for k in self.kinds],
            "outputs": {head_key(h): self.names[h] for h in self.heads},
            "fast": self.fast,
            "device": str(self.device),
        }


@dataclass
class Service:
    models: dict[str, ServedModel]
    limits: Limits
    token: str | None = None
    allowed_hosts: tuple[str, ...] | None = None  # None: any Host header
    admitted: int = 0  # requests being uploaded, queued or run
    draining: bool = False
    served: int = 0
    batcher: Batcher | None = None

    def __post_init__(self):
        if not self.models:
            raise ValueError("serve needs at least one model")

    # ------------------------------------------------------------------ the pass
    def run(self, key: tuple, samples: Sequence[dict]) -> tuple[dict, dict | None]:
        """One net pass over same-sized samples (the inference thread)."""
        name, h, w, probs = key
        served = self.models[name]
        labels, p = _run(served.model, samples, served.device,
                         _tile_plan(None, None, h, w), probs=probs)  # fmt: skip
        conf = None
        if p is not None:  # the winning class's probability, 0..255
            conf = {hd: np.rint(v.max(1) * 255).astype(np.uint8) for hd, v in p.items()}
        return labels, conf

    # ------------------------------------------------------------------ one request
    def model(self, name: str | None) -> ServedModel:
        if name is None:
            return next(iter(self.models.values()))
        if name not in self.models:
            raise ServeError(404, "unknown_model", f"no model {name[:60]!r} here: this server "
                             f"serves {', '.join(self.models)} (GET /models)")  # fmt: skip
        return self.models[name]

    def prepare(self, served: ServedModel, form: Mapping[str, Part]) -> dict[str, np.ndarray]:
        """The form's uploads -> the net's inputs {kind: array}, by predict's rules."""
        texts = text_fields(form)
        cam = None
        if "camera" in texts and "intrinsics" in texts:
            raise ServeError(400, "bad_request", "give camera or intrinsics, not both")
        try:
            if "camera" in texts:
                cam = camera_intrinsics(texts["camera"])
            elif "intrinsics" in texts:
                cam = camera_intrinsics(texts["intrinsics"].split(","))
            plan = input_plan(
                served.model,
                depth="upload 'depth'" if "depth" in form else None,
                hha="upload 'hha'" if "hha" in form else None,
                intrinsics=cam is not None,
                flags=FORM_FLAGS,
            )
        except ValueError as e:
            raise ServeError(400, "bad_request", str(e)) from None
        cap = self.limits.max_pixels
        rgb = decode_image(form["image"].data, "image", cap)
        depth = decode_depth(form["depth"].data, "depth", cap) if "depth" in form else None
        hha = decode_image(form["hha"].data, "hha", cap) if "hha" in form else None
        try:
            _, sample = load_sample(plan, rgb, depth, hha, cam)
        except ValueError as e:
            raise ServeError(400, "bad_request", str(e)) from None
        return sample

    def answer(self, served: ServedModel, labels: dict, conf: dict | None, pixels: bool) -> dict:
        """Per head: the label PNG's bytes and the JSON summary (classes present, pixel
        counts from the same label map), with the raw maps for the page if `pixels`."""
        out = {}
        for head in served.heads:
            lab = labels[head]
            names = served.names[head]
            counts = np.bincount(lab.ravel(), minlength=len(names))
            png = mask_png(lab)
            classes = [{"index": int(i), "name": names[i] if i < len(names) else str(i),
                        "pixels": int(counts[i]), "share": round(float(counts[i]) / lab.size, 6),
                        "color": PALETTE[i].tolist()}
                       for i in np.argsort(-counts, kind="stable") if counts[i]]  # fmt: skip
            entry = {"classes": classes, "num_classes": len(names), "png": png}
            if pixels:
                entry["labels_png"] = base64.b64encode(png).decode()
                entry["labels"] = base64.b64encode(lab.astype(np.uint8).tobytes()).decode()
                if conf is not None:
                    entry["confidence"] = base64.b64encode(conf[head].tobytes()).decode()
            out[head_key(head)] = entry
        return out


def now() -> float:
    return time.monotonic()


def device_of(model: nn.Module, device) -> torch.device:
    return resolve_device(device, model)
