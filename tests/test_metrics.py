"""ConfusionMatrix and the upper bound, against numbers computed by hand or by explicit loops."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fcnseg.metrics import ConfusionMatrix, downsample_upsample, upper_bound

IGNORE = 255
FOUR = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")


def reference_metrics(pairs: list[tuple[int, int]], n: int) -> dict:
    """The paper's formulas written out with loops over (gt, pred) pixel pairs, NaN-aware."""
    counts = [[0] * n for _ in range(n)]
    for g, p in pairs:
        if g != IGNORE:
            counts[g][p] += 1
    t = [sum(counts[i]) for i in range(n)]
    col = [sum(counts[j][i] for j in range(n)) for i in range(n)]
    total = sum(t)
    acc, iu = [], []
    for i in range(n):
        acc.append(counts[i][i] / t[i] if t[i] else math.nan)
        union = t[i] + col[i] - counts[i][i]
        iu.append(counts[i][i] / union if union else math.nan)

    def nanmean(v):
        v = [x for x in v if not math.isnan(x)]
        return sum(v) / len(v) if v else math.nan

    return {
        "matrix": np.array(counts),
        "pixel_acc": sum(counts[i][i] for i in range(n)) / total if total else math.nan,
        "mean_acc": nanmean(acc),
        "mean_iu": nanmean(iu),
        "fw_iu": sum(t[i] * iu[i] for i in range(n) if t[i]) / total if total else math.nan,
        "iu": iu,
        "acc": acc,
    }


def assert_close(a: float, b: float) -> None:
    assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12), (a, b)


# --- hand-computed cases ---------------------------------------------------------------------


def test_small_matrix_by_hand():
    target = np.array([[0, 0, 1], [1, IGNORE, 2]])
    pred = np.array([[0, 1, 1], [1, 7, 0]])  # 7 sits on the ignored pixel: never looked at
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    m = cm.compute()
    # t = (2, 2, 1), predicted = (2, 3, 0), diagonal = (1, 2, 0), unions = (3, 3, 1)
    assert m["pixel_acc"] == pytest.approx(3 / 5)
    assert m["mean_acc"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["mean_iu"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert m["fw_iu"] == pytest.approx((2 * 1 / 3 + 2 * 2 / 3 + 1 * 0) / 5)
    np.testing.assert_allclose(m["iu"], [1 / 3, 2 / 3, 0])
    np.testing.assert_allclose(m["acc"], [1 / 2, 1, 0])
    assert all(isinstance(m[k], float) for k in FOUR)
    assert m["iu"].dtype == np.float64


def test_nan_aware_means():
    # class 1 only in the ground truth, class 2 only predicted, class 3 in neither
    target = np.array([0, 0, 0, 1])
    pred = np.array([0, 0, 2, 0])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    m = cm.compute()
    # t = (3, 1, 0, 0), predicted = (3, 0, 1, 0), diagonal = (2, 0, 0, 0), unions = (4, 1, 1, 0)
    assert m["pixel_acc"] == pytest.approx(2 / 4)
    assert m["mean_acc"] == pytest.approx((2 / 3 + 0) / 2)  # classes 2, 3 have t = 0: skipped
    assert m["mean_iu"] == pytest.approx((2 / 4 + 0 + 0) / 3)  # class 3 has union 0: skipped
    assert m["fw_iu"] == pytest.approx((3 * 2 / 4 + 1 * 0) / 4)
    np.testing.assert_array_equal(np.isnan(m["acc"]), [False, False, True, True])
    np.testing.assert_array_equal(np.isnan(m["iu"]), [False, False, False, True])
    assert m["iu"][2] == 0.0  # only predicted: a false positive class scores 0, not n/a


def test_ignore_index_excluded_and_configurable():
    target = np.array([IGNORE, IGNORE, 1, 0])
    pred = np.array([1, 0, 1, 0])
    cm = ConfusionMatrix(2)
    cm.update(pred, target)
    assert cm.matrix.sum() == 2 and cm.compute()["pixel_acc"] == 1.0
    other = ConfusionMatrix(2, ignore_index=-1)
    other.update(np.array([0, 1, 1]), np.array([-1, 1, 0]))
    assert other.matrix.tolist() == [[0, 1], [0, 1]]


def test_empty_matrix_is_all_nan():
    cm = ConfusionMatrix(3)
    cm.update(np.zeros((2, 2), int), np.full((2, 2), IGNORE))
    m = cm.compute()
    assert all(math.isnan(m[k]) for k in FOUR)
    assert np.isnan(m["iu"]).all() and np.isnan(m["acc"]).all()


def test_torch_and_numpy_agree_any_leading_dims():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, (2, 3, 7, 9))
    target[rng.random(target.shape) < 0.2] = IGNORE
    pred = rng.integers(0, 5, target.shape)
    a, b, c = ConfusionMatrix(5), ConfusionMatrix(5), ConfusionMatrix(5)
    a.update(pred, target)
    b.update(torch.from_numpy(pred), torch.from_numpy(target).to(torch.uint8))
    c.update(torch.from_numpy(pred).to(torch.int32), target.astype(np.uint8))  # mixed types
    np.testing.assert_array_equal(a.matrix, b.matrix)
    np.testing.assert_array_equal(a.matrix, c.matrix)
    assert a.matrix.dtype == np.int64
    ref = reference_metrics(list(zip(target.ravel(), pred.ravel(), strict=True)), 5)
    np.testing.assert_array_equal(a.matrix, ref["matrix"])


def test_matrix_is_read_only_and_reset():
    cm = ConfusionMatrix(2)
    cm.update(np.array([1]), np.array([0]))
    with pytest.raises(ValueError):
        cm.matrix[0, 0] = 5
    cm.reset()
    assert cm.matrix.sum() == 0


# --- errors ----------------------------------------------------------------------------------


def test_target_out_of_range_names_the_values():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"target.*\[7, 9\].*ignore_index=255"):
        cm.update(np.array([0, 0, 0]), np.array([7, 9, 1]))
    with pytest.raises(ValueError, match=r"\[-1\]"):
        cm.update(torch.tensor([0]), torch.tensor([-1]))
    assert cm.matrix.sum() == 0  # a rejected batch adds nothing


def test_pred_out_of_range_names_the_values():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"pred.*\[3\]"):
        cm.update(torch.tensor([3, 0]), torch.tensor([1, 0]))


def test_shape_mismatch_names_both_shapes():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        cm.update(np.zeros((2, 3), int), np.zeros((3, 2), int))


def test_scores_instead_of_indices_rejected():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="argmax"):
        cm.update(torch.rand(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="float64"):
        cm.update(np.zeros(4), np.zeros(4, int))


@pytest.mark.parametrize("bad", [0, -2, 2.0, True])
def test_bad_num_classes(bad):
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(bad)


def test_merge_mismatch_and_state_dict():
    a = ConfusionMatrix(3)
    a.update(np.array([0, 1, 2]), np.array([0, 2, 2]))
    with pytest.raises(ValueError, match="num_classes=4"):
        a.merge(ConfusionMatrix(4))
    state = a.state_dict()
    b = ConfusionMatrix(3)
    b.load_state_dict(state)
    np.testing.assert_array_equal(a.matrix, b.matrix)
    with pytest.raises(ValueError, match="from_state_dict"):
        ConfusionMatrix(5).load_state_dict(state)
    np.testing.assert_array_equal(ConfusionMatrix.from_state_dict(state).matrix, a.matrix)


def test_state_dict_survives_torch_save_weights_only(tmp_path):
    a = ConfusionMatrix(4, ignore_index=255)
    a.update(np.array([0, 3, 3]), np.array([0, 3, 1]))
    torch.save({"eval": a.state_dict()}, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)["eval"]
    np.testing.assert_array_equal(ConfusionMatrix.from_state_dict(state).matrix, a.matrix)


def test_all_reduce_is_a_no_op_without_distributed():
    a = ConfusionMatrix(2)
    a.update(np.array([0, 1]), np.array([0, 0]))
    assert a.all_reduce() is a and a.matrix.tolist() == [[1, 1], [0, 0]]


def test_all_reduce_single_process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdv'}", rank=0, world_size=1)
    try:
        a = ConfusionMatrix(2)
        a.update(np.array([0, 1, 1]), np.array([0, 0, 1]))
        assert a.all_reduce().matrix.tolist() == [[1, 1], [0, 1]]
    finally:
        dist.destroy_process_group()


# --- properties ------------------------------------------------------------------------------


@st.composite
def labelled_batches(draw, min_images=1, max_images=4):
    """(pred, target, n): a few small label maps with some ignore pixels."""
    n = draw(st.integers(1, 6))
    shape = (draw(st.integers(min_images, max_images)), draw(st.integers(1, 6)),
             draw(st.integers(1, 6)))  # fmt: skip
    classes = st.integers(0, n - 1)
    target = draw(hnp.arrays(np.int64, shape, elements=classes | st.just(IGNORE)))
    pred = draw(hnp.arrays(np.int64, shape, elements=classes))
    return pred, target, n


@settings(max_examples=50, deadline=None)
@given(labelled_batches())
def test_matches_loop_reference(batch):
    pred, target, n = batch
    cm = ConfusionMatrix(n)
    cm.update(pred, target)
    ref = reference_metrics(list(zip(target.ravel(), pred.ravel(), strict=True)), n)
    np.testing.assert_array_equal(cm.matrix, ref["matrix"])
    m = cm.compute()
    for k in FOUR:
        assert_close(m[k], ref[k])
    np.testing.assert_allclose(m["iu"], ref["iu"], equal_nan=True)
    np.testing.assert_allclose(m["acc"], ref["acc"], equal_nan=True)


@settings(max_examples=50, deadline=None)
@given(labelled_batches())
def test_perfect_prediction_scores_one(batch):
    _, target, n = batch
    target = target.copy()
    target.flat[0] = 0  # at least one labelled pixel
    cm = ConfusionMatrix(n)
    cm.update(np.where(target == IGNORE, 0, target), target)
    m = cm.compute()
    assert all(m[k] == pytest.approx(1.0) for k in FOUR)


@settings(max_examples=50, deadline=None)
@given(labelled_batches(min_images=2), st.randoms(use_true_random=False))
def test_order_and_splitting_do_not_matter(batch, rnd):
    pred, target, n = batch
    whole = ConfusionMatrix(n)
    whole.update(pred, target)
    order = list(range(len(pred)))
    rnd.shuffle(order)
    shuffled = ConfusionMatrix(n)
    for i in order:  # image by image, in another order
        shuffled.update(pred[i], target[i])
    cut = rnd.randint(1, len(pred) - 1)
    pieces = ConfusionMatrix(n)
    pieces.update(pred[:cut], target[:cut])
    pieces.update(torch.from_numpy(pred[cut:]), torch.from_numpy(target[cut:]))
    np.testing.assert_array_equal(shuffled.matrix, whole.matrix)
    np.testing.assert_array_equal(pieces.matrix, whole.matrix)
    for k in FOUR:
        assert_close(shuffled.compute()[k], whole.compute()[k])


@settings(max_examples=50, deadline=None)
@given(labelled_batches(), labelled_batches())
def test_merge_equals_one_matrix_updated_with_both(a, b):
    n = max(a[2], b[2])
    one, first, second = ConfusionMatrix(n), ConfusionMatrix(n), ConfusionMatrix(n)
    one.update(a[0], a[1])
    one.update(b[0], b[1])
    first.update(a[0], a[1])
    second.update(b[0], b[1])
    np.testing.assert_array_equal((first + second).matrix, one.matrix)
    first += second
    np.testing.assert_array_equal(first.matrix, one.matrix)
    np.testing.assert_array_equal(first.copy().merge(ConfusionMatrix(n)).matrix, one.matrix)


@settings(max_examples=50, deadline=None)
@given(labelled_batches())
def test_metrics_in_unit_range_and_pixel_acc_direct(batch):
    pred, target, n = batch
    cm = ConfusionMatrix(n)
    cm.update(pred, target)
    m = cm.compute()
    labelled = target != IGNORE
    if labelled.any():
        direct = (pred[labelled] == target[labelled]).sum() / labelled.sum()
        assert m["pixel_acc"] == pytest.approx(direct)
        for k in FOUR:
            assert 0.0 <= m[k] <= 1.0
    else:
        assert math.isnan(m["pixel_acc"])
    defined = m["iu"][~np.isnan(m["iu"])]
    assert ((defined >= 0) & (defined <= 1)).all()


# --- upper bound -----------------------------------------------------------------------------


def test_downsample_upsample_by_hand():
    label = np.array(
        [
            [0, 0, 1, 1, 2],
            [0, 1, 1, 1, 2],
            [2, 2, 0, IGNORE, 1],
            [2, IGNORE, IGNORE, IGNORE, 1],
            [1, 0, 0, 0, 0],
        ]
    )
    # 2x2 blocks (partial at the right and bottom); mode of the non-ignore labels, ties -> smaller
    mode = np.array(
        [
            [0, 0, 1, 1, 2],
            [0, 0, 1, 1, 2],
            [2, 2, 0, 0, 1],
            [2, 2, 0, 0, 1],
            [0, 0, 0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(downsample_upsample(label, 2), mode)
    # centre pixel of each block (start + size // 2); ignored centres (3, 1), (3, 3) use the mode
    nearest = np.array(
        [
            [1, 1, 1, 1, 2],
            [1, 1, 1, 1, 2],
            [2, 2, 0, 0, 1],
            [2, 2, 0, 0, 1],
            [0, 0, 0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(downsample_upsample(label, 2, method="nearest"), nearest)


def test_downsample_upsample_ignore_handling():
    label = np.full((8, 8), IGNORE, dtype=np.uint8)
    label[:4, :4] = 3
    label[0, 0] = IGNORE
    out = downsample_upsample(label, 4)
    assert out.dtype == np.uint8 and IGNORE not in out  # a prediction: always a class
    assert (out[:4, :4] == 3).all()  # ignore pixels do not vote
    assert (out[4:, :] == 0).all() and (out[:, 4:] == 0).all()  # all-ignore blocks: class 0
    m = upper_bound([label], num_classes=4, factors=(4, 8))
    assert m[4]["pixel_acc"] == 1.0 and m[8]["pixel_acc"] == 1.0  # ignore pixels not scored


@pytest.mark.parametrize("shape", [(37, 53), (1, 1), (31, 33), (2, 40, 9)])
@pytest.mark.parametrize("factor", [1, 8, 16, 32])
def test_non_divisible_sizes_keep_shape(shape, factor):
    label = np.random.default_rng(factor).integers(0, 4, shape)
    out = downsample_upsample(label, factor, method="nearest")
    assert out.shape == label.shape
    t = downsample_upsample(torch.from_numpy(label).to(torch.uint8), factor)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.shape == label.shape


def test_batches_equal_single_images():
    rng = np.random.default_rng(3)
    batch = rng.integers(0, 3, (3, 20, 28))
    batch[rng.random(batch.shape) < 0.3] = IGNORE
    for method in ("mode", "nearest"):
        out = downsample_upsample(batch, 8, method=method)
        for i in range(3):
            np.testing.assert_array_equal(out[i], downsample_upsample(batch[i], 8, method=method))


def test_factor_one_is_perfect():
    rng = np.random.default_rng(1)
    targets = [rng.integers(0, 5, (13, 17)) for _ in range(3)]
    targets[0][:3] = IGNORE
    m = upper_bound(targets, 5, factors=(1,))[1]
    assert all(m[k] == 1.0 for k in FOUR)


def blobs(seed: int, size: int = 160, n_classes: int = 4) -> np.ndarray:
    """A label map of a few large discs on background: boundaries are long, smooth curves."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    label = np.zeros((size, size), dtype=np.int64)
    for c in range(1, n_classes):
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        r = rng.uniform(0.15, 0.3) * size
        label[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = c
    return label


@pytest.mark.parametrize("method", ["mode", "nearest"])
def test_finer_stride_bounds_higher_on_blobs(method):
    targets = [blobs(s) for s in range(4)]
    b = upper_bound(targets, 4, factors=(32, 16, 8), method=method)
    # holds for each of the first 200 seeds on its own, with either method
    assert b[8]["mean_iu"] > b[16]["mean_iu"] > b[32]["mean_iu"] > 0.5
    assert b[8]["mean_iu"] > 0.85


def test_upper_bound_equals_accumulating_by_hand():
    targets = [blobs(s, size=70) for s in range(3)]
    cm = ConfusionMatrix(4)
    for t in targets:
        cm.update(downsample_upsample(t, 16), t)
    got = upper_bound(iter(targets), 4, factors=(16,))[16]  # a one-pass iterator is enough
    assert got["mean_iu"] == cm.compute()["mean_iu"]


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.int64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40),
                  elements=st.sampled_from([0, 1, 2, IGNORE])))  # fmt: skip
def test_mode_pixel_accuracy_never_drops_with_finer_stride(label):
    # Nested grids: each 2f block is four f blocks, and each f block's mode scores at least as
    # many pixels as the 2f block's mode does inside it.
    label = label.copy()
    label.flat[0] = 0
    b = upper_bound([label], 3, factors=(16, 8, 4, 2, 1))
    accs = [b[f]["pixel_acc"] for f in (16, 8, 4, 2, 1)]
    assert all(x <= y + 1e-12 for x, y in itertools.pairwise(accs))
    assert accs[-1] == 1.0


def test_downsample_upsample_errors():
    with pytest.raises(ValueError, match="factor"):
        downsample_upsample(np.zeros((4, 4), int), 0)
    with pytest.raises(ValueError, match="method"):
        downsample_upsample(np.zeros((4, 4), int), 2, method="bilinear")
    with pytest.raises(ValueError, match="float32"):
        downsample_upsample(np.zeros((4, 4), np.float32), 2)
    with pytest.raises(ValueError, match=r"\[-3\]"):
        downsample_upsample(np.full((4, 4), -3), 2)
    with pytest.raises(ValueError, match="factors"):
        upper_bound([np.zeros((4, 4), int)], 2, factors=())


def _all_reduce_worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        cm = ConfusionMatrix(3)
        cm.update(np.array([rank, 2]), np.array([rank, 1]))  # rank 0: (0,0),(1,2); 1: (1,1),(1,2)
        torch.save(cm.all_reduce().state_dict(), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_sums_two_processes(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "cm")
    mp.spawn(_all_reduce_worker, args=(f"file://{tmp_path / 'rdv'}", out), nprocs=2)
    for rank in range(2):
        m = ConfusionMatrix.from_state_dict(torch.load(f"{out}.{rank}", weights_only=True))
        assert m.matrix.tolist() == [[1, 0, 0], [0, 1, 2], [0, 0, 0]]
