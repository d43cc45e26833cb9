"""Hostile but ordinary use: each case is what a user really typed, and what must not happen.

Every refused case also checks that nothing on disk changed (no file written, replaced or left
behind). The real faults (a full tmpfs, signals, two processes) are in tests/test_real_faults.py;
docs/errors.md lists the classes of defect and these tests.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_
from PIL import Image

import fcnseg
from fcnseg.checkpoint import load_checkpoint, model_state, save_checkpoint
from fcnseg.cli import main
from fcnseg.data.io import read_image, to_rgb
from fcnseg.engine import TrainConfig
from fcnseg.safety import RunLock

TRAIN = ["train", "--model", "fcn8s_vgg16", "--width", "0.0625", "--layout", "same",
         "--data", "digits", "--recipe", "modern", "--batch-size", "2", "--steps", "2",
         "--data-option", "n_train=8", "--data-option", "n_val=2", "--data-option", "size=48",
         "--data-option", "scale=1.0,1.5"]  # fmt: skip


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (hidden ones too) -> sha1 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def run(args: list[str], capsys) -> tuple[int, str]:
    """main(args) -> (exit status, stderr); argparse errors exit 2."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def refused(args, capsys, root: Path, *fragments: str, code: int | None = None) -> str:
    """Run `args`, expect a clean refusal naming `fragments`, and no change under `root`."""
    before = snapshot(root)
    status, text = run(args, capsys)
    assert status == (code or status) and status != 0, text
    assert "Traceback" not in text and "internal error" not in text, text
    for f in fragments:
        assert f in text, (f, text)
    assert snapshot(root) == before, "a refused command changed files"
    return text


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny 5-class checkpoint, three photos, and a 2-step training run."""
    root = tmp_path_factory.mktemp("world")
    model = randomize_(fcnseg.build_model("fcn8s_vgg16", num_classes=5, width=0.0625)).eval()
    save_checkpoint(root / "tiny.pt", model_state(model))
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "a_overlay.png"):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(photos / name)
    with pytest.MonkeyPatch.context() as m:  # MNIST parsed once for the module
        from fcnseg.data import digits

        real, cache = digits.load_mnist, []
        m.setattr(digits, "load_mnist", lambda: cache[0] if cache else cache.append(real()) or
                  cache[0])  # fmt: skip
        assert main([*TRAIN, "--out", str(root / "run")]) == 0
        yield root


@pytest.fixture
def home(world, tmp_path, monkeypatch):
    """A private copy of the world, as the current folder."""
    shutil.copytree(world, tmp_path / "w")
    monkeypatch.chdir(tmp_path / "w")
    return tmp_path / "w"


# --------------------------------------------------------------- outputs never destroy inputs


def test_export_in_the_run_folder_keeps_the_checkpoint(home, capsys, monkeypatch):
    """The reported loss: `cd RUN && fcnseg export last.pt --format torchscript`."""
    monkeypatch.chdir(home / "run")
    before = (home / "run" / "last.pt").read_bytes()
    code, text = run(["export", "last.pt", "--format", "torchscript", "--sizes", "1x40x40"],
                     capsys)  # fmt: skip
    assert code == 0, text
    assert (home / "run" / "last.pt").read_bytes() == before
    assert load_checkpoint(home / "run" / "last.pt")["optimizer"]
    assert torch.jit.load(home / "run" / "last.torchscript.pt") is not None


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["export", "tiny.pt", "-o", "tiny.pt"], ["would overwrite the input"]),
        (
            ["export", "tiny.pt", "--format", "torchscript", "-o", "./photos/../tiny.pt"],
            ["would overwrite the input"],
        ),
        (["export", "tiny.pt", "-o", "photos"], ["is a folder"]),
        (["export", "tiny.pt", "-o", "photos/a.png"], ["already exists", "--overwrite"]),
        (["export", "tiny.pt", "-o", "link.onnx"], ["would overwrite the input"]),
        (["export", "tiny.pt", "-o", "tiny.pt", "--overwrite"], ["would overwrite the input"]),
        (
            ["predict", "photos", "--model", "tiny.pt", "-o", "photos"],
            ["is the input folder"],
        ),
        (
            ["predict", "photos", "--model", "tiny.pt", "-o", "photos", "--overwrite"],
            ["is the input folder"],
        ),
        (
            ["predict", "photos/a.png", "--model", "tiny.pt", "-o", "photos"],
            ["would overwrite the input"],
        ),
        (["predict", "photos/b.jpg", "--model", "tiny.pt", "-o", "run"], []),  # ok: b.png is new
        (["heatmap", "photos/a.png", "-o", "photos/a.png"], ["would overwrite the input"]),
        (["heatmap", "photos/a.png", "-o", "photos/b.jpg"], ["already exists"]),
        (["compare", "tiny.pt", "-o", "tiny.pt"], ["would overwrite the input"]),
        (["compare", "tiny.pt", "-o", "photos/a.png"], ["already exists"]),
        (["eval", "run/last.pt", "--save-confusion", "run"], []),  # ok: new files
        (["train", *TRAIN[1:], "--out", "run"], ["already holds a run", "--overwrite"]),
        (["train", *TRAIN[1:], "--out", "photos"], []),  # no run files there: allowed
    ],
)
def test_outputs_that_would_destroy_something_are_refused(home, capsys, args, fragments):
    (home / "link.onnx").symlink_to(home / "tiny.pt")
    if not fragments:  # the control cases: these must work (and so must not be over-refused)
        if args[0] == "train":
            (home / "photos" / "notes.txt").write_text("mine")
        code, text = run(args, capsys)
        assert code == 0, text
        if args[0] == "train":
            assert (home / "photos" / "notes.txt").read_text() == "mine"
        return
    refused(args, capsys, home, *fragments)


def test_predict_folder_with_x_and_x_overlay_keeps_every_output(home, capsys):
    code, text = run(["predict", "photos", "--model", "tiny.pt", "-o", "out"], capsys)
    assert code == 0, text
    names = sorted(p.name for p in (home / "out").iterdir())
    # a.png's overlay is a_overlay.png, so the input a_overlay.png gets a_overlay_2.*
    assert names == ["a.png", "a_overlay.png", "a_overlay_2.png", "a_overlay_2_overlay.png",
                     "b.png", "b_overlay.jpg"], names  # fmt: skip
    assert Image.open(home / "out" / "a_overlay.png").mode == "RGB"  # an overlay, not labels
    assert Image.open(home / "out" / "a_overlay_2.png").mode == "P"  # the label map


def test_predict_into_an_earlier_output_folder_needs_overwrite(home, capsys):
    assert run(["predict", "photos", "--model", "tiny.pt", "-o", "out"], capsys)[0] == 0
    refused(["predict", "photos", "--model", "tiny.pt", "-o", "out"], capsys, home,
            "already exists", "(and 5 more outputs)", "--overwrite")  # fmt: skip
    code, text = run(["predict", "photos", "--model", "tiny.pt", "-o", "out", "--overwrite"],
                     capsys)  # fmt: skip
    assert code == 0, text


def test_train_refuses_a_folder_holding_a_users_files(home, capsys):
    (home / "mine").mkdir()
    for name in ("config.json", "log.csv", "curves.png"):
        (home / "mine" / name).write_text("user data")
        refused([*TRAIN, "--out", "mine"], capsys, home, f"mine/{name}", "already exists")
        (home / "mine" / name).unlink()


def test_train_overwrite_starts_again_and_drops_the_old_best(home, capsys):
    shutil.copy(home / "run" / "last.pt", home / "run" / "best.pt")
    old = (home / "run" / "best.pt").read_bytes()
    code, text = run([*TRAIN, "--out", "run", "--overwrite", "--steps", "1",
                      "--eval-every", "0"], capsys)  # fmt: skip
    assert code == 0, text
    assert load_checkpoint(home / "run" / "last.pt")["step"] == 1
    assert (home / "run" / "best.pt").read_bytes() != old


# --------------------------------------------------------------- --resume never changes the run


@pytest.mark.parametrize(
    "change, named",
    [
        (["--train-split", "val"], "train_split: 'train' -> 'val'"),
        (["--crop", "32"], "crop: None -> 32"),
        (["--data-option", "n_train=9"], "data_options"),
        (["--steps", "5"], "steps: 2 -> 5"),
        (["--seed", "3"], "seed: 0 -> 3"),
        (["--amp", "bf16"], "amp: None -> 'bf16'"),
        (["--val-split", "train"], "val_split: 'val' -> 'train'"),
        (["--lr", "0.5"], "lr: 0.001 -> 0.5"),
        (["--batch-size", "4"], "batch_size: 2 -> 4"),
        (["--width", "0.125"], "model_options"),
    ],
)
def test_resume_with_changed_options_is_refused(home, capsys, change, named):
    args = [*TRAIN, "--out", "run", "--resume"]
    for i in range(0, len(change), 2):  # the later option wins in argparse
        args += change[i : i + 2]
    text = refused(args, capsys, home, named, "--init-from")
    if "steps" in named:
        assert "poly learning-rate schedule" in text


def test_resume_with_nothing_to_do_says_so_and_touches_nothing(home, capsys):
    before = snapshot(home)
    code, text = run([*TRAIN, "--out", "run", "--resume"], capsys)
    assert code == 0 and "nothing to do" in text and "step 2 of 2" in text, text
    assert snapshot(home) == before


def test_resume_with_more_steps_on_a_fixed_schedule_is_explained(home, capsys):
    fixed = [*TRAIN, "--recipe", "cvpr", "--lr", "1e-4"]
    assert run([*fixed, "--out", "fixed"], capsys)[0] == 0
    code, text = run([*fixed, "--out", "fixed", "--resume", "--steps", "3"], capsys)
    assert code == 0 and "fixed learning rate" in text, text
    assert load_checkpoint(home / "fixed" / "last.pt")["step"] == 3


def test_resume_without_a_checkpoint_says_it_starts_anew(home, capsys):
    code, text = run([*TRAIN, "--out", "fresh", "--resume"], capsys)
    assert code == 0 and "nothing to resume" in text, text


# ------------------------------------------------------------------------- the run-folder lock


def test_a_locked_run_folder_is_refused_naming_the_holder(home, capsys):
    with RunLock(home / "run"):
        text = refused([*TRAIN, "--out", "run", "--resume", "--steps", "3"], capsys,
                       home / "photos", "is in use", f"process {os.getpid()}")  # fmt: skip
    assert "--out" in text
    code, text = run([*TRAIN, "--out", "run", "--resume"], capsys)  # released: works
    assert code == 0, text


def test_the_lock_is_released_when_training_fails(home, capsys):
    code, text = run([*TRAIN, "--out", "bad", "--data", "voc:/nowhere"], capsys)
    assert code == 1 and "nowhere" in text, text
    with RunLock(home / "bad"):  # would raise if the failed run still held it
        pass


def test_a_stale_lock_file_of_a_dead_process_is_taken_over(home, capsys):
    (home / "run" / ".lock").write_text("999999\n")  # no such process; no flock held
    code, text = run([*TRAIN, "--out", "run", "--resume"], capsys)
    assert code == 0 and "nothing to do" in text, text


# ----------------------------------------------------- checkpoints that cannot give a result


def _edited(home: Path, **changes) -> Path:
    ckpt = load_checkpoint(home / "tiny.pt")
    for key, value in changes.items():
        if key.startswith("pre_"):
            ckpt["preprocessing"] = {**ckpt["preprocessing"], key[4:]: value}
        elif key.startswith("w_"):
            state = dict(ckpt["model"])
            t = state["score_fr.weight"].clone()
            t.view(-1)[0] = value
            state["score_fr.weight"] = t
            ckpt["model"] = state
        else:
            ckpt[key] = value
    path = home / "edited.pt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"num_classes": "5"}, "num_classes must be an integer"),
        ({"num_classes": 0}, "num_classes must be an integer in 1..65536"),
        ({"num_classes": True}, "num_classes must be an integer"),
        ({"model_options": ["width", 0.0625]}, "model_options must be a dict"),
        ({"model_options": {"width": 0.0625, "colour": 3}}, "cannot build"),
        ({"model_options": {"width": "thin"}}, "cannot build"),
        ({"model_name": 7}, "model_name must be a string"),
        ({"model_name": "fcn9s_vgg16"}, "cannot build"),
        ({"class_names": "abcde"}, "class_names must be a list"),
        ({"step": -4}, "step must be an integer >= 0"),
        ({"config": [1, 2]}, "config must be a dict"),
        ({"model": {"score_fr.weight": [1.0]}}, "state dict of tensors"),
        ({"pre_std": [1.0, 0.0, 1.0]}, "non-zero stds"),
        ({"pre_scale": float("nan")}, "finite non-zero scale"),
        ({"pre_scale": 0}, "finite non-zero scale"),
        ({"pre_channel_order": "XYZ"}, "channel_order RGB/BGR"),
        ({"pre_mean": [1.0, 2.0]}, "3 finite means"),
        ({"w_": float("nan")}, "NaN or infinite values"),
        ({"w_": float("inf")}, "score_fr.weight (1 values)"),
    ],
)
@pytest.mark.parametrize("command", ["predict", "eval", "export"])
def test_checkpoints_with_bad_fields_or_values_are_refused(home, capsys, changes, named, command):
    path = _edited(home, **changes)
    args = {
        "predict": ["predict", "photos/a.png", "--model", path, "-o", "out"],
        "eval": ["eval", path, "--data", "digits", "--data-option", "n_val=2"],
        "export": ["export", path, "-o", "edited.onnx"],
    }[command]
    refused(args, capsys, home, named, "edited.pt")


def test_a_model_with_non_finite_outputs_is_refused_not_scored(home, capsys):
    """Finite weights, but a scale that overflows: the scores are inf on the first batch."""
    for source in ("tiny.pt", "run/last.pt"):
        ckpt = load_checkpoint(home / source)
        ckpt["model"] = {**ckpt["model"], "score_fr.weight": torch.full_like(
            ckpt["model"]["score_fr.weight"], 3e38)}  # fmt: skip
        torch.save(ckpt, home / "edited.pt")
        args = (["predict", "photos/a.png", "--model", "edited.pt", "-o", "out"]
                if source == "tiny.pt" else ["eval", "edited.pt"])  # fmt: skip
        refused(args, capsys, home, "NaN or infinite scores")


# ------------------------------------------------------------------ ranges, before any work

RANGE_CASES = [
    ("train", "--steps", "0"), ("train", "--steps", "10000000000000"),
    ("train", "--batch-size", "0"), ("train", "--batch-size", "100000"),
    ("train", "--accumulate", "0"), ("train", "--lr", "0"), ("train", "--lr", "nan"),
    ("train", "--lr", "inf"), ("train", "--lr", "1e9"), ("train", "--width", "0"),
    ("train", "--width", "100"), ("train", "--num-classes", "1"),
    ("train", "--num-classes", "1000000000"), ("train", "--ckpt-every", "0"),
    ("train", "--log-every", "-1"), ("train", "--eval-every", "-1"), ("train", "--seed", "-1"),
    ("train", "--workers", "-1"), ("train", "--workers", "10000"), ("train", "--crop", "0"),
    ("train", "--crop", "1000000"), ("train", "--nproc", "0"), ("train", "--stage-steps", "0,10"),
    ("train", "--steps", "ten"), ("eval", "--batch-size", "0"), ("eval", "--factors", "0,8"),
    ("eval", "--workers", "-2"), ("predict", "--batch-size", "0"), ("predict", "--tile", "-1"),
    ("export", "--opset", "3"), ("export", "--opset", "99"), ("heatmap", "--top", "0"),
    ("compare", "--n", "0"), ("compare", "--indices", "-1"), ("bench", "--size", "0"),
    ("bench", "--size", "1000000"), ("bench", "--repeats", "0"), ("bench", "--threads", "0"),
]  # fmt: skip


@pytest.mark.parametrize("command, option, value", RANGE_CASES)
def test_out_of_range_options_name_the_value_and_range(home, capsys, command, option, value):
    first = {"train": [], "eval": ["tiny.pt"], "predict": ["photos", "--model", "tiny.pt"],
             "export": ["tiny.pt"], "heatmap": ["photos/a.png"], "compare": ["tiny.pt"],
             "bench": []}[command]  # fmt: skip
    args = [*TRAIN, "--out", "new"] if command == "train" else [command, *first]
    text = refused([*args, option, value], capsys, home, option, value, code=2)
    assert "must be in" in text or "is not" in text, text


@pytest.mark.parametrize(
    "field, value",
    [("steps", "10"), ("steps", 0), ("lr", -1.0), ("lr", float("nan")), ("batch_size", 0),
     ("workers", -1), ("num_classes", 1), ("seed", -5), ("model_options", ["width"]),
     ("crop", 10**7), ("eval_every", 1.5), ("data", "")],
)  # fmt: skip
def test_train_config_ranges_in_the_python_api(field, value):
    config = TrainConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        config.check()


# -------------------------------------------------- ordinary wrong input is not an internal error


@pytest.mark.parametrize(
    "args, named",
    [
        (["predict", "photos", "--model", "tiny.pt", "-o", "out", "--device", "tpu"], "'tpu'"),
        (["predict", "photos", "--model", "tiny.pt", "-o", "out", "--device", "cuda:7"], "cuda:7"),
        (["eval", "tiny.pt", "--data", "digits", "--device", "gpu"], "'gpu'"),
        (["compare", "tiny.pt", "--device", "cuda"], "CUDA is not available"),
        (["train", *TRAIN[1:], "--out", "new", "--device", "mps"], "mps"),
        (["export", "tiny.pt", "--sizes", "big"], "big"),
        (["export", "tiny.pt", "--sizes", "0x5"], "0x5"),
        (["train", *TRAIN[1:], "--out", "new", "--stages", "64s"], "64s"),
        (["train", *TRAIN[1:], "--out", "new", "--data", "voc:"], "voc"),
        (["train", *TRAIN[1:], "--out", "new", "--model", "fcn9s_vgg16"], "fcn9s_vgg16"),
        (["eval", "photos/a.png", "--data", "digits"], "a.png"),
        (["predict", "photos", "--model", "nothing.pt", "-o", "out"], "nothing.pt"),
        (["train", *TRAIN[1:], "--out", "tiny.pt"], "tiny.pt"),
    ],
)
def test_ordinary_mistakes_get_a_message_not_an_internal_error(home, capsys, args, named):
    refused(args, capsys, home, named)


def test_an_unknown_data_option_names_it(home, capsys):
    text = refused([*TRAIN, "--out", "new", "--data-option", "n_trian=8"], capsys, home,
                   "n_trian")  # fmt: skip
    assert "n_train" in text  # the valid ones (or the closest) are named


def test_a_class_count_that_contradicts_the_data_is_explained(home, capsys):
    """A 5-class checkpoint scored on 11-class digit scenes."""
    refused(["eval", "tiny.pt", "--data", "digits", "--data-option", "n_val=4"], capsys, home,
            "11 classes", "tiny.pt", "5 classes")  # fmt: skip


def test_an_image_over_the_pixel_limit_is_refused_with_a_fix(home, capsys, monkeypatch):
    module = sys.modules["fcnseg.predict_folder"]
    monkeypatch.setattr(module, "read_image", lambda p: read_image(p, max_pixels=100))
    text = refused(["predict", "photos/a.png", "--model", "tiny.pt", "-o", "out"], capsys,
                   home / "photos", "a.png", "over the limit")  # fmt: skip
    assert "downscale" in text


# ------------------------------------------------------ one image, one result, however passed


def _modes(rgb: np.ndarray) -> dict[str, Image.Image]:
    im = Image.fromarray(rgb)
    gray16 = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 200, np.uint8)], axis=2)
    return {"RGB": im, "L": im.convert("L"), "P": im.convert("P"), "1": im.convert("1"),
            "CMYK": im.convert("CMYK"), "RGBA": Image.fromarray(rgba), "LA": im.convert("LA"),
            "I;16": gray16, "I": gray16.convert("I"),
            "F": Image.fromarray(rgb[..., 0].astype(np.float32) / 255)}  # fmt: skip


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "1", "CMYK", "RGBA", "LA", "I;16", "I", "F"])
def test_a_pil_image_gives_what_its_file_gives(tmp_path, mode):
    rgb = np.random.default_rng(3).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    im = _modes(rgb)[mode]
    path = tmp_path / ("x.tif" if mode in ("F", "I", "CMYK") else "x.png")
    im.save(path)
    from_file = read_image(path)
    np.testing.assert_array_equal(to_rgb(im), from_file)
    np.testing.assert_array_equal(to_rgb(path), from_file)


@pytest.mark.parametrize(
    "convert",
    [lambda a: a, lambda a: a.astype(np.uint16) * 257, lambda a: a.astype(np.float32),
     lambda a: a / 255.0, lambda a: torch.from_numpy(a).permute(2, 0, 1),
     lambda a: torch.from_numpy(a).permute(2, 0, 1).float() / 255,
     lambda a: np.concatenate([a, np.full((*a.shape[:2], 1), 255, np.uint8)], axis=2)],
    ids=["uint8", "uint16", "float255", "float1", "tensor", "tensor-float1", "rgba-opaque"],
)  # fmt: skip
def test_arrays_and_tensors_give_what_the_file_gives(tmp_path, convert):
    rgb = np.random.default_rng(4).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    np.testing.assert_array_equal(to_rgb(convert(rgb)), read_image(tmp_path / "x.png"))


def test_sixteen_bit_gray_is_one_result_by_path_pil_and_array(tmp_path):
    a16 = np.random.default_rng(5).integers(0, 65536, (7, 5), dtype=np.uint16)
    Image.fromarray(a16).save(tmp_path / "g.png")
    by_path = to_rgb(tmp_path / "g.png")
    np.testing.assert_array_equal(to_rgb(Image.open(tmp_path / "g.png")), by_path)
    np.testing.assert_array_equal(to_rgb(a16), by_path)
    assert by_path.max() > 200  # rescaled, not clipped to 255 or cut to the low byte


# ------------------------------------------------------------------------------ the user's umask


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_are_created_with_the_users_umask(home, capsys, mask, mode):
    old = os.umask(mask)
    try:
        assert run(["predict", "photos/a.png", "--model", "tiny.pt", "-o", "out"], capsys)[0] == 0
        assert run(["export", "tiny.pt", "-o", "t.onnx", "--sizes", "1x40x40"], capsys)[0] == 0
        save_checkpoint(home / "c.pt", {"model_name": "x", "model_options": {},
                                        "num_classes": 2, "model": {}})  # fmt: skip
    finally:
        os.umask(old)
    for p in (home / "out" / "a.png", home / "out" / "a_overlay.png", home / "t.onnx",
              home / "c.pt"):  # fmt: skip
        assert p.stat().st_mode & 0o777 == mode, (p, oct(p.stat().st_mode))


def test_the_demo_never_writes_into_a_users_folder(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my report")
    refused(["demo", "--quick", "--out", mine], capsys, tmp_path, "did not write",
            "--overwrite")  # fmt: skip
    (tmp_path / "file").write_text("x")
    refused(["demo", "--quick", "--out", tmp_path / "file"], capsys, tmp_path, "is a file")
