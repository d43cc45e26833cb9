"""Never lose, never lie (issue 22, items 1, 2, 5, 6, 11, 13, 14): links planted where fcnseg
writes, a name without weights, --init-from that copies nothing, --amp auto on resume, files
that may not be read, a nearly full disk, a run killed before its first checkpoint, and
predict reading its own outputs. Each case is listed in docs/errors.md."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_
from PIL import Image

import fcnseg
import fcnseg.data.io
from fcnseg.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    model_state,
    save_checkpoint,
)
from fcnseg.cli import main
from fcnseg.safety import RunLock, RunLockedError, WriteError, atomic_write, write_bytes

TRAIN = ["train", "--model", "fcn8s_vgg16", "--width", "0.0625", "--layout", "same",
         "--data", "digits", "--recipe", "modern", "--batch-size", "2", "--steps", "2",
         "--data-option", "n_train=4", "--data-option", "n_val=2", "--data-option", "size=48",
         "--data-option", "scale=1.0,1.5",
         "--eval-every", "0"]  # fmt: skip


def run(args, capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.err + out.out


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("never_lose")
    model = randomize_(fcnseg.build_model("fcn8s_vgg16", num_classes=5, width=0.0625)).eval()
    save_checkpoint(root / "tiny.pt", model_state(model))
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(photos / name)
    return root


@pytest.fixture
def home(world, tmp_path, monkeypatch):
    for p in world.iterdir():
        (shutil.copytree if p.is_dir() else shutil.copy)(p, tmp_path / p.name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(scope="module")
def digits_once():
    """MNIST parsed once for the module's training runs."""
    from fcnseg.data import digits

    real, cache = digits.load_mnist, []
    with pytest.MonkeyPatch.context() as m:
        m.setattr(digits, "load_mnist", lambda: cache[0] if cache else cache.append(real()) or
                  cache[0])  # fmt: skip
        yield


# ------------------------------------------------------------------ 1. links where fcnseg writes


def test_a_lock_planted_as_a_link_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").symlink_to(victim)
    with pytest.raises(RunLockedError, match="symbolic link"):
        RunLock(run_dir).__enter__()
    assert victim.read_text() == "precious"
    (run_dir / ".lock").unlink()
    os.link(victim, run_dir / ".lock")  # a hard link: the same file under a second name
    with pytest.raises(RunLockedError, match="hard link"):
        RunLock(run_dir).__enter__()
    assert victim.read_text() == "precious"
    (run_dir / ".lock").unlink()
    (run_dir / ".lock").symlink_to(tmp_path / "nothing")  # dangling: nothing may be created
    with pytest.raises(RunLockedError, match="symbolic link"):
        RunLock(run_dir).__enter__()
    assert not (tmp_path / "nothing").exists()


def test_train_with_a_planted_lock_link_changes_nothing(tmp_path, capsys, digits_once):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").symlink_to(victim)
    code, text = run([*TRAIN, "--out", tmp_path / "run"], capsys)
    assert code == 1 and "symbolic link" in text and "Traceback" not in text, text
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]


@pytest.mark.parametrize("writer", ["checkpoint", "bytes", "mask", "cache", "run config"])
def test_every_writer_replaces_a_planted_link_and_never_writes_its_target(tmp_path, writer):
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious")
    name = {"mask": "m.png", "cache": "amp.json", "run config": "config.json"}.get(writer, "x")
    link = tmp_path / "out" / name
    link.parent.mkdir()
    link.symlink_to(victim)
    if writer == "checkpoint":
        save_checkpoint(link, {"model": {"w": torch.zeros(3)}})
    elif writer == "bytes":
        write_bytes(link, b"new")
    elif writer == "mask":
        fcnseg.data.io.write_mask(link, np.zeros((4, 4), np.uint8))
    elif writer == "cache":
        from fcnseg.cachefile import write_entries

        write_entries(link, {"k": 1}, "about", "amp cache")
    else:
        from fcnseg.runfolder import write_json

        write_json(link, {"a": 1})
    assert victim.read_bytes() == b"precious"
    assert not link.is_symlink() and link.stat().st_size > 0


def test_the_log_is_never_appended_through_a_link(tmp_path):
    from fcnseg.runfolder import Log

    victim = tmp_path / "victim.csv"
    victim.write_text("precious")
    log = Log(tmp_path / "log.csv", 0, True)  # written (atomically) as fcnseg's own file
    (tmp_path / "log.csv").unlink()
    (tmp_path / "log.csv").symlink_to(victim)  # swapped for a link while the run goes on
    with pytest.raises(WriteError, match="symbolic link"):
        log.add(step=1, loss="1")
    assert victim.read_text() == "precious"


def test_predict_and_export_with_overwrite_replace_planted_links(home, capsys):
    victim = home / "victim.png"
    victim.write_bytes(b"precious")
    (home / "out").mkdir()
    (home / "out" / "a.png").symlink_to(victim)
    (home / "m.onnx").symlink_to(victim)
    code, text = run(["predict", "photos/a.png", "--model", "tiny.pt", "-o", "out",
                      "--overwrite"], capsys)  # fmt: skip
    assert code == 0, text
    code, text = run(["export", "tiny.pt", "-o", "m.onnx", "--overwrite", "--sizes", "32x32"],
                     capsys)  # fmt: skip
    assert code == 0, text
    assert victim.read_bytes() == b"precious"
    assert not (home / "out" / "a.png").is_symlink() and not (home / "m.onnx").is_symlink()


def test_the_download_temp_file_is_never_written_through_a_link(tmp_path, monkeypatch):
    from fcnseg.weights import download

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    tmp = tmp_path / f"w.pth.{os.getpid()}.part"
    tmp.symlink_to(victim)

    class Resp:
        status, headers = 200, {"Content-Type": "application/octet-stream"}

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self, n=-1):
            data, self.data = getattr(self, "data", b"weights"), b""
            return data

        def geturl(self):
            return "http://x"

    monkeypatch.setattr(download, "_open", lambda opener, url, done: Resp())
    download._download("http://x/w.pth", tmp, progress=False)
    assert victim.read_bytes() == b"precious"
    assert not tmp.is_symlink() and tmp.read_bytes() == b"weights"


# ------------------------------------------------------- 2. a name means its published weights


def test_a_release_name_fetches_its_weights_or_refuses_with_the_download_hint(
    home, capsys, monkeypatch
):
    asked = []

    def offline(spec, **kw):
        asked.append(spec.name)
        raise fcnseg.weights.DownloadError(f"could not download weights '{spec.name}'; Download "
                                           f"the file by hand")  # fmt: skip

    monkeypatch.setattr(fcnseg.weights, "fetch", offline)
    for name in ("voc-fcn8s", "fcn8s_vgg16"):
        code, text = run(["predict", "photos", "--model", name, "-o", "out"], capsys)
        assert code == 1 and "Download the file by hand" in text and "--untrained" in text, text
    assert asked == ["voc-fcn8s", "fcn8s_vgg16_voc"]
    for cmd in (["export", "voc-fcn8s", "-o", "x.onnx"], ["compare", "voc-fcn8s"]):
        code, text = run(cmd, capsys)
        assert code == 1 and "published weights" in text, text
    assert not (home / "out").exists() and not (home / "x.onnx").exists()


def test_a_name_with_published_weights_loads_the_fetched_file(tmp_path, monkeypatch):
    trained = randomize_(fcnseg.build_model("fcn8s_vgg16", width=0.0625))
    path = tmp_path / "w.pth"
    torch.save(trained.state_dict(), path)
    monkeypatch.setattr(fcnseg.weights, "fetch", lambda spec, **kw: path)
    real = fcnseg.models.registry.build_model  # published weights are full size; the test's
    monkeypatch.setattr("fcnseg.checkpoint.build_model",  # are width 1/16
                        lambda name, **kw: real(name, width=0.0625, **kw))  # fmt: skip
    model, _ = load_model("fcn8s_vgg16")
    assert torch.equal(model.state_dict()["score_fr.weight"],
                       trained.state_dict()["score_fr.weight"])  # fmt: skip
    assert not getattr(model, "untrained", False)


def test_an_untrained_net_only_on_request_and_then_every_output_says_so(home, capsys):
    code, text = run(["predict", "photos", "--model", "fcn32s_alexnet", "-o", "out"], capsys)
    assert code == 1 and "without published weights" in text and "--untrained" in text, text
    assert not (home / "out").exists()
    code, text = run(["predict", "photos", "--model", "fcn32s_alexnet", "-o", "out",
                      "--untrained", "--save-probs"], capsys)  # fmt: skip
    assert code == 0, text
    assert text.count("warning:") >= 2 and "untrained" in text  # one per image
    with Image.open(home / "out" / "a.png") as im:
        assert "untrained" in im.text["warning"]
    assert fcnseg.data.io.read_mask(home / "out" / "a.png").shape == (24, 32)
    with Image.open(home / "out" / "a_overlay.png") as im:
        assert "untrained" in im.text["warning"]
    with Image.open(home / "out" / "b_overlay.jpg") as im:
        assert b"untrained" in im.info["comment"]
    with np.load(home / "out" / "a_probs.npz") as z:
        assert "untrained" in str(z["warning"])
    code, text = run(["export", "fcn32s_alexnet", "-o", "x.onnx"], capsys)
    assert code == 1 and "--untrained" in text, text


# ---------------------------------------------------------------- 5. --init-from says what it did


@pytest.fixture(scope="module")
def stream_ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("streams")
    color = randomize_(fcnseg.build_model("nyud-fcn32s-color", width=0.0625))
    save_checkpoint(root / "color.pt", model_state(color))
    other = fcnseg.build_model("fcn8s_vgg16", num_classes=40, width=0.0625)
    save_checkpoint(root / "fcn8s.pt", model_state(other))
    return root


def test_init_from_a_plain_checkpoint_into_late_fusion_is_refused(stream_ckpts):
    with pytest.raises(ValueError, match=r"shares no layer .*learned.*color=PATH,hha=PATH"):
        fcnseg.build_model("nyud-fcn32s-color-hha", width=0.0625,
                           init_from=str(stream_ckpts / "color.pt"))  # fmt: skip


def test_init_from_a_mismatched_stream_names_the_layers_not_a_key_error(stream_ckpts):
    bad = {"color": str(stream_ckpts / "fcn8s.pt"), "hha": str(stream_ckpts / "color.pt")}
    with pytest.raises(ValueError, match=r"layers the net lacks.*score_pool4color"):
        fcnseg.build_model("nyud-fcn32s-color-hha", width=0.0625, init_from=bad)


def test_init_from_reports_how_many_tensors_came_from_where(stream_ckpts):
    from fcnseg.models.reference_init import initialize

    model = fcnseg.build_model("nyud-fcn32s-color-hha", width=0.0625)
    c = str(stream_ckpts / "color.pt")
    text = initialize(model, {"color": c, "hha": c})
    total = len(model.state_dict())
    assert f"init from color={c}, hha={c}: copied" in text and f"of the {total} tensors" in text
    copied = int(text.split("copied ")[1].split()[0])
    assert 0 < copied < total
    src = load_checkpoint(c)["model"]
    assert torch.equal(model.state_dict()["conv1_1hha.weight"], src["conv1_1.weight"])


def test_train_prints_what_init_from_copied(home, capsys, digits_once):
    assert run([*TRAIN, "--steps", "1", "--out", "a"], capsys)[0] == 0
    code, text = run([*TRAIN, "--steps", "1", "--out", "b", "--init-from", "a/last.pt"], capsys)
    assert code == 0 and "init from a/last.pt: copied" in text, text


# ----------------------------------------------------- 6. --amp auto keeps its choice on resume


def test_amp_auto_resume_runs_the_stored_precision(home, capsys, monkeypatch, digits_once):
    from fcnseg import amp

    calls = []
    monkeypatch.setattr(amp, "auto_amp", lambda *a, **kw: calls.append(1) or
                        amp.AmpChoice("bf16", {}, "test"))  # fmt: skip
    args = [*TRAIN, "--recipe", "cvpr", "--steps", "1", "--amp", "auto", "--out", "r"]
    assert run(args, capsys)[0] == 0
    monkeypatch.setattr(amp, "auto_amp", lambda *a, **kw: calls.append(2) or
                        amp.AmpChoice(None, {}, "test"))  # fmt: skip
    code, text = run([*args, "--steps", "2", "--resume"], capsys)  # fixed lr: a longer run
    assert code == 0 and "amp auto: bf16, as the run chose at its start" in text, text
    assert calls == [1] and load_checkpoint("r/last.pt")["amp_ran"] == "bf16"


def test_ctrl_c_during_the_amp_measurement_says_what_and_that_nothing_was_lost(
    home, capsys, monkeypatch, digits_once
):
    from fcnseg import amp

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(amp, "auto_amp", interrupted)
    code, text = run([*TRAIN, "--amp", "auto", "--out", "r"], capsys)
    assert code == 130
    assert "interrupted while measuring --amp auto" in text and "nothing was lost" in text, text
    assert "run the same command again" in text and not (home / "r" / ".lock").exists()


# --------------------------------------------------- 11. unreadable files and a nearly full disk


def _deny(monkeypatch, path: Path) -> None:
    """Reading `path` raises PermissionError, as chmod 000 does for a user other than root
    (the tests run as root in CI, where chmod alone denies nothing)."""
    os.chmod(path, 0)
    real = torch.load

    def load(f, *a, **kw):
        if Path(f).resolve() == path.resolve():
            raise PermissionError(errno.EACCES, "Permission denied", str(f))
        return real(f, *a, **kw)

    monkeypatch.setattr(torch, "load", load)


def test_a_checkpoint_that_may_not_be_read_says_permission_denied(home, capsys, monkeypatch):
    _deny(monkeypatch, home / "tiny.pt")
    with pytest.raises(CheckpointError, match="permission denied") as e:
        load_checkpoint(home / "tiny.pt")
    assert "truncated or corrupt" not in str(e.value)
    code, text = run(["predict", "photos", "--model", "tiny.pt", "-o", "out"], capsys)
    assert code == 1 and "permission denied" in text and "chmod" in text, text
    with pytest.raises(ValueError, match="permission denied"):
        fcnseg.weights.load_state(home / "tiny.pt")


def test_an_image_that_may_not_be_read_says_permission_denied(home, monkeypatch):
    real = Image.open

    def deny(fp, *a, **kw):
        if str(fp).endswith("a.png"):
            raise PermissionError(errno.EACCES, "Permission denied", str(fp))
        return real(fp, *a, **kw)

    monkeypatch.setattr(Image, "open", deny)
    with pytest.raises(fcnseg.data.io.ImageError, match="permission denied"):
        fcnseg.data.io.read_image(home / "photos" / "a.png")


def _free(monkeypatch, free: int) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=free))


def test_a_checkpoint_is_not_started_without_the_space_it_needs(tmp_path, monkeypatch):
    state = {"model": {"w": torch.zeros(1 << 20)}}  # 4 MB of tensors
    save_checkpoint(tmp_path / "last.pt", state)
    before = (tmp_path / "last.pt").read_bytes()
    _free(monkeypatch, 3 << 20)  # 3 MB free: above the old 1 MB alarm, under the need
    with pytest.raises(WriteError, match=r"needs about 4\.0 MB, the folder .* has 3\.0 MB free"):
        save_checkpoint(tmp_path / "last.pt", state)
    assert (tmp_path / "last.pt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file


def test_predict_outputs_check_their_space_first(home, capsys, monkeypatch):
    _free(monkeypatch, 1000)
    code, text = run(["predict", "photos", "--model", "tiny.pt", "-o", "out"], capsys)
    assert code == 1 and "not enough free space" in text and "free" in text, text
    assert not [p for p in (home / "out").rglob("*") if p.is_file()]


def test_atomic_write_with_a_size_checks_before_any_byte(tmp_path, monkeypatch):
    _free(monkeypatch, 10 << 20)
    atomic_write(tmp_path / "ok", lambda f: f.write(b"x"), size=1 << 20)
    wrote = []
    with pytest.raises(WriteError) as e:
        atomic_write(tmp_path / "big", wrote.append, size=20 << 20)
    assert e.value.errno == errno.ENOSPC and not wrote and str(tmp_path) in str(e.value)


# -------------------------------------------------- 13. a run killed before its first checkpoint


def _killed_before_first_checkpoint(capsys, out: str, extra=()) -> None:
    assert run([*TRAIN, *extra, "--steps", "1", "--out", out], capsys)[0] == 0
    for name in ("last.pt", "best.pt", "curves.png"):
        Path(out, name).unlink(missing_ok=True)
    header = Path(out, "log.csv").read_text().splitlines()[0]
    Path(out, "log.csv").write_text(header + "\n")  # what a run killed before step 1 leaves


def test_a_run_stopped_before_its_first_checkpoint_can_be_resumed_and_rerun(
    home, capsys, digits_once
):
    _killed_before_first_checkpoint(capsys, "r")
    code, text = run([*TRAIN, "--steps", "1", "--out", "r", "--resume"], capsys)
    assert code == 0 and "nothing to resume in r (no last.pt): starting a new run" in text, text
    assert load_checkpoint("r/last.pt")["step"] == 1
    _killed_before_first_checkpoint(capsys, "s")
    code, text = run([*TRAIN, "--steps", "1", "--out", "s"], capsys)
    assert code == 0 and "stopped before its first checkpoint" in text, text


def test_a_stopped_run_with_other_settings_needs_overwrite(home, capsys, digits_once):
    _killed_before_first_checkpoint(capsys, "r")
    saved = Path("r/config.json").read_bytes()
    code, text = run([*TRAIN, "--steps", "1", "--seed", "7", "--out", "r"], capsys)
    assert code == 1 and "seed: 0 -> 7" in text and "--overwrite" in text, text
    assert Path("r/config.json").read_bytes() == saved
    code, text = run([*TRAIN, "--steps", "1", "--seed", "7", "--out", "r", "--overwrite"], capsys)
    assert code == 0 and json.loads(Path("r/config.json").read_text())["seed"] == 7


def test_the_run_folder_rows_of_errors_md_as_written(home, capsys, digits_once):
    """docs/errors.md, data safety: each run-folder row's message, as the table gives it."""
    assert run([*TRAIN, "--out", "run"], capsys)[0] == 0
    code, text = run([*TRAIN, "--out", "run"], capsys)  # existing run without --resume
    assert code == 1 and "already holds a run (last.pt): pass --resume" in text
    code, text = run([*TRAIN, "--out", "run", "--resume"], capsys)
    assert "nothing to do: run/last.pt is already at step 2 of 2" in text
    code, text = run([*TRAIN, "--out", "run", "--resume", "--seed", "3"], capsys)
    assert code == 1 and "--resume with run/last.pt: the run was started with other settings " \
        "(seed: 0 -> 3)" in text  # fmt: skip
    code, text = run([*TRAIN, "--out", "fresh", "--resume"], capsys)
    assert "note: nothing to resume in fresh (no last.pt): starting a new run" in text
    Path("mine").mkdir()
    Path("mine/config.json").write_text("user data")
    code, text = run([*TRAIN, "--out", "mine"], capsys)
    assert code == 1 and "mine/config.json already exists" in text
    assert Path("mine/config.json").read_text() == "user data"
    Path("file.txt").write_text("x")
    code, text = run([*TRAIN, "--out", "file.txt/run"], capsys)
    assert "cannot write the run folder 'file.txt/run' (Not a directory): choose another --out" \
        in text  # fmt: skip
    with RunLock("run"):
        code, text = run([*TRAIN, "--out", "run", "--resume"], capsys)
    assert code == 1 and f"process {os.getpid()} is training in it (lock run/.lock)" in text


# ------------------------------------------------------------- 14. outputs are never inputs


def test_a_second_predict_into_a_subfolder_does_not_read_its_outputs(home, capsys):
    assert run(["predict", "photos", "--model", "tiny.pt", "-o", "photos/out"], capsys)[0] == 0
    first = snapshot(home / "photos")
    code, text = run(["predict", "photos", "--model", "tiny.pt", "-o", "photos/out",
                      "--skip-existing"], capsys)  # fmt: skip
    assert code == 0 and "2 images already segmented" in text, text
    assert not (home / "photos" / "out" / "out").exists()
    assert snapshot(home / "photos") == first
    code, text = run(["predict", "photos", "--model", "tiny.pt", "-o", "photos/out",
                      "--overwrite"], capsys)  # fmt: skip
    assert code == 0 and "2 images segmented" in text, text
    assert sorted(p.name for p in (home / "photos" / "out").iterdir()) == [
        "a.png", "a_overlay.png", "b.png", "b_overlay.jpg"]  # fmt: skip


def test_the_input_folder_as_output_folder_is_refused(home, capsys):
    before = snapshot(home)
    code, text = run(["predict", "photos", "--model", "tiny.pt", "-o", "photos"], capsys)
    assert code == 1 and "is the input folder" in text, text
    assert snapshot(home) == before


def test_a_glob_rooted_in_the_output_folder_skips_predicts_own_names(home, capsys):
    assert run(["predict", "photos/*.jpg", "--model", "tiny.pt", "-o", "photos"], capsys)[0] == 0
    assert (home / "photos" / "b_overlay.jpg").exists()
    code, text = run(["predict", "photos/*.jpg", "--model", "tiny.pt", "-o", "photos",
                      "--skip-existing"], capsys)  # fmt: skip
    assert code == 0 and "1 images already segmented" in text and "b_overlay" not in text, text
    assert not (home / "photos" / "b_overlay_overlay.jpg").exists()


@pytest.mark.parametrize("damage", ["empty", "cut"])
def test_skip_existing_redoes_an_empty_or_undecodable_output(home, capsys, damage):
    assert run(["predict", "photos", "--model", "tiny.pt", "-o", "out"], capsys)[0] == 0
    good = (home / "out" / "a_overlay.png").read_bytes()
    (home / "out" / "a_overlay.png").write_bytes(b"" if damage == "empty" else good[:40])
    code, text = run(["predict", "photos", "--model", "tiny.pt", "-o", "out",
                      "--skip-existing"], capsys)  # fmt: skip
    assert code == 0 and "1 images already segmented" in text, text
    assert (home / "out" / "a_overlay.png").read_bytes() == good


def test_a_split_file_id_that_names_a_path_is_refused(tmp_path):
    from fcnseg.data.voc import DatasetError, read_split

    for bad in ("../../etc/passwd", "sub/x", "..", "a\\b"):
        (tmp_path / "s.txt").write_text(f"2008_000008\n{bad}\n")
        with pytest.raises(DatasetError, match="never reads a path"):
            read_split(tmp_path / "s.txt")
    (tmp_path / "s.txt").write_text("2008_000008\n05005\n")
    assert read_split(tmp_path / "s.txt") == ["2008_000008", "05005"]
