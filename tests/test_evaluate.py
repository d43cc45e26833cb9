"""evaluate() over a model whose argmax is known, and the tables and figures of a result."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fcnseg.evaluate import (
    evaluate,
    format_per_class,
    format_table,
    load_confusion,
    plot_confusion,
    save_confusion,
)
from fcnseg.metrics import ConfusionMatrix

C = 4
IGNORE = 255


class Oracle(nn.Module):
    """Predicts the label map written into channel 0 of the image: argmax is that map."""

    def __init__(self, num_classes: int = C) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.scale = nn.Parameter(torch.ones(()))
        self.seen: list[tuple[bool, bool]] = []  # (training, inference mode) per call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, torch.is_inference_mode_enabled()))
        labels = x[:, 0].round().long().clamp(0, self.num_classes - 1)
        onehot = nn.functional.one_hot(labels, self.num_classes)
        return onehot.permute(0, 3, 1, 2).to(x.dtype) * self.scale  # (N, C, H, W)


def batch(pred: np.ndarray, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(pred.shape[0], 3, *pred.shape[1:])
    images[:, 0] = torch.from_numpy(pred).float()
    return images, torch.from_numpy(target).long()


def random_loader(seed: int = 0, n_batches: int = 3):
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n_batches):
        target = rng.integers(0, C, (2, 9, 11))
        target[rng.random(target.shape) < 0.1] = IGNORE
        pairs.append((rng.integers(0, C, target.shape), target))
    return pairs


def test_matrix_equals_direct_accumulation():
    pairs = random_loader()
    direct = ConfusionMatrix(C)
    for pred, target in pairs:
        direct.update(pred, target)
    cm = evaluate(Oracle(), [batch(p, t) for p, t in pairs], C)
    assert isinstance(cm, ConfusionMatrix)
    np.testing.assert_array_equal(cm.matrix, direct.matrix)


def test_padding_labelled_255_is_not_scored():
    # two images of different sizes padded to one batch: the padded pixels are predicted as
    # class 3 but labelled 255, so only the real pixels count
    small = np.zeros((5, 6), int)
    large = np.ones((8, 8), int)
    pred = np.full((2, 8, 8), 3)
    pred[0, :5, :6] = small
    pred[1] = large
    target = np.full((2, 8, 8), IGNORE)
    target[0, :5, :6] = small
    target[1] = large
    cm = evaluate(Oracle(), [batch(pred, target)], C)
    assert cm.matrix[0, 0] == 30 and cm.matrix[1, 1] == 64 and cm.matrix.sum() == 94
    assert cm.compute()["pixel_acc"] == 1.0


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_inference_mode_and_flag_restored(training):
    model = Oracle().train(training)
    evaluate(model, [batch(*random_loader()[0])], C)
    assert model.seen == [(False, True)]
    assert model.training is training


def test_flag_restored_on_error():
    model = Oracle(num_classes=3).train()  # 3 score maps for a 4-class evaluation
    with pytest.raises(ValueError, match=r"\(2, 3, 9, 11\).*num_classes=4"):
        evaluate(model, [batch(*random_loader()[0])], C)
    assert model.training


def test_spatial_mismatch_raises():
    class Shrink(Oracle):
        def forward(self, x):
            return super().forward(x)[..., :-1]

    with pytest.raises(ValueError, match="do not cover targets"):
        evaluate(Shrink(), [batch(*random_loader()[0])], C)


def test_amp_and_progress_give_the_same_matrix():
    pairs = [batch(p, t) for p, t in random_loader(seed=1)]
    plain = evaluate(Oracle(), pairs, C)
    amp = evaluate(Oracle(), pairs, C, amp_dtype=torch.bfloat16, progress=True, device="cpu")
    np.testing.assert_array_equal(amp.matrix, plain.matrix)


# --- reports ---------------------------------------------------------------------------------

PAPER = {  # FCN.md section 6, as fractions
    "FCN-32s": {"pixel_acc": 0.891, "mean_acc": 0.733, "mean_iu": 0.594, "fw_iu": 0.814},
    "FCN-8s": {"pixel_acc": 0.903, "mean_acc": 0.759, "mean_iu": 0.627, "fw_iu": 0.832},
}


def test_format_table_paper_order_and_numbers():
    text = format_table(PAPER)
    lines = text.splitlines()
    assert lines[0] == "| model | pixel acc. | mean acc. | mean IU | f.w. IU |"
    assert lines[2] == "| FCN-32s | 89.1 | 73.3 | 59.4 | 81.4 |"
    assert lines[3] == "| FCN-8s | 90.3 | 75.9 | 62.7 | 83.2 |"
    fractions = format_table({"a|b": {**PAPER["FCN-8s"], "mean_acc": math.nan}}, percent=False)
    assert "| a\\|b | 0.9030 | n/a | 0.6270 | 0.8320 |" in fractions
    with pytest.raises(ValueError, match=r"'x' lacks \['fw_iu'\]"):
        format_table({"x": {"pixel_acc": 1, "mean_acc": 1, "mean_iu": 1}})


def test_format_table_of_computed_metrics():
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))
    # pixel 3/4; acc (1, 2/3) -> 5/6; IU (1/2, 2/3) -> 7/12; f.w. (1/2 + 3 * 2/3) / 4 = 5/8
    assert format_table({"m": cm.compute()}).splitlines()[-1] == "| m | 75.0 | 83.3 | 58.3 | 62.5 |"


def test_format_per_class_names_and_nan():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 0, 1]), np.array([0, 1, 1]))  # class 2 absent everywhere
    text = format_per_class(cm.compute(), ["background", "cat", "dog"])
    assert "| background | 50.0 | 100.0 |" in text
    assert "| cat | 50.0 | 50.0 |" in text
    assert "| dog | n/a | n/a |" in text
    assert text.splitlines()[-1] == "| **mean** | 50.0 | 75.0 |"
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        format_per_class(cm.compute(), ["a", "b"])


@pytest.mark.parametrize("normalize", ["true", None])
def test_plot_confusion_writes_png(tmp_path, normalize):
    m = np.array([[50, 3, 0], [4, 20, 1], [0, 0, 0]])  # an empty row must not break it
    path = plot_confusion(m, ["bg", "cat", "dog"], tmp_path / "sub" / "cm.png", normalize=normalize)
    assert path == tmp_path / "sub" / "cm.png"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 100


def test_plot_confusion_accepts_accumulator_and_no_names(tmp_path):
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    with Image.open(plot_confusion(cm, [], tmp_path / "cm.png", normalize="all")) as im:
        assert im.size[0] > 0
    with pytest.raises(ValueError, match="normalize"):
        plot_confusion(cm, None, tmp_path / "x.png", normalize="rows")


def test_save_and_load_confusion_round_trip(tmp_path):
    m = np.array([[5, 1], [0, 7]], dtype=np.int64)
    names = ["background", "dining, table"]
    path = save_confusion(torch.from_numpy(m), names, tmp_path / "out" / "confusion.csv")
    back, back_names = load_confusion(path)
    np.testing.assert_array_equal(back, m)
    assert back_names == names and back.dtype == np.int64
    with pytest.raises(ValueError, match="3 class names for a 2x2"):
        save_confusion(m, ["a", "b", "c"], tmp_path / "bad.csv")
