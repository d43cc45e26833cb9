"""eval --report / fcnseg report: the HTML page on digits, a SIFT Flow (two heads) and a NYUDv2
colour + HHA (two inputs) fixture, and a staged run's stages page, opened in headless Chromium:
no console error, every image loads, one table row per class, a screenshot; per-image IU
(--save-per-image) checked against the model run by hand."""

from __future__ import annotations

import csv
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_nyud import _nyud
from test_siftflow import _siftflow

from fcnseg.checkpoint import load_model
from fcnseg.cli import main
from fcnseg.data.build import open_dataset

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
TINY = ["--width", "0.0625", "--batch-size", "2", "--log-every", "1", "--steps", "1"]
DIGITS = ["--data", "digits", "--data-option", "n_train=4", "--data-option", "n_val=6",
          "--data-option", "size=48", "--data-option", "scale=1.2,1.5"]  # fmt: skip


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    """index.html of each report: digits (eval), stages (fcnseg report), siftflow, nyud."""
    tmp = tmp_path_factory.mktemp("report")
    run = tmp / "digits"
    assert main(["train", "--model", "fcn8s_vgg16", "--stages", "32s,8s", *TINY, "--layout",
                 "same", *DIGITS, "--out", str(run)]) == 0  # fmt: skip
    ckpt = run / "fcn8s_vgg16" / "last.pt"
    assert main(["eval", str(ckpt), "--report", str(tmp / "digits_report"), "--gallery", "2",
                 "--save-per-image", str(tmp / "digits.csv")]) == 0  # fmt: skip
    assert main(["report", str(run), "--gallery", "2"]) == 0
    sift = _siftflow(tmp, ["a", "b"], split_file="trainval.txt")
    (sift / "test.txt").write_text("a\nb\n")
    nyud = _nyud(tmp, ["1", "2"], split_file="train.txt")
    (nyud / "val.txt").write_text("1\n2\n")
    for name, data, split in (("siftflow-fcn8s", f"siftflow:{sift}", ["--train-split",
                               "trainval", "--val-split", "test"]),
                              ("nyud-fcn32s-color-hha", f"nyud:{nyud}", [])):  # fmt: skip
        out = tmp / name
        assert (
            main(["train", "--model", name, *TINY, "--data", data, *split, "--out", str(out)]) == 0
        )
        test = ["--split", "test"] if name.startswith("siftflow") else []
        assert main(["eval", str(out / "last.pt"), *test, "--report", str(tmp / f"{name}_report"),
                     "--save-per-image", str(tmp / f"{name}.csv")]) == 0  # fmt: skip
    return {"digits": tmp / "digits_report" / "index.html",
            "stages": run / "report" / "index.html",
            "stage 8s": run / "report" / "fcn8s_vgg16" / "index.html",
            "siftflow": tmp / "siftflow-fcn8s_report" / "index.html",
            "nyud": tmp / "nyud-fcn32s-color-hha_report" / "index.html"}  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    missing = [str(p) for p in (CHROMIUM, DRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"{' and '.join(missing)} missing: install Debian's chromium and "
                    f"chromium-driver to test the report page in a browser")  # fmt: skip
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="fcnseg-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={profile}", "--window-size=1200,1500"):  # fmt: skip
        options.add_argument(a)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _classes(page: Path) -> list[int]:
    """Each head's class count, from the report's own summary."""
    import json

    return [
        len(h["classes"]) for h in json.loads((page.parent / "report.json").read_text())["heads"]
    ]


@pytest.mark.parametrize("name", ["digits", "stages", "stage 8s", "siftflow", "nyud"])
def test_page_in_a_browser(pages, browser, tmp_path, name):
    # moved first: the folder stands alone (relative images, nothing from the network)
    moved = tmp_path / "moved"
    shutil.copytree(pages[name].parent, moved)
    html = (moved / "index.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    browser.get_log("browser")  # earlier pages' messages
    browser.get((moved / "index.html").as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    widths = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, "
        "i.naturalWidth])")  # fmt: skip
    assert widths and all(ok and w > 0 for _, ok, w in widths), widths
    if name != "stages":
        rows = browser.execute_script("return Array.from(document.querySelectorAll("
                                      "'table.per-class')).map(t => t.querySelectorAll("
                                      "'tr.class').length)")  # fmt: skip
        assert rows == _classes(pages[name])
        heads = 2 if name == "siftflow" else 1
        assert len(rows) == heads
        assert browser.execute_script("return document.querySelectorAll('table.gallery').length") \
            == 2 * heads  # fmt: skip
    else:
        assert browser.execute_script("return document.querySelectorAll('table.metrics tr')"
                                      ".length") == 3  # header + 32s + 8s  # fmt: skip
    shot = tmp_path / "screenshot.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000


def test_per_image_iu_is_the_image_scored_alone(pages):
    """--save-per-image: one row per image; an image's IU equals the net's on that image."""
    with open(pages["digits"].parent.parent / "digits.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    model, _ = load_model(pages["stages"].parent.parent / "fcn8s_vgg16" / "last.pt")
    val = open_dataset("digits", "val", {"n_train": 4, "n_val": 6, "size": 48,
                                         "scale": (1.2, 1.5)})  # fmt: skip
    for row in rows[:3]:
        image, target = val[int(row["image"])]
        with torch.inference_mode():
            pred = model.eval()(model.preprocessing.batch(image[None])).argmax(1)[0].numpy()
        t = target.numpy()
        pred, t = pred[t != 255], t[t != 255]  # unlabelled pixels are not scored
        ius = [((pred == c) & (t == c)).sum() / ((pred == c) | (t == c)).sum()
               for c in np.union1d(np.unique(pred), np.unique(t))]  # fmt: skip
        assert float(row["mean_iu"]) == pytest.approx(float(np.mean(ius)), abs=1e-5)
    ius = [float(r["mean_iu"]) for r in rows]
    assert ius == sorted(ius)  # worst first


def test_two_heads_and_two_inputs_write_each_head(pages):
    sift = pages["siftflow"].parent
    assert {p.name for p in sift.glob("per_image_*.csv")} == {"per_image_sem.csv",
                                                              "per_image_geo.csv"}  # fmt: skip
    assert (sift.parent / "siftflow-fcn8s_sem.csv").exists()
    assert len(list(sift.glob("gallery/worst_geo_*.png"))) == 2  # both test images
    assert (pages["nyud"].parent / "gallery" / "worst_00.png").exists()


def test_report_refuses_to_replace_a_page_and_renders_again(pages, tmp_path, capsys):
    page = pages["digits"]
    ckpt = pages["stages"].parent.parent / "fcn8s_vgg16" / "last.pt"
    before = page.read_text()
    assert main(["eval", str(ckpt), "--report", str(page.parent)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert page.read_text() == before
    page.unlink()
    assert main(["report", str(page.parent)]) == 0  # from report.json
    assert page.read_text() == before
    assert main(["report", str(tmp_path)]) == 1
    assert "no checkpoint" in capsys.readouterr().err
