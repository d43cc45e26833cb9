"""A net meets its data: which modality and task a release net reads (its inputs and heads,
never a name table), which of its heads the data has targets for, and how many classes a run
scores. Training, evaluation and compare ask here, so the three agree."""

from __future__ import annotations

from .data.build import modality_of
from .data.build import net_data_options as for_net
from .models.reference import REFERENCE_NETS

__all__ = ["data_head", "net_data_options", "run_classes"]


def run_classes(config, data, class_names, head: str | None = None):
    """The run's classes: a release net's own (checked against the data), else the option's
    or the data's. A release net with num_classes given keeps its layers with new score layers
    of that many classes (a dict by head for two heads), e.g. on the RGB-D digit scenes.
    `head`: the one head of a two-head net that the data has targets for (task=sem or geo)."""
    spec = REFERENCE_NETS.get(config.model)
    if spec is None:
        return config.num_classes or len(class_names)
    heads = getattr(data, "head_classes", None)
    want = spec.classes if config.num_classes is None else config.num_classes
    if head is not None:  # a two-head net on one head's targets: that head is checked
        have, wanted = len(heads[head]), want[head] if isinstance(want, dict) else want
        if have != wanted:
            raise ValueError(f"{config.model}'s {head} head scores {wanted} classes but data "
                             f"'{config.data}' has {have}: use the data it was made for, or "
                             f"pass num_classes={{{', '.join(f'{k!r}: ...' for k in want)}}} "
                             f"with {have} for {head!r}")  # fmt: skip
        return want
    if isinstance(spec.classes, dict) and not heads:
        raise ValueError(f"{config.model} has heads {', '.join(spec.classes)} but data "
                         f"'{config.data}' has one target per image: use data with each "
                         f"head's labels (siftflow:ROOT, or digits-rgbd task=both)")  # fmt: skip
    have = {k: len(v) for k, v in heads.items()} if isinstance(spec.classes, dict) \
        else len(class_names)  # fmt: skip
    if have != want:
        raise ValueError(f"{config.model} scores {want} classes but data '{config.data}' has "
                         f"{have}: use the data it was made for, or pass num_classes={have} for "
                         f"its layers with new score layers")  # fmt: skip
    return want


def data_head(model_name: str, data) -> str | None:
    """The head a two-head release net trains and scores alone: the data's one head when the
    data gives one head's targets (SIFT Flow's task=sem or geo); None: every head."""
    spec = REFERENCE_NETS.get(model_name)
    heads = getattr(data, "head_classes", None) or {}
    if spec is None or not isinstance(spec.classes, dict) or len(heads) != 1:
        return None
    head = next(iter(heads))
    return head if head in spec.classes else None


def net_data_options(model: str, data: str, options: dict) -> dict:
    """Data options for training or scoring release net `model` (or any fcnseg model) on
    `data`: its inputs set the modality (nyud-fcn32s-hha reads HHA), its heads the task
    (siftflow-fcn32s both tasks); a given option that contradicts the net is refused, naming
    the net made for it (see data.build.net_data_options)."""
    spec = REFERENCE_NETS.get(model)
    others = {}
    for s in REFERENCE_NETS.values():
        if isinstance(s.classes, dict):
            others.setdefault(("task", "both"), s.name)
        if spec is not None and s.name.split("-")[0] == spec.name.split("-")[0]:
            others.setdefault(("modality", modality_of(s.inputs)), s.name)
    if spec is None:
        return for_net(data, options, net=model, others=others)
    heads = tuple(spec.classes) if isinstance(spec.classes, dict) else None
    return for_net(data, options, net=model, inputs=tuple(spec.inputs), heads=heads,
                   others=others)  # fmt: skip
