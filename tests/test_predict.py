"""Inference on photos: label maps, probabilities, overlays, odd files, tiling, the CLI."""

from __future__ import annotations

import errno
import io

import numpy as np
import pytest
import torch
from conftest import randomize_
from PIL import Image

from fcnseg import build_model
from fcnseg.checkpoint import model_state, save_checkpoint
from fcnseg.cli import main
from fcnseg.predict import _regions, _spans, _tile_plan, predict, predict_probs
from fcnseg.predict_folder import predict_paths

NAMES = ["background", "sky", "tree", "road", "car"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = randomize_(build_model("fcn8s_vgg16", num_classes=5, width=0.125)).eval()
    model.class_names = NAMES
    return model


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_predict_label_map_and_probs(tiny, tmp_path):
    image = _photo(37, 53)
    labels = predict(tiny, image)
    assert labels.shape == (37, 53) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < 5
    assert len(np.unique(labels)) > 1  # random weights: not a constant map
    probs = predict_probs(tiny, image)
    assert probs.shape == (5, 37, 53) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(0), labels)
    Image.fromarray(image).save(tmp_path / "p.png")
    np.testing.assert_array_equal(predict(tiny, tmp_path / "p.png"), labels)
    np.testing.assert_array_equal(predict(tiny, Image.fromarray(image)), labels)
    # one image, one result however it is passed: float 0..255 and 0..1, CHW tensor, uint16
    np.testing.assert_array_equal(predict(tiny, image.astype(np.float32)), labels)
    np.testing.assert_array_equal(predict(tiny, image / 255.0), labels)
    np.testing.assert_array_equal(predict(tiny, torch.from_numpy(image).permute(2, 0, 1)), labels)
    np.testing.assert_array_equal(predict(tiny, image.astype(np.uint16) * 257), labels)
    with pytest.raises(ValueError, match=r"values -1\.\.255, neither 0\.\.1 nor 0\.\.255"):
        predict(tiny, image.astype(np.float32) - (image == 0))
    with pytest.raises(ValueError, match=r"shape \(37, 53, 2\)"):
        predict(tiny, image[:, :, :2])


def test_predict_paths_writes_palette_png_overlay_and_probs(tiny, tmp_path):
    Image.fromarray(_photo(41, 67)).save(tmp_path / "photo.jpg", quality=95)
    out = tmp_path / "out"
    [rec] = predict_paths(tiny, [tmp_path / "photo.jpg"], out, save_probs=True, progress=False)
    assert rec["ok"], rec
    labels = predict(tiny, tmp_path / "photo.jpg")
    with Image.open(out / "photo.png") as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.array(im), labels)
    with Image.open(out / "photo_overlay.jpg") as im:
        assert im.size == (67, 41)
    data = np.load(out / "photo_probs.npz")
    assert data["probs"].dtype == np.float16 and data["probs"].shape == (5, 41, 67)
    np.testing.assert_allclose(data["probs"].astype(np.float32).sum(0), 1, atol=5e-3)
    assert list(data["class_names"]) == NAMES
    assert set(rec["classes"]) == {NAMES[i] for i in np.unique(labels)}
    assert not list(out.glob(".*")), "temporary files left behind"


def _mixed_folder(root):
    """Every pixel mode a photo folder might hold, plus one corrupt file."""
    rgb = _photo(40, 60)
    (root / "sub").mkdir(parents=True)
    Image.fromarray(rgb[..., 0]).save(root / "gray.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(root / "rgba.png")
    Image.fromarray(rgb).quantize(16).save(root / "palette.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(root / "sixteen.png")
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(rgb[:1, :1]).save(root / "tiny.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to show
    Image.fromarray(rgb).save(root / "rotated.jpg", exif=exif)
    Image.fromarray(rgb).save(root / "sub" / "gray.png")  # same stem, another folder
    Image.fromarray(rgb).save(root / "gray.jpg")  # same stem, same folder
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    (root / "corrupt.png").write_bytes(buf.getvalue()[:200])  # truncated
    (root / "notes.txt").write_text("not an image, not picked up")


def test_mixed_folder_all_processed_and_corrupt_reported(tiny, tmp_path, capsys):
    _mixed_folder(tmp_path / "in")
    out = tmp_path / "out"
    results = predict_paths(tiny, [tmp_path / "in"], out, batch_size=3, progress=False)
    bad = [r for r in results if not r["ok"]]
    assert len(results) == 10 and len(bad) == 1
    assert "corrupt.png" in bad[0]["error"] and "corrupt.png" in capsys.readouterr().err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted(
        ["cmyk.png", "cmyk_overlay.jpg", "gray_jpg.png", "gray_jpg_overlay.jpg",
         "gray_png.png", "gray_png_overlay.png", "palette.png", "palette_overlay.png",
         "rgba.png", "rgba_overlay.png", "rotated.png", "rotated_overlay.jpg",
         "sixteen.png", "sixteen_overlay.png", "sub/gray.png", "sub/gray_overlay.png",
         "tiny.png", "tiny_overlay.png"]
    )  # fmt: skip
    sizes = {r["input"].split("/in/")[1]: r["size"] for r in results if r["ok"]}
    assert sizes["rotated.jpg"] == (60, 40)  # EXIF applied: shown upright
    assert sizes["tiny.png"] == (1, 1)
    with Image.open(out / "rotated.png") as im:
        assert im.size == (40, 60)


def test_same_stem_from_two_folders_does_not_overwrite(tiny, tmp_path):
    for d, seed in (("a", 1), ("b", 2)):
        (tmp_path / d).mkdir()
        Image.fromarray(_photo(20, 30, seed)).save(tmp_path / d / "x.png")
    results = predict_paths(tiny, [tmp_path / "a", tmp_path / "b"], tmp_path / "o", progress=False)
    assert [r["labels"] for r in results] == [str(tmp_path / "o/x_png.png"),
                                              str(tmp_path / "o/x_png_2.png")]  # fmt: skip


def test_glob_and_missing_inputs(tiny, tmp_path):
    Image.fromarray(_photo(20, 30)).save(tmp_path / "g.png")
    [rec] = predict_paths(tiny, [str(tmp_path / "*.png")], tmp_path / "o", progress=False)
    assert rec["ok"] and (tmp_path / "o" / "g.png").is_file()
    with pytest.raises(FileNotFoundError, match=r"nope\.jpg"):
        predict_paths(tiny, [tmp_path / "nope.jpg"], tmp_path / "o", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no images in .*empty"):
        predict_paths(tiny, [tmp_path / "empty"], tmp_path / "o", progress=False)


def test_output_folder_not_writable(tiny, tmp_path):
    Image.fromarray(_photo(20, 30)).save(tmp_path / "g.png")
    (tmp_path / "file.txt").write_text("a file, not a folder")
    out = tmp_path / "file.txt" / "sub"  # root ignores chmod; a file in the path stops it
    with pytest.raises(OSError, match=r"file.txt/sub' is not writable"):
        predict_paths(tiny, [tmp_path / "g.png"], out, progress=False)


def test_disk_full_keeps_earlier_outputs(tiny, tmp_path, monkeypatch):
    for k in range(3):
        Image.fromarray(_photo(20, 30, k)).save(tmp_path / f"{k}.png")
    calls = {"n": 0}
    real = np.savez_compressed

    def savez(f, **arrays):
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, **arrays)

    monkeypatch.setattr(np, "savez_compressed", savez)
    out = tmp_path / "out"
    with pytest.raises(OSError, match=r"probabilities .*1_probs\.npz \(the disk is full\)"):
        predict_paths(tiny, [tmp_path / f"{k}.png" for k in range(3)], out, save_probs=True,
                      batch_size=1, progress=False)  # fmt: skip
    assert np.load(out / "0_probs.npz")["probs"].shape == (5, 20, 30)  # intact
    assert not (out / "1_probs.npz").exists()
    assert not list(out.glob(".*")), "temporary files left behind"


def _seam_distance(h: int, w: int, plan) -> np.ndarray:
    rows = [o0 for _, _, o0, _ in _spans(h, *plan)][1:]
    cols = [o0 for _, _, o0, _ in _spans(w, *plan)][1:]
    d = np.full((h, w), np.inf)
    for s in rows:
        d = np.minimum(d, np.abs(np.arange(h) - s)[:, None])
    for s in cols:
        d = np.minimum(d, np.abs(np.arange(w) - s)[None, :])
    return d


# Measured (seed 0, randomize_ std 0.05, noise image 300 x 420, tile 256, overlap 64 -> step 192):
#   reference layout: argmax agreement 99.86 %, max |diff| / max |logit| 0.010 overall,
#                     0.00039 on pixels >= 64 px from a seam
#   same layout:      98.41 %, 0.14 overall, 0.050 >= 64 px from a seam
# Bounds below leave margin; a wrong stitch (shifted or misplaced tile) gives ~ 20 % / ~ 1.
@pytest.mark.parametrize(
    ("layout", "min_agree", "max_rel", "max_rel_interior"),
    [("reference", 0.995, 0.03, 0.003), ("same", 0.97, 0.3, 0.1)],
)
def test_tiled_matches_whole_image(layout, min_agree, max_rel, max_rel_interior):
    torch.manual_seed(0)
    model = randomize_(build_model("fcn8s_vgg16", num_classes=5, width=0.125, layout=layout))
    model.eval()
    image = _photo(300, 420)
    plan = _tile_plan(256, None, 300, 420)
    assert plan == (256, 192)
    x = model.preprocessing(image)[None]
    with torch.inference_mode():
        whole = model(x)[0]
        tiled = torch.full_like(whole, float("nan"))
        for rows, cols, logits in _regions(model, x, plan):
            tiled[:, rows, cols] = logits[0]
    assert not tiled.isnan().any(), "the tiles' regions do not cover the image"
    agree = (tiled.argmax(0) == whole.argmax(0)).double().mean().item()
    diff = ((tiled - whole).abs().amax(0) / whole.abs().max()).numpy()
    interior = diff[_seam_distance(300, 420, plan) >= 64].max()
    print(f"{layout}: agreement {agree:.2%}, max rel {diff.max():.3g}, interior {interior:.3g}")
    assert agree >= min_agree and diff.max() <= max_rel and interior <= max_rel_interior
    labels = predict(model, image, tile=256)
    np.testing.assert_array_equal(labels, tiled.argmax(0).numpy())


def test_tile_plan():
    assert _tile_plan(None, None, 500, 500) is None  # under the pixel budget
    assert _tile_plan(None, None, 2000, 2000) == (1024, 768)  # auto
    assert _tile_plan(0, None, 9000, 9000) is None
    assert _tile_plan(512, None, 400, 500) is None  # fits in one tile
    with pytest.raises(ValueError, match="too small"):
        _tile_plan(16, None, 100, 100)
    spans = _spans(1000, 256, 192)
    assert [s[0] % 32 for s in spans] == [0] * len(spans)
    owned = [i for _, _, a, b in spans for i in range(a, b)]
    assert owned == list(range(1000))


def test_cli_predict(tiny, tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "tiny.pt", {**model_state(tiny), "class_names": NAMES})
    for k in range(3):
        Image.fromarray(_photo(24, 32, k)).save(tmp_path / f"img{k}.png")
    out = tmp_path / "out"
    argv = ["predict", str(tmp_path / "img0.png"), str(tmp_path / "img*.png"),
            "--model", str(ckpt), "-o", str(out), "--save-probs", "--batch-size", "2"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "3 images" in text and "img0" in text
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        [f"img{k}{s}.png" for k in range(3) for s in ("", "_overlay")]
    )
    assert len(list(out.glob("*_probs.npz"))) == 3
    common = ["--model", str(ckpt), "-o", str(out)]
    assert main(["predict", str(tmp_path / "missing.png"), *common]) == 1
    assert "missing.png" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"garbage")
    assert main(["predict", str(tmp_path / "bad.png"), *common]) == 1
    assert "bad.png" in capsys.readouterr().err
    if not torch.cuda.is_available():
        argv = ["predict", str(tmp_path / "img0.png"), "--model", str(ckpt), "-o", str(out),
                "--device", "cuda"]  # fmt: skip
        assert main(argv) == 1
        assert "CUDA is not available" in capsys.readouterr().err


def test_cli_predict_fast_writes_the_same_probabilities(tiny, tmp_path, capsys):
    """--fast (FastFCN) is exact: the saved probabilities match the plain run's; a model it
    cannot run (GoogLeNet trunk) and a CUDA device are refused by name."""
    ckpt = save_checkpoint(tmp_path / "tiny.pt", {**model_state(tiny), "class_names": NAMES})
    for k in range(3):  # two sizes: the second 40x30 image reuses the cached background
        Image.fromarray(_photo(40, 30, k) if k else _photo(33, 47, k)).save(tmp_path / f"i{k}.png")
    probs = {}
    for flag in ([], ["--fast"]):
        out = tmp_path / f"out{len(flag)}"
        argv = ["predict", str(tmp_path / "i*.png"), "--model", str(ckpt), "-o", str(out),
                "--save-probs", "--batch-size", "1", *flag]  # fmt: skip
        assert main(argv) == 0
        probs[len(flag)] = {p.name: np.load(p)["probs"] for p in sorted(out.glob("*.npz"))}
    assert probs[0].keys() == probs[1].keys() and len(probs[0]) == 3
    for name in probs[0]:
        np.testing.assert_allclose(probs[1][name], probs[0][name], atol=2e-3)  # float16 files
    g = save_checkpoint(
        tmp_path / "g.pt", model_state(build_model("fcn32s_googlenet", num_classes=5))
    )
    argv = ["predict", str(tmp_path / "i0.png"), "--model", str(g), "-o", str(tmp_path), "--fast"]
    assert main(argv) == 1
    assert "--fast" in capsys.readouterr().err


def test_fast_is_refused_on_cuda_by_name(tiny):
    from fcnseg.cli import fast_model as _fast

    with pytest.raises(ValueError, match="--fast is a CPU path; on cuda"):
        _fast(tiny, True, "cuda")
    assert _fast(tiny, False, "cuda") is tiny
