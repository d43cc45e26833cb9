"""The paper's published scores, as data, so that `fcnseg eval` prints them beside ours.

Keys are model names (registered or the release's folder names); each value maps a row label
to its metrics (fractions, like `ConfusionMatrix.compute`; the paper prints percentages).
Sources: FCN.md 6 (PASCAL VOC 2011 seg11valid; the release's own heavy-recipe mean IU) and
FCN.md 10 (CVPR Tables 4-6: NYUDv2 test, SIFT Flow test, PASCAL-Context 59 classes).
"""

from __future__ import annotations

__all__ = ["PAPER", "paper_rows"]

_NAN = float("nan")


def _row(pixel_acc: float, mean_acc: float, mean_iu: float, fw_iu: float, **extra) -> dict:
    return {"pixel_acc": pixel_acc / 100, "mean_acc": mean_acc / 100, "mean_iu": mean_iu / 100,
            "fw_iu": fw_iu / 100, **{k: v / 100 for k, v in extra.items()}}  # fmt: skip


def _iu(mean_iu: float) -> dict:
    return _row(_NAN, _NAN, mean_iu, _NAN)


_VOC32 = {"paper FCN-32s (CVPR, VOC2011 val)": _row(89.1, 73.3, 59.4, 81.4)}
_VOC16 = {"paper FCN-16s (CVPR, VOC2011 val)": _row(90.0, 75.7, 62.4, 83.0)}
_VOC8 = {"paper FCN-8s (CVPR, VOC2011 val)": _row(90.3, 75.9, 62.7, 83.2)}

PAPER: dict[str, dict[str, dict]] = {
    "fcn32s_vgg16": _VOC32,
    "fcn16s_vgg16": _VOC16,
    "fcn8s_vgg16": _VOC8,
    "voc-fcn32s": {**_VOC32, "release voc-fcn32s (heavy)": _iu(63.6)},
    "voc-fcn16s": {**_VOC16, "release voc-fcn16s (heavy)": _iu(65.0)},
    "voc-fcn8s": {**_VOC8, "release voc-fcn8s (heavy)": _iu(65.5)},
    "voc-fcn8s-atonce": {"release voc-fcn8s-atonce": _iu(65.4)},
    "fcn8s_atonce_vgg16": {"release voc-fcn8s-atonce": _iu(65.4)},
    "voc-fcn-alexnet": {"release voc-fcn-alexnet": _iu(48.0)},
    "nyud-fcn32s-color": {"paper FCN-32s RGB (NYUDv2 test)": _row(60.0, 42.2, 29.2, 43.9)},
    "nyud-fcn32s-color-d": {"paper FCN-32s RGBD (NYUDv2 test)": _row(61.5, 42.4, 30.5, 45.5)},
    "nyud-fcn32s-hha": {"paper FCN-32s HHA (NYUDv2 test)": _row(57.1, 35.2, 24.2, 40.4)},
    "nyud-fcn32s-color-hha": {
        "paper FCN-32s RGB-HHA (NYUDv2 test)": _row(64.3, 44.9, 32.8, 48.0),
        "paper FCN-16s RGB-HHA (NYUDv2 test)": _row(65.4, 46.1, 34.0, 49.5),
    },
    "pascalcontext-fcn32s": {"paper FCN-32s (Context 59)": _row(63.8, 42.7, 31.8, 48.3)},
    "pascalcontext-fcn16s": {"paper FCN-16s (Context 59)": _row(65.7, 46.2, 34.8, 50.7)},
    "pascalcontext-fcn8s": {"paper FCN-8s (Context 59)": _row(65.9, 46.5, 35.1, 51.0)},
    "siftflow-fcn16s": {
        "paper FCN-16s (SIFT Flow test)": _row(85.2, 51.7, 39.5, 76.1, geo_pixel_acc=94.3)
    },
}


def paper_rows(model_name: str) -> dict[str, dict]:
    """The paper's rows to print beside a score of `model_name` ({} when it published none)."""
    return PAPER.get(model_name, {})
