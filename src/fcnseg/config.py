"""A training run's settings: `TrainConfig`, typed, checked before any work (types and
ranges, naming the value and the allowed range), written beside the run as config.json."""

from __future__ import annotations

from dataclasses import dataclass, field

from .recipes import get_recipe
from .safety import check_range

__all__ = ["TrainConfig", "TrainingDiverged"]


@dataclass
class TrainConfig:
    model: str = "fcn8s_vgg16"
    num_classes: int | dict | None = None  # None: the dataset's (a release net: its own)
    model_options: dict = field(default_factory=dict)  # width, layout
    recipe: str = "cvpr"
    data: str = "digits"  # data.build.DATA_HELP: digits | voc:ROOT | nyud:ROOT | ...
    train_split: str = "train"
    val_data: str | None = None  # None: same as data (e.g. train on sbd:, validate on voc:)
    val_split: str = "val"
    data_options: dict = field(default_factory=dict)  # e.g. digit scenes' n, size (a release
    # net sets modality and task itself: net_data_options)
    steps: int = 1000
    batch_size: int | None = None  # None: the recipe's (images per step, all processes)
    accumulate: int | None = None  # None: the recipe's
    lr: float | None = None  # None: the recipe's for this model
    seed: int = 0
    out: str = "runs/fcn"
    eval_every: int = 0  # 0: only at the end
    ckpt_every: int = 100
    log_every: int = 10
    device: str = "cpu"
    amp: str | None = None  # "bf16" (CPU or CUDA), "fp16" (CUDA), "auto" (measured, fcnseg.amp)
    channels_last: bool = False  # NHWC memory format: faster convolutions on CPU and GPU
    fast: bool = False  # reference layout: skip the padding's waste, same numbers (fast.train)
    init_from: str | dict | None = None  # a previous stage's checkpoint; late fusion: by stream
    backbone_weights: str | None = None
    workers: int | None = None  # data loader processes; None: 0 on a CPU, some per GPU
    crop: int | None = None  # random crop for variable-size data (None: pad in batch)
    tensorboard: bool | str = False  # True: events in out/tb; a folder: there (fcnseg[tb])

    def check(self) -> None:
        """Types and ranges: fail before any work, naming the value and the allowed range."""
        big = 10**9
        for name, lo, hi in (("steps", 1, big), ("ckpt_every", 1, big), ("log_every", 1, big),
                             ("eval_every", 0, big), ("workers", 0, 256), ("seed", 0, 2**63 - 1),
                             ("batch_size", 1, 4096), ("accumulate", 1, 4096),
                             ("num_classes", 2, 65536), ("crop", 1, 16384)):  # fmt: skip
            v = getattr(self, name)
            if isinstance(v, dict) and name == "num_classes":  # several heads: one per head
                for head, n in v.items():
                    check_range(f"num_classes[{head!r}]", n, lo, hi, integer=True)
            elif v is not None or name in ("steps", "ckpt_every", "log_every", "eval_every",
                                           "seed"):  # fmt: skip
                check_range(name, v, lo, hi, integer=True)
        if self.lr is not None:
            check_range("lr", self.lr, 1e-30, 10.0)
            if self.lr <= 0:
                raise ValueError(f"lr must be in 1e-30..10.0, got {self.lr}")
        for name in ("model", "recipe", "data", "train_split", "val_split", "out", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        for name in ("model_options", "data_options"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a dict, got {getattr(self, name)!r}")
        if not isinstance(self.tensorboard, bool | str) or self.tensorboard == "":
            raise ValueError(f"tensorboard must be True, False or a folder, got "
                             f"{self.tensorboard!r}")  # fmt: skip
        if self.amp not in (None, "bf16", "fp16", "auto"):
            raise ValueError(f"amp must be bf16, fp16 or auto, got '{self.amp}'")
        if self.amp == "fp16" and not self.device.startswith("cuda"):
            raise ValueError("amp fp16 needs --device cuda; on a CPU use --amp bf16")
        get_recipe(self.recipe)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
