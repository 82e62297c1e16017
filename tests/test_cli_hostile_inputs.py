"""The command line given hostile inputs: every failure is one clear line and a non-zero exit,
and nothing that was scored or written is lost."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from superres.cli import main
from superres.model import FSRCNN, ModelMeta, ModelSpec, save_model
from tests.helpers import random_upscaler, smooth_image


@pytest.fixture()
def weights(tmp_path) -> Path:
    up = random_upscaler(2, seed=5, d=16, s=8, m=1)
    path = tmp_path / "w" / "x2.pt"
    save_model(up.model, path, ModelMeta.for_spec(up.model.spec))
    return path


def strict_json(text: str) -> dict:
    """Parse JSON as the standard defines it: ``Infinity`` and ``NaN`` are not JSON."""
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not valid JSON")

    return json.loads(text, parse_constant=refuse)


def clean_failure(err: str) -> None:
    """stderr of a failed run: no traceback, and every line is progress or one ``error:`` line."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert any(line.startswith("error: ") for line in lines), err
    assert all(line.startswith(("error: ", "[")) for line in lines), err


# --------------------------------------------------------------------------- upscale: output names


def test_inputs_with_the_same_stem_each_get_their_own_output(tmp_path, weights, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(smooth_image(10, 12, seed=1)).save(src / "x.jpg")
    Image.fromarray(smooth_image(7, 9, seed=2)).save(src / "x.png")
    out = tmp_path / "out"
    code = main(["upscale", str(src / "x.jpg"), str(src / "x.png"), "--scale", "2", "--out", str(out),
                 "--model", str(weights)])
    assert code == 0
    assert "upscaled 2/2" in capsys.readouterr().out
    # the first keeps the plain name; a later one with the same stem keeps its source extension
    assert sorted(p.name for p in out.iterdir()) == ["x.png", "x.png.png"]
    assert Image.open(out / "x.png").size == (24, 20)
    assert Image.open(out / "x.png.png").size == (18, 14)


def test_output_names_never_collide_whatever_the_inputs(tmp_path, weights, capsys) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for folder in (a, b):
        Image.fromarray(smooth_image(6, 6)).save(folder / "x.jpg")
    Image.fromarray(smooth_image(6, 6)).save(a / "x.jpg.png")  # its plain name is a.jpg's second choice
    out = tmp_path / "out"
    code = main(["upscale", str(a), str(b), "--scale", "2", "--out", str(out), "--model", str(weights)])
    assert code == 0
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 3
    assert "upscaled 3/3" in capsys.readouterr().out
    # the same inputs name their outputs the same way every time
    again = tmp_path / "again"
    assert main(["upscale", str(a), str(b), "--scale", "2", "--out", str(again),
                 "--model", str(weights)]) == 0
    assert sorted(p.name for p in again.iterdir()) == written


def test_the_same_file_twice_is_upscaled_once(tmp_path, weights, capsys) -> None:
    img = tmp_path / "p.png"
    Image.fromarray(smooth_image(6, 8)).save(img)
    out = tmp_path / "out"
    assert main(["upscale", str(img), str(img), "--scale", "2", "--out", str(out),
                 "--model", str(weights)]) == 0
    assert "upscaled 1/1" in capsys.readouterr().out
    assert [p.name for p in out.iterdir()] == ["p.png"]


def test_an_input_inside_the_output_folder_is_not_overwritten(tmp_path, weights) -> None:
    img = tmp_path / "p.png"
    Image.fromarray(smooth_image(6, 8)).save(img)
    before = img.read_bytes()
    assert main(["upscale", str(img), "--scale", "2", "--out", str(tmp_path), "--model", str(weights)]) == 0
    assert img.read_bytes() == before
    assert Image.open(tmp_path / "p.png.png").size == (16, 12)


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_upscale_refuses_non_finite_weights_and_writes_nothing(tmp_path, bad, capsys) -> None:
    model = FSRCNN(ModelSpec(scale=2, d=16, s=8, m=1))
    with torch.no_grad():
        model.mapping[0].weight[0, 0, 1, 1] = bad
    weights = tmp_path / "nan.pt"
    save_model(model, weights, ModelMeta.for_spec(model.spec))
    img = tmp_path / "p.png"
    Image.fromarray(smooth_image(6, 8)).save(img)
    out = tmp_path / "out"
    code = main(["upscale", str(img), "--scale", "2", "--out", str(out), "--model", str(weights)])
    err = capsys.readouterr().err
    assert code == 2
    assert "mapping.0.weight" in err and "non-finite" in err
    clean_failure(err)
    assert not out.exists() or not any(out.iterdir())


# --------------------------------------------------------------------------- evaluate: per-image scoring


@pytest.mark.parametrize("side", [2, 4, 6, 8])
def test_an_image_too_small_to_score_fails_alone(tmp_path, weights, side, capsys) -> None:
    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(smooth_image(side, side)).save(hr / "a_tiny.png")
    Image.fromarray(smooth_image(40, 40)).save(hr / "b_good.png")
    report_path = tmp_path / "r.json"
    code = main(["evaluate", str(hr), "--scale", "2", "--json", str(report_path), "--model", str(weights)])
    err = capsys.readouterr().err
    assert code == 1
    assert "a_tiny.png" in err
    clean_failure(err)
    report = strict_json(report_path.read_text())
    assert report["failed"] == ["a_tiny.png"]
    assert [r["name"] for r in report["images"]] == ["b_good"]


def test_a_flat_image_is_an_exact_match_written_as_null(tmp_path, weights, capsys) -> None:
    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(np.full((40, 40, 3), 77, np.uint8)).save(hr / "flat.png")
    report_path = tmp_path / "r.json"
    assert main(["evaluate", str(hr), "--scale", "2", "--json", str(report_path),
                 "--model", str(weights)]) == 0
    report = strict_json(report_path.read_text())
    (row,) = report["images"]
    assert row["psnr_bicubic"] is None  # bicubic reproduces a flat image exactly
    assert report["identical"]["psnr_bicubic"] == 1
    assert report["mean"]["psnr_bicubic"] is None  # no finite value to average
    assert row["ssim_bicubic"] == pytest.approx(1.0)
    out = capsys.readouterr().out
    assert "MEAN" in out and "exact" in out and not re.search(r"\binf\b", out)  # shown as an exact match

    Image.fromarray(smooth_image(40, 40)).save(hr / "textured.png")
    assert main(["evaluate", str(hr), "--scale", "2", "--json", str(report_path),
                 "--model", str(weights)]) == 0
    report = strict_json(report_path.read_text())
    flat, textured = report["images"]
    assert flat["psnr_bicubic"] is None and np.isfinite(textured["psnr_bicubic"])
    assert report["identical"] == {"psnr": 0, "psnr_bicubic": 1}
    assert report["mean"]["psnr_bicubic"] == pytest.approx(textured["psnr_bicubic"])  # finite values only
    assert report["mean"]["psnr"] == pytest.approx((flat["psnr"] + textured["psnr"]) / 2)


# --------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize("extra", [["--tile", "0"], ["--tile", "-3"], ["--threads", "-1"],
                                   ["--max-pixels", "0"], ["--max-pixels", "-5"], ["--tile", "x"]])
def test_upscale_refuses_bad_numbers_before_doing_anything(tmp_path, weights, extra, capsys) -> None:
    img = tmp_path / "p.png"
    Image.fromarray(smooth_image(6, 8)).save(img)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["upscale", str(img), "--scale", "2", "--out", str(out), "--model", str(weights), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and extra[0] in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("extra", [["--tile", "0"], ["--tile", "-3"], ["--threads", "-2"]])
def test_evaluate_refuses_bad_numbers(tmp_path, weights, extra, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(tmp_path), "--scale", "2", "--model", str(weights), *extra])
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


# --------------------------------------------------------------------------- paths


def test_upscale_out_naming_an_existing_file(tmp_path, weights, capsys) -> None:
    img = tmp_path / "p.png"
    Image.fromarray(smooth_image(6, 8)).save(img)
    target = tmp_path / "taken"
    target.write_text("keep me")
    code = main(["upscale", str(img), "--scale", "2", "--out", str(target), "--model", str(weights)])
    err = capsys.readouterr().err
    assert code == 2
    assert "taken" in err and "not a folder" in err
    clean_failure(err)
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_evaluate_on_a_missing_folder_or_a_file(tmp_path, weights, kind, capsys) -> None:
    hr = tmp_path / "hr"
    if kind == "file":
        Image.fromarray(smooth_image(40, 40)).save(hr.with_suffix(".png"))
        hr = hr.with_suffix(".png")
    code = main(["evaluate", str(hr), "--scale", "2", "--model", str(weights)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(hr) in err
    clean_failure(err)


def test_evaluate_json_into_a_missing_folder_is_created(tmp_path, weights) -> None:
    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(smooth_image(40, 40)).save(hr / "a.png")
    report_path = tmp_path / "new" / "deeper" / "r.json"
    assert main(["evaluate", str(hr), "--scale", "2", "--json", str(report_path),
                 "--model", str(weights)]) == 0
    assert [r["name"] for r in strict_json(report_path.read_text())["images"]] == ["a"]


@pytest.mark.parametrize("where", ["parent_is_a_file", "is_a_folder"])
def test_evaluate_json_that_cannot_be_written_fails_before_scoring(tmp_path, weights, where, capsys) -> None:
    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(smooth_image(40, 40)).save(hr / "a.png")
    if where == "parent_is_a_file":
        (tmp_path / "blocker").write_text("")
        report_path = tmp_path / "blocker" / "r.json"
    else:
        report_path = tmp_path / "folder"
        report_path.mkdir()
    code = main(["evaluate", str(hr), "--scale", "2", "--json", str(report_path), "--model", str(weights)])
    captured = capsys.readouterr()
    assert code == 2
    assert "--json" in captured.err
    clean_failure(captured.err)
    assert "[1/1]" not in captured.err and "MEAN" not in captured.out  # nothing was scored
