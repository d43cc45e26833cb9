"""What every subcommand shares: the parser that suggests options, argparse types with ranges,
KEY=VALUE options, --nproc relaunching, the dataset of a checkpoint, --fast."""

from __future__ import annotations

import argparse
import difflib
import os


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every option of the parser and of its subcommands."""
    found = []
    for action in parser._actions:
        found += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _option_strings(sub)
    return found


class _Parser(argparse.ArgumentParser):
    """Rejects unknown options with a suggestion of the closest known one."""

    def error(self, message: str):
        if "unrecognized arguments" in message:
            known = _option_strings(self)
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], known, n=1)
                if close:
                    message += f" (did you mean {close[0]}?)"
        super().error(message)


def ranged(kind, lo, hi):
    """argparse type: a number in lo..hi, with the offending value and the range in the error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            kind_name = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"'{text}' is not {kind_name}") from None
        if not (lo <= value <= hi):  # also refuses nan
            raise argparse.ArgumentTypeError(
                f"must be in {show_number(lo)}..{show_number(hi)}, got {text}"
            )
        return value

    return parse


def show_number(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def int_list(lo: int, hi: int):
    """argparse type: comma-separated integers, each in lo..hi (e.g. 600,250,250)."""
    one = ranged(int, lo, hi)

    def parse(text: str) -> list[int]:
        try:
            return [one(v) for v in text.split(",")]
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{text}: each value {e}") from None

    return parse


def key_values(pairs: list[str] | None, flag: str = "--data-option") -> dict:
    """['n_train=3000', 'scale=2,3', 'layout=same'] -> {'n_train': 3000, 'scale': (2, 3), ...}."""
    out = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep:
            raise ValueError(f"{flag} '{pair}': write KEY=VALUE, e.g. n_train=3000")
        # ids are file stems: always text (2008_000008 and 05005 are no numbers)
        values = text.split(",") if key == "ids" else [_number_or_text(v) for v in text.split(",")]
        out[key] = values[0] if len(values) == 1 else tuple(values)
    return out


def _number_or_text(text: str):
    """'3' -> 3, '2.5' -> 2.5, 'same' -> 'same'; text that a number would not write back as
    given ('05005', '2008_000008', ' 3') stays text."""
    if "_" in text or text != text.strip():
        return text
    try:
        value = int(text)
        return value if str(value) == text.lstrip("+") else text
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def launching(args) -> bool:
    """--nproc N > 1 in the process the user started (not its check run): relaunch."""
    return args.nproc > 1 and not os.environ.get("FCNSEG_NPROC_CHECK")


def relaunch(args) -> int:
    """This command's checks in one process, then its command line again under torchrun, one
    process per rank (--nproc N); workers' errors said once (cli.launch)."""
    from .launch import relaunch as launch

    return launch(args)


def checkpoint_dataset(args, ckpt: dict, model=None):
    """(data spec, dataset) for --split: --data / --data-option, else what `ckpt` trained on;
    `model` (a release net) sets the modality and task as in training (net_data_options)."""
    from ..data.build import DATA_HELP, open_dataset

    config = ckpt.get("config", {})
    data = args.data or config.get("data")
    if not data:
        raise ValueError(f"which data? pass --data {DATA_HELP}")
    # the training options fit only the training data; given ones override them key by key
    inherited = config.get("data_options", {}) if _same_data(data, config.get("data")) else {}
    options = {**inherited, **key_values(args.data_option)}
    if model is not None:
        from ..netdata import net_data_options

        options = net_data_options(getattr(model, "name", ""), data, options)
    return data, open_dataset(data, args.split, options)


def _same_data(a: str | None, b: str | None) -> bool:
    """Two data specs name one dataset: the same kind, and roots that are one folder
    (voc:/d/VOC2012 and voc:/d/VOC2012/ are)."""
    if not a or not b:
        return False
    (ka, _, ra), (kb, _, rb) = a.partition(":"), b.partition(":")
    if ka != kb:
        return False
    if ra == rb:
        return True
    import os

    return bool(ra and rb) and os.path.realpath(ra) == os.path.realpath(rb)


def fast_model(model, fast: bool, device):
    """--fast: FastFCN, the exact CPU path (a background pass per distinct input size, about
    one ordinary pass at 500x500: it pays from the second image of a size). Every VGG16,
    AlexNet and CaffeNet FCN, the release's two-stream and two-head nets included; not the
    GoogLeNet FCN (it pads its input)."""
    if not fast:
        return model
    import torch

    from ..fast import FastFCN

    if torch.device(device).type != "cpu":
        raise ValueError(f"--fast is a CPU path; on {device} drop --fast (use --amp there)")
    try:
        return FastFCN(model, max_cached=8)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--fast: {e}; run without --fast") from e


def counts(classes: dict) -> str:
    return ", ".join(f"{k} {v}" if k else str(v) for k, v in classes.items())


__all__ = ["FAST_HELP", "OVERWRITE_HELP", "fast_model", "key_values", "ranged"]
STEPS = ranged(int, 1, 10**9)
BATCH = ranged(int, 1, 4096)
CLASSES = ranged(int, 2, 65536)
WIDTH = ranged(float, 1 / 64, 8.0)
WORKERS = ranged(int, 0, 256)
STEPS0 = ranged(int, 0, 10**9)
OVERWRITE_HELP = (
    "replace output files that exist already (never the inputs); without it such outputs "
    "are refused before any work"
)
FAST_HELP = (
    "exact faster CPU path (FastFCN) for every VGG16/AlexNet/CaffeNet FCN, the release's "
    "two-input and two-head nets included: ~2.3x at 500x500 once a size "
    "has been seen (the first image of each size costs about one ordinary pass)"
)
