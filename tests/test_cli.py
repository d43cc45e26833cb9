"""The command line and the demo, run as a user would (in-process)."""

import numpy as np
import pytest
from PIL import Image

from fcnseg.cli import main


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "fcn8s_vgg16" in out and "vgg16_imagenet" in out


def test_unknown_option_is_rejected_with_a_suggestion(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--quik"])
    assert e.value.code == 2
    assert "did you mean --quick" in capsys.readouterr().err


def test_heatmap_missing_image_names_the_file(tmp_path):
    with pytest.raises(SystemExit, match=r"nope\.jpg"):
        main(["heatmap", str(tmp_path / "nope.jpg")])


def test_heatmap_not_an_image(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(SystemExit, match="cannot read image"):
        main(["heatmap", str(bad)])


@pytest.mark.slow
def test_heatmap_finds_the_cat(tmp_path, capsys):
    skimage_data = pytest.importorskip("skimage.data")
    photo = tmp_path / "cat.jpg"
    Image.fromarray(skimage_data.chelsea()).save(photo, quality=95)
    out = tmp_path / "heat.png"
    assert main(["heatmap", str(photo), "--class", "cat", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    top = printed.splitlines()[1]
    assert "cat" in top  # the best class anywhere in the photo is a cat class
    assert Image.open(out).size[0] > 300


@pytest.mark.slow
def test_quick_demo_writes_a_report(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    for section in ("1. The models", "2. Convolutionalization", "3. A convolutionalized", "4. FCN"):
        assert section in report
    rows = {
        r.split("|")[1].strip(): r.split("|") for r in report.splitlines() if r.startswith("| fcn")
    }
    assert float(rows["fcn8s_vgg16"][7]) > 0  # the FastFCN column, timed
    assert rows["fcn32s_googlenet"][7].strip() == "-"  # a trunk FastFCN does not run
    for line in report.splitlines():  # every linked image exists
        if line.startswith("!["):
            assert (out / line.split("(")[1].rstrip(")")).is_file(), line
    page = out / "digits" / "report" / "index.html"  # the evaluation report as HTML too
    assert page.is_file() and "digits/report/index.html" in report
    mask = Image.open(out / "cat_mask.png")
    assert mask.mode == "P"
    values = set(np.unique(np.asarray(mask)).tolist())
    assert values == {0, 8}  # background and VOC "cat", read back as class indices
    assert "Egyptian cat" in report or "tabby" in report or "tiger cat" in report


def test_bench_prints_the_paths_and_fastfcn_is_exact(capsys):
    from fcnseg.cli import main

    assert main(["bench", "--width", "0.0625", "--size", "64", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    rows = {r.split("|")[1].strip(): r.split("|") for r in out.splitlines() if r.startswith("| ")}
    assert {"eager fp32 (baseline)", "FastFCN fp32 (exact)", "FastFCN bf16"} <= rows.keys()
    assert float(rows["FastFCN fp32 (exact)"][5]) < 1e-5  # max rel. error vs eager
    assert float(rows["FastFCN fp32 (exact)"][6].strip(" %")) == 100.0
