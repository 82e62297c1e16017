"""The command line as a user runs it: real files in, PNGs and JSON out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from superres.cli import main
from superres.model import ModelMeta, save_model
from tests.helpers import random_upscaler, smooth_image

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def weights(tmp_path) -> Path:
    up = random_upscaler(2, seed=5)
    path = tmp_path / "w" / "x2.pt"
    save_model(up.model, path, ModelMeta.for_spec(up.model.spec))
    return path


def test_upscale_writes_one_png_per_input_and_reports_bad_files(tmp_path, weights, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(smooth_image(30, 40)).save(src / "a.jpg")
    Image.fromarray(smooth_image(17, 9, channels=1)).save(src / "b.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    out = tmp_path / "out"
    code = main(["upscale", str(src), "--scale", "2", "--out", str(out), "--tile", "16",
                 "--model", str(weights)])
    err = capsys.readouterr().err
    assert code == 1  # one input failed
    assert "broken.png" in err and "error:" in err
    assert "[1/3]" in err or "[2/3]" in err  # progress is shown
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert Image.open(out / "a.png").size == (80, 60)
    assert Image.open(out / "b.png").size == (18, 34) and Image.open(out / "b.png").mode == "L"


def test_upscale_tiled_matches_untiled(tmp_path, weights) -> None:
    img = tmp_path / "p.png"
    Image.fromarray(smooth_image(50, 45)).save(img)
    assert main(["upscale", str(img), "--scale", "2", "--out", str(tmp_path / "t"), "--tile", "12",
                 "--model", str(weights)]) == 0
    assert main(["upscale", str(img), "--scale", "2", "--out", str(tmp_path / "w"),
                 "--model", str(weights)]) == 0
    a = np.asarray(Image.open(tmp_path / "t" / "p.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "w" / "p.png")).astype(int)
    assert np.abs(a - b).max() <= 1


def test_upscale_refuses_weights_of_another_scale(tmp_path, weights, capsys) -> None:
    img = tmp_path / "p.png"
    Image.fromarray(smooth_image(8, 8)).save(img)
    code = main(["upscale", str(img), "--scale", "3", "--out", str(tmp_path / "o"), "--model", str(weights)])
    assert code == 2
    assert "x2 model but x3 was requested" in capsys.readouterr().err


def test_evaluate_json_shape(tmp_path, weights, capsys) -> None:
    hr = tmp_path / "hr"
    hr.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(48, 52, seed=i)).save(hr / f"img{i}.png")
    report_path = tmp_path / "r.json"
    code = main(["evaluate", str(hr), "--scale", "2", "--json", str(report_path), "--model", str(weights)])
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["scale"] == 2
    assert [r["name"] for r in report["images"]] == ["img0", "img1"]
    keys = {"psnr", "ssim", "psnr_bicubic", "ssim_bicubic"}
    assert all(keys <= set(r) for r in report["images"])
    assert set(report["mean"]) == keys
    assert report["mean"]["psnr_bicubic"] == pytest.approx(
        np.mean([r["psnr_bicubic"] for r in report["images"]]))
    assert "MEAN" in capsys.readouterr().out


def test_evaluate_keeps_going_past_a_bad_file(tmp_path, weights) -> None:
    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(smooth_image(40, 40)).save(hr / "good.png")
    (hr / "bad.jpg").write_bytes(b"")
    code = main(["evaluate", str(hr), "--scale", "2", "--json", str(tmp_path / "r.json"),
                 "--model", str(weights)])
    report = json.loads((tmp_path / "r.json").read_text())
    assert code == 1 and report["failed"] == ["bad.jpg"] and len(report["images"]) == 1


def test_module_entry_point_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "superres", "--help"], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert "upscale" in out.stdout and "evaluate" in out.stdout and "train" in out.stdout


def test_train_command_resumes_from_its_checkpoint(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(64, 64, seed=i)).save(data / f"t{i}.png")
    out = tmp_path / "m" / "x2.pt"
    args = ["train", "--data", str(data), "--val", str(data), "--scale", "2", "--out", str(out),
            "--arch", "8", "4", "1", "--batch", "4", "--patch", "8", "--val-every", "2",
            "--ckpt-every", "2", "--workdir", str(tmp_path / "ck")]
    assert main([*args, "--steps", "2"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["scale"] == 2 and meta["d"] == 8 and meta["validation"]["step"] == 2
    assert main([*args, "--steps", "4"]) == 0  # resumes at step 2, runs 2 more
    log = [json.loads(line) for line in out.with_suffix(".train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 2, 4]  # the curve starts at the starting weights


def test_train_skips_an_unreadable_image_with_its_reason(tmp_path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(64, 64, seed=i)).save(data / f"t{i}.png")
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    out = tmp_path / "x2.pt"
    args = ["train", "--data", str(data), "--val", str(data), "--scale", "2", "--out", str(out),
            "--arch", "8", "4", "1", "--batch", "4", "--patch", "8", "--steps", "2",
            "--val-every", "2", "--ckpt-every", "2", "--workdir", str(tmp_path / "ck")]
    assert main(args) == 0
    log = capsys.readouterr().out
    # once for the training data and once for validation, each with the decoder's reason
    assert log.count(f"skipped unreadable image {data / 'broken.png'}: ") == 2
    assert "skipped 1 of 3 images" in log and "data: 2 images" in log
    assert np.isfinite(json.loads(out.with_suffix(".json").read_text())["validation"]["psnr_y"])
    for p in data.glob("t*.png"):
        p.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="none of the 3 images could be read"):
        main([*args[:-2], "--workdir", str(tmp_path / "ck2")])


def test_context_patches_carry_real_pixels_around_the_part_the_loss_sees(tmp_path) -> None:
    from superres.train import PatchSampler

    rng = np.random.default_rng(0)
    lr = rng.uniform(0, 255, (30, 30))
    hr = np.kron(lr, np.ones((2, 2)))  # each LR pixel is a 2x2 HR block, whatever the rotation or flip
    plain = PatchSampler([(lr, hr)], scale=2, patch=8, seed=1)
    ctx = PatchSampler([(lr, hr)], scale=2, patch=8, seed=1, context=3)
    a, b = plain.batch(5)
    c, d = ctx.batch(5)
    assert a.shape == (5, 1, 8, 8) and b.shape == (5, 1, 16, 16)
    assert c.shape == (5, 1, 14, 14) and d.shape == (5, 1, 28, 28)
    # LR and HR stay aligned with the context: HR block (2y, 2x) is the LR pixel (y, x).
    assert np.allclose(d[:, :, ::2, ::2].numpy(), c.numpy())
    # A patch needs room for its context: too small an image is refused, not padded.
    with pytest.raises(ValueError, match="at least 32 LR pixels"):
        PatchSampler([(lr, hr)], scale=2, patch=8, seed=1, context=12)


def test_train_with_context_logs_it_and_records_it_in_the_metadata(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(64, 64, seed=i)).save(data / f"t{i}.png")
    out = tmp_path / "x2.pt"
    assert main(["train", "--data", str(data), "--val", str(data), "--scale", "2", "--out", str(out),
                 "--arch", "8", "4", "1", "--batch", "4", "--patch", "8", "--context", "4", "--steps", "2",
                 "--val-every", "2", "--ckpt-every", "2", "--workdir", str(tmp_path / "ck")]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["recipe"]["context"] == 4 and meta["recipe"]["patch"] == 8
    assert np.isfinite(meta["validation"]["psnr_y"])
