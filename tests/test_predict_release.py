"""fcnseg predict with the release's RGB-D and two-head nets: depth / HHA paired by file name,
HHA computed from depth, SIFT Flow's two label maps, the datasets' class names, tiling of
several inputs and heads, and every wrong pair refused before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_
from PIL import Image

from fcnseg import build_reference
from fcnseg.categories import VOC_CLASSES, voc_palette
from fcnseg.checkpoint import model_state, save_checkpoint
from fcnseg.cli import main
from fcnseg.data.context import CONTEXT_CLASSES
from fcnseg.data.hha import CAMERAS, hha
from fcnseg.data.nyud import NYUD_CLASSES
from fcnseg.data.siftflow import SIFTFLOW_GEOMETRIC_CLASSES, SIFTFLOW_SEMANTIC_CLASSES
from fcnseg.predict import _spans, _tile_plan, class_names, predict, predict_probs
from fcnseg.predict_folder import _output_paths, _output_stems, blend_overlay, predict_paths

SIZES = {1: (40, 56), 2: (40, 56), 3: (36, 50)}  # two of one size (a batch), one other
_NETS: dict[str, torch.nn.Module] = {}


def _net(name: str) -> torch.nn.Module:
    if name not in _NETS:
        torch.manual_seed(0)
        _NETS[name] = randomize_(build_reference(name, width=0.0625)).eval()
    return _NETS[name]


def _ckpt(tmp_path: Path, name: str) -> str:
    return str(save_checkpoint(tmp_path / f"{name}.pt", model_state(_net(name))))


def _arrays(i: int):
    """Colour (H, W, 3), depth (H, W) uint16 mm with holes, HHA (H, W, 3) of image i."""
    h, w = SIZES[i]
    rng = np.random.default_rng(i)
    color = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rows = np.linspace(900, 4000, h)[:, None] + rng.integers(0, 300, (h, w))
    depth = rows.astype(np.uint16)
    depth[:3, :4] = 0  # missing readings
    hha_image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return color, depth, hha_image


def _tree(root: Path) -> Path:
    """NYUDv2's layout: data/images, data/depth (16-bit), data/hha, same file names."""
    for sub in ("images", "depth", "hha"):
        (root / "data" / sub).mkdir(parents=True)
    for i in SIZES:
        color, depth, hha_image = _arrays(i)
        Image.fromarray(color).save(root / "data" / "images" / f"img_{i}.png")
        Image.fromarray(depth).save(root / "data" / "depth" / f"img_{i}.png")
        Image.fromarray(hha_image).save(root / "data" / "hha" / f"img_{i}.png")
    return root / "data"


def _by_hand(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The net called on its input prepared by hand: {head: argmax (H, W)}, head "" for one."""
    pre = model.preprocessing
    parts = {}
    for key, a in inputs.items():
        t = torch.from_numpy(a)[None, None] if a.ndim == 2 else torch.from_numpy(a)[None]
        t = t.float() if a.ndim == 2 else t.permute(0, 3, 1, 2)
        parts[key] = (pre[key] if isinstance(pre, dict) else pre).batch(t)
    if model.stream_names:
        x = parts
    else:
        x = torch.cat(list(parts.values()), 1)
        assert torch.isfinite(x).all()  # depth holes (0) do not reach the log
    with torch.no_grad():
        y = model(x)
    y = y if isinstance(y, dict) else {"": y}
    return {k: v[0].argmax(0).numpy() for k, v in y.items()}


def _labels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "P"
        return np.array(im)


def _run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------ the CLI
def test_color_depth_net_pairs_depth_files_by_name(tmp_path, capsys):
    data = _tree(tmp_path / "nyud")
    out = tmp_path / "out"
    code, text, err = _run(["predict", data / "images", "--depth", data / "depth", "--model",
                            _ckpt(tmp_path, "nyud-fcn32s-color-d"), "-o", out, "--save-probs",
                            "--batch-size", "2"], capsys)  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"img_{i}{s}" for i in SIZES for s in (".png", "_overlay.png", "_probs.npz")
    )
    model = _net("nyud-fcn32s-color-d")
    for i in SIZES:
        color, depth, _ = _arrays(i)
        labels = _labels(out / f"img_{i}.png")
        assert labels.shape == SIZES[i] and labels.max() < 40
        np.testing.assert_array_equal(labels, _by_hand(model, {"color": color, "depth": depth})[""])
        data_npz = np.load(out / f"img_{i}_probs.npz")
        assert data_npz["probs"].shape == (40, *SIZES[i])
        assert list(data_npz["class_names"]) == list(NYUD_CLASSES)
    legend = text.split("classes (images): ")[1]
    assert legend.split(" (")[0] in NYUD_CLASSES  # names, not indices
    assert not any(c.isdigit() for c in legend.split(" (")[0])


def test_color_hha_net_with_depth_and_camera_computes_hha(tmp_path, capsys):
    data = _tree(tmp_path / "nyud")
    out = tmp_path / "out"
    code, _, err = _run(["predict", data / "images" / "img_1.png", data / "images" / "img_3.png",
                         "--depth", str(data / "depth" / "*.png"), "--camera", "nyud", "--model",
                         _ckpt(tmp_path, "nyud-fcn32s-color-hha"), "-o", out], capsys)  # fmt: skip
    assert code == 0, err
    model = _net("nyud-fcn32s-color-hha")
    for i in (1, 3):
        color, depth, _ = _arrays(i)
        made = hha(depth / 1000.0, CAMERAS["nyud"])
        want = _by_hand(model, {"color": color, "hha": made})[""]
        np.testing.assert_array_equal(_labels(out / f"img_{i}.png"), want)
    assert not (out / "img_2.png").exists()
    # the same from the intrinsics' numbers
    fx, fy, cx, cy = CAMERAS["nyud"]
    out2 = tmp_path / "out2"
    code, _, err = _run(["predict", data / "images" / "img_1.png", "--depth", data / "depth",
                         "--intrinsics", f"{fx},{fy},{cx},{cy}", "--model",
                         _ckpt(tmp_path, "nyud-fcn32s-color-hha"), "-o", out2], capsys)  # fmt: skip
    assert code == 0, err
    np.testing.assert_array_equal(_labels(out2 / "img_1.png"), _labels(out / "img_1.png"))


def test_color_hha_net_with_hha_files_and_the_hha_only_net(tmp_path, capsys):
    data = _tree(tmp_path / "nyud")
    out = tmp_path / "out"
    code, _, err = _run(["predict", data / "images", "--hha", data / "hha", "--model",
                         _ckpt(tmp_path, "nyud-fcn32s-color-hha"), "-o", out], capsys)  # fmt: skip
    assert code == 0, err
    model = _net("nyud-fcn32s-color-hha")
    for i in SIZES:
        color, _, hha_image = _arrays(i)
        want = _by_hand(model, {"color": color, "hha": hha_image})[""]
        np.testing.assert_array_equal(_labels(out / f"img_{i}.png"), want)
    # nyud-fcn32s-hha: HHA images as IMAGES, as before; or colour photos with --hha
    ckpt = _ckpt(tmp_path, "nyud-fcn32s-hha")
    code, text, err = _run(["predict", data / "hha", "--model", ckpt, "-o", tmp_path / "h"],
                           capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = _run(["predict", data / "images", "--hha", data / "hha", "--model", ckpt, "-o",
                         tmp_path / "h2"], capsys)  # fmt: skip
    assert code == 0, err
    model = _net("nyud-fcn32s-hha")
    for i in SIZES:
        want = _by_hand(model, {"hha": _arrays(i)[2]})[""]
        np.testing.assert_array_equal(_labels(tmp_path / "h" / f"img_{i}.png"), want)
        np.testing.assert_array_equal(_labels(tmp_path / "h2" / f"img_{i}.png"), want)
    # the overlay of --hha is drawn on the colour photo, not on the HHA image
    with (
        Image.open(tmp_path / "h2" / "img_1_overlay.png") as a,
        Image.open(tmp_path / "h" / "img_1_overlay.png") as b,
    ):
        assert not np.array_equal(np.array(a), np.array(b))
    assert text.split("classes (images): ")[1].split(" (")[0] in NYUD_CLASSES


def test_siftflow_writes_both_heads_with_their_names(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in SIZES:
        Image.fromarray(_arrays(i)[0]).save(photos / f"street_{i}.jpg", quality=95)
    out = tmp_path / "out"
    ckpt = _ckpt(tmp_path, "siftflow-fcn8s")
    code, text, err = _run(["predict", photos, "--model", ckpt, "-o", out, "--save-probs"],
                           capsys)  # fmt: skip
    assert code == 0, err
    names = {"sem": SIFTFLOW_SEMANTIC_CLASSES, "geo": SIFTFLOW_GEOMETRIC_CLASSES}
    suffixes = [f"_{h}{s}" for h in names for s in (".png", "_overlay.jpg", "_probs.npz")]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"street_{i}{s}" for i in SIZES for s in suffixes
    )
    model = _net("siftflow-fcn8s")
    for i in SIZES:
        with Image.open(photos / f"street_{i}.jpg") as im:
            want = _by_hand(model, {"image": np.array(im.convert("RGB"))})
        for head, classes in names.items():
            labels = _labels(out / f"street_{i}_{head}.png")
            assert labels.max() < len(classes)
            np.testing.assert_array_equal(labels, want[head])
            npz = np.load(out / f"street_{i}_{head}_probs.npz")
            assert npz["probs"].shape == (len(classes), *SIZES[i])
            assert list(npz["class_names"]) == list(classes)
    legend = {line.split(" classes")[0]: line.split(": ", 1)[1] for line in text.splitlines()
              if " classes (images): " in line}  # fmt: skip
    assert set(legend) == {"sem", "geo"}
    for head, line in legend.items():
        assert {c.split(" (")[0] for c in line.split(", ")} <= set(names[head])
    # --skip-existing: an input is done only when every head's files exist
    (out / "street_2_geo_overlay.jpg").unlink()
    code, text, err = _run(["predict", photos, "--model", ckpt, "-o", out, "--save-probs",
                            "--skip-existing"], capsys)  # fmt: skip
    assert code == 0, err
    assert "2 images already segmented" in text and "street_2.jpg" in text
    assert (out / "street_2_geo_overlay.jpg").exists()


def test_pascalcontext_names_its_60_classes(tmp_path, capsys):
    photo = tmp_path / "p.png"
    Image.fromarray(_arrays(1)[0]).save(photo)
    out = tmp_path / "out"
    code, text, err = _run(["predict", photo, "--model", _ckpt(tmp_path, "pascalcontext-fcn32s"),
                            "-o", out, "--save-probs"], capsys)  # fmt: skip
    assert code == 0, err
    labels = _labels(out / "p.png")
    assert labels.max() < 60
    np.testing.assert_array_equal(labels, _by_hand(_net("pascalcontext-fcn32s"),
                                                   {"image": _arrays(1)[0]})[""])  # fmt: skip
    npz = np.load(out / "p_probs.npz")
    assert list(npz["class_names"]) == list(CONTEXT_CLASSES) and len(CONTEXT_CLASSES) == 60
    present = text.split("classes (images): ")[1].split(", ")
    assert {c.split(" (")[0] for c in present} <= set(CONTEXT_CLASSES)


# ------------------------------------------------------------------------------ refused
def _refused(argv, capsys, *words: str) -> str:
    code, _, err = _run(argv, capsys)
    assert code == 1, err
    for w in words:
        assert w in err, (w, err)
    return err


def test_every_wrong_pair_is_one_error_before_any_work(tmp_path, capsys):
    data = _tree(tmp_path / "nyud")
    out = tmp_path / "out"
    color_d = ["--model", _ckpt(tmp_path, "nyud-fcn32s-color-d"), "-o", out]
    color_hha = ["--model", _ckpt(tmp_path, "nyud-fcn32s-color-hha"), "-o", out]
    images = data / "images"
    # a missing pair: the image is named
    (data / "depth" / "img_2.png").rename(tmp_path / "away.png")
    _refused(["predict", images, "--depth", data / "depth", *color_d], capsys,
             "no depth file", "img_2.png", "--depth")  # fmt: skip
    # a size mismatch: the depth file and its image are named
    Image.fromarray(np.full((20, 30), 1000, np.uint16)).save(data / "depth" / "img_2.png")
    _refused(["predict", images, "--depth", data / "depth", *color_d], capsys,
             str(data / "depth" / "img_2.png"), "30 x 20", "56 x 40")  # fmt: skip
    # an 8-bit depth file
    Image.fromarray(np.full((40, 56), 100, np.uint8)).save(data / "depth" / "img_2.png")
    _refused(["predict", images, "--depth", data / "depth", *color_d], capsys,
             str(data / "depth" / "img_2.png"), "16-bit")  # fmt: skip
    # no camera for the HHA this net needs
    _refused(["predict", images, "--depth", data / "depth", *color_hha], capsys,
             str(data / "depth"), "--camera nyud or --intrinsics")  # fmt: skip
    # a net without its second input, a colour-only net given depth, an unused camera
    _refused(["predict", images, *color_d], capsys, "nyud-fcn32s-color-d", "--depth")
    _refused(["predict", images, *color_hha], capsys, "--hha", "--depth")
    _refused(["predict", images, "--depth", data / "depth", "--model",
              _ckpt(tmp_path, "pascalcontext-fcn32s"), "-o", out], capsys,
             "RGB photo only", "--depth")  # fmt: skip
    _refused(["predict", images, "--hha", data / "hha", "--camera", "nyud", *color_hha], capsys,
             "drop the camera")  # fmt: skip
    _refused(["predict", images, "--depth", "nowhere/", *color_d], capsys, "--depth", "nowhere")
    assert not out.exists(), "an error left outputs behind"
    # two candidates for one image (and none at its own path)
    (data / "depth" / "img_1.png").unlink()
    for sub in ("a", "b"):
        (data / "depth" / sub).mkdir()
        Image.fromarray(np.full((40, 56), 1000, np.uint16)).save(data / "depth" / sub / "img_1.png")
    _refused(["predict", images / "img_1.png", "--depth", data / "depth", *color_d], capsys,
             "several depth files", "img_1.png")  # fmt: skip
    assert not out.exists()


def test_python_predict_takes_arrays_and_paths_by_the_same_rules(tmp_path):
    data = _tree(tmp_path / "nyud")
    color, depth, _ = _arrays(1)
    color_d, color_hha = _net("nyud-fcn32s-color-d"), _net("nyud-fcn32s-color-hha")
    want = _by_hand(color_d, {"color": color, "depth": depth})[""]
    np.testing.assert_array_equal(predict(color_d, color, depth=depth), want)
    np.testing.assert_array_equal(
        predict(color_d, data / "images" / "img_1.png", depth=data / "depth" / "img_1.png"), want
    )
    probs = predict_probs(color_d, color, depth=depth.astype(np.float32))
    assert probs.shape == (40, *SIZES[1])
    np.testing.assert_array_equal(probs.argmax(0), want)
    made = hha(depth / 1000.0, CAMERAS["nyud"])
    want = _by_hand(color_hha, {"color": color, "hha": made})[""]
    np.testing.assert_array_equal(predict(color_hha, color, depth=depth, intrinsics="nyud"), want)
    np.testing.assert_array_equal(
        predict(color_hha, color, depth=depth, intrinsics=CAMERAS["nyud"]), want
    )
    np.testing.assert_array_equal(predict(color_hha, color, hha=made), want)
    sift = predict(_net("siftflow-fcn8s"), color)
    assert set(sift) == {"sem", "geo"} and sift["geo"].max() < 3
    with pytest.raises(ValueError, match=r"takes a depth map .* pass depth="):
        predict(color_d, color)
    with pytest.raises(ValueError, match="uint8: an 8-bit picture of depth"):
        predict(color_d, color, depth=(depth // 256).astype(np.uint8))
    with pytest.raises(ValueError, match=r"56 x 40 but its image .* is 50 x 36"):
        predict(color_d, _arrays(3)[0], depth=depth)
    with pytest.raises(ValueError, match=r"pass intrinsics="):
        predict(color_hha, color, depth=depth)
    with pytest.raises(ValueError, match="RGB photo only"):
        predict(_net("voc-fcn32s"), color, depth=depth)
    with pytest.raises(ValueError, match="camera 'kinect' unknown"):
        predict(color_hha, color, depth=depth, intrinsics="kinect")


# ------------------------------------------------------------------------------ tiling
def _tiled_by_hand(model, x, plan, h: int, w: int) -> dict[str, np.ndarray]:
    """Each window of every input cut alike, each head's own region pasted: argmax per head."""
    out: dict[str, np.ndarray] = {}
    for r0, r1, o0, o1 in _spans(h, *plan):
        for c0, c1, p0, p1 in _spans(w, *plan):
            crop = {k: v[..., r0:r1, c0:c1] for k, v in x.items()} if isinstance(x, dict) else (
                x[..., r0:r1, c0:c1])  # fmt: skip
            with torch.no_grad():
                y = model(crop)
            for head, v in (y if isinstance(y, dict) else {"": y}).items():
                a = out.setdefault(head, np.full((h, w), -1))
                a[o0:o1, p0:p1] = v[0].argmax(0)[o0 - r0 : o1 - r0, p0 - c0 : p1 - c0].numpy()
    return out


@pytest.mark.parametrize("name", ["nyud-fcn32s-color-d", "nyud-fcn32s-color-hha", "siftflow-fcn8s"])
def test_tiles_cut_every_input_and_stitch_every_head(name):
    """Tiled = the windows computed by hand (every input cut the same way, every head pasted),
    and close to the whole image (random weights, 40 or 33 classes: ties flip near seams;
    measured 94.2-99.8 % at tile 64 on 72 x 104)."""
    model = _net(name)
    h, w = 72, 104
    rng = np.random.default_rng(5)
    color = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = rng.integers(800, 4000, (h, w)).astype(np.uint16)
    depth[:4, :6] = 0
    pre = model.preprocessing
    rgb_t = torch.from_numpy(color)[None].permute(0, 3, 1, 2)
    if name.endswith("-d"):
        kw = {"depth": depth}
        d = pre["depth"].batch(torch.from_numpy(depth)[None, None].float())
        x = torch.cat([pre["color"].batch(rgb_t), d], 1)
    elif "hha" in name:
        kw = {"depth": depth, "intrinsics": "nyud"}
        made = torch.from_numpy(hha(depth / 1000.0, CAMERAS["nyud"]))[None].permute(0, 3, 1, 2)
        x = {"color": pre["color"].batch(rgb_t), "hha": pre["hha"].batch(made)}
    else:
        kw, x = {}, pre.batch(rgb_t)
    plan = _tile_plan(64, None, h, w)
    by_hand = _tiled_by_hand(model, x, plan, h, w)
    tiled, whole = predict(model, color, tile=64, **kw), predict(model, color, tile=0, **kw)
    tiled, whole = (t if isinstance(t, dict) else {"": t} for t in (tiled, whole))
    assert set(tiled) == set(by_hand)
    for head in tiled:
        np.testing.assert_array_equal(tiled[head], by_hand[head])
        agree = (tiled[head] == whole[head]).mean()
        assert agree >= 0.9, (head, agree)  # a misplaced window: ~1 / classes


# ------------------------------------------------------------------------------ names, colours
def test_class_names_come_from_the_net_or_its_checkpoint():
    assert class_names(_net("nyud-fcn32s-color-d")) == list(NYUD_CLASSES)
    assert class_names(_net("pascalcontext-fcn32s")) == list(CONTEXT_CLASSES)
    assert class_names(_net("voc-fcn32s")) == list(VOC_CLASSES)
    sift = _net("siftflow-fcn8s")
    assert class_names(sift, "sem") == list(SIFTFLOW_SEMANTIC_CLASSES)
    assert class_names(sift, "geo") == ["sky", "horizontal", "vertical"]
    with pytest.raises(ValueError, match=r"heads \['sem', 'geo'\]"):
        class_names(sift)
    model = build_reference("nyud-fcn32s-hha", width=0.0625)
    model.class_names = [f"c{i}" for i in range(40)]  # a checkpoint's own names win
    assert class_names(model)[:2] == ["c0", "c1"]
    palette = voc_palette(256)
    assert len({tuple(c) for c in palette}) == 256  # 60 classes, 60 colours
    # NYUDv2's class 0 is a wall, not background: it is coloured in the overlay too
    image = np.full((4, 4, 3), 200, np.uint8)
    labels = np.zeros((4, 4), np.int64)
    assert (blend_overlay(image, labels) == image).all()
    assert not (blend_overlay(image, labels, background=None) == image).all()


def test_output_names_of_two_heads_never_collide():
    rels = [Path(p) for p in ("x.png", "x_sem.png", "x.jpg", "a/x.png", "x_geo_overlay.png",
                              "x_sem_probs.png")]  # fmt: skip
    for heads in (("",), ("sem", "geo")):
        stems = _output_stems(rels, heads)
        names = [p for r, s in zip(rels, stems, strict=True)
                 for p in _output_paths(r, s, True, True, heads).values()]  # fmt: skip
        assert len(names) == len(set(names)) == len(rels) * 3 * len(heads)
    want = [Path("x"), Path("x_overlay_2")]
    assert _output_stems([Path("x.png"), Path("x_overlay.png")]) == want


def test_predict_paths_python_api_and_records(tmp_path):
    data = _tree(tmp_path / "nyud")
    recs = predict_paths(_net("siftflow-fcn8s"), [data / "images" / "img_1.png"], tmp_path / "o",
                         progress=False)  # fmt: skip
    [rec] = recs
    assert rec["ok"] and set(rec["labels"]) == {"sem", "geo"}
    assert set(rec["classes"]["geo"]) <= set(SIFTFLOW_GEOMETRIC_CLASSES)
    recs = predict_paths(_net("nyud-fcn32s-color-hha"), [data / "images"], tmp_path / "o2",
                         depth=data / "depth", intrinsics="nyud", progress=False,
                         workers=1)  # fmt: skip
    assert [r["ok"] for r in recs] == [True] * 3 and all(isinstance(r["labels"], str) for r in recs)
    color, depth, _ = _arrays(3)  # read and paired in a worker process: the same result
    want = predict(_net("nyud-fcn32s-color-hha"), color, depth=depth, intrinsics="nyud")
    np.testing.assert_array_equal(_labels(tmp_path / "o2" / "img_3.png"), want)


def test_predict_does_not_import_predict_folder():
    code = ("import sys, fcnseg.predict; "
            "assert 'fcnseg.predict_folder' not in sys.modules, 'a circle'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)
