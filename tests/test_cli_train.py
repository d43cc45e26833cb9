"""`fcnseg train | eval | compare` end to end on a tiny digit-scenes run."""

from __future__ import annotations

import pytest
from PIL import Image

from fcnseg.cli import main

TINY = ["--model", "fcn8s_vgg16", "--width", "0.0625", "--layout", "same", "--recipe", "modern",
        "--batch-size", "4", "--data-option", "n_train=16", "--data-option", "n_val=6",
        "--data-option", "size=48", "--data-option", "scale=1.0,1.5"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "stages"
    args = ["train", *TINY, "--stages", "32s,16s,8s", "--stage-steps", "2,2,2", "--out", str(out)]
    assert main(args) == 0
    return out


def test_train_in_stages_prints_the_table(run, capsys):
    for stage in ("fcn32s_vgg16", "fcn16s_vgg16", "fcn8s_vgg16"):
        assert (run / stage / "last.pt").is_file() and (run / stage / "log.csv").is_file()
    assert main(["train", *TINY, "--stages", "32s,16s,8s", "--stage-steps", "2,2,2",
                 "--out", str(run)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "| FCN-8s |" not in out or "mean IU" in out
    assert "fcn8s_vgg16:" in out


def test_eval_prints_the_four_metrics_per_class_and_the_upper_bound(run, capsys, tmp_path):
    ckpt = run / "fcn8s_vgg16" / "last.pt"
    assert main(["eval", str(ckpt), "--upper-bound", "--save-confusion", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| model | pixel acc. | mean acc. | mean IU | f.w. IU |" in out
    assert "background" in out and "| stride 32 |" in out and "| stride 8 |" in out
    assert Image.open(tmp_path / "confusion.png").size[0] > 100
    assert (tmp_path / "confusion.csv").read_text().count("\n") >= 11


def test_compare_draws_one_row_per_item(run, tmp_path):
    ckpts = [str(run / s / "last.pt") for s in ("fcn32s_vgg16", "fcn16s_vgg16", "fcn8s_vgg16")]
    out = tmp_path / "compare.png"
    assert main(["compare", *ckpts, "--n", "3", "-o", str(out)]) == 0
    w, h = Image.open(out).size
    assert w > h > 0  # 5 columns, 3 rows
    assert main(["compare", *ckpts, "--indices", "99", "-o", str(out)]) == 1


@pytest.mark.parametrize("bad", [["--lr", "-1"], ["--batch-size", "0"], ["--steps", "x"]])
def test_out_of_range_options_are_rejected_by_name(bad, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", *bad])
    assert e.value.code == 2
    assert bad[0] in capsys.readouterr().err


def test_unknown_data_and_missing_checkpoint_are_clear_errors(tmp_path, capsys):
    assert main(["train", "--data", "nope", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "'nope' unknown" in err and "digits" in err and "voc:ROOT" in err
    assert main(["eval", str(tmp_path / "missing.pt")]) == 1
    assert "missing.pt" in capsys.readouterr().err
