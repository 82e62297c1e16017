"""Evaluate stage: per-image scoring and artifacts, the metrics report, the regression gate,
and the Spark job's audit-then-publish behaviour on tiny staged datasets."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from superres import colour, images, metrics
from superres.evaluate import KEYS, bicubic_y, mean_of, protocol_pair
from superres.model import ModelSpec
from superres.pipeline import evaluate as stage
from superres.pipeline import layout
from superres.pipeline.evaluate import (
    COMPARE_CROP,
    COMPARE_GAP,
    EVAL_SCHEMA,
    PSNR_CAP_DB,
    ModelRegressionError,
    SizeMismatchError,
    bicubic_image,
    evaluate_batches,
    evaluate_image,
    metrics_report,
    publish_chunks,
    regression_gate,
    texture_window,
    upscale_artifacts,
)
from superres.pipeline.split import IMAGE_SCHEMA, make_lr, split_image
from superres.storage import SUCCESS, LocalStorage
from tests.helpers import smooth_image

SCALE = 2
ROOT = Path(__file__).resolve().parent.parent


def png(pixels: np.ndarray) -> bytes:
    return images.encode_png(pixels)


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def noisy(pixels: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return colour.to_uint8(pixels.astype(np.float64) + rng.normal(0, sigma, pixels.shape))


def triple(h: int = 67, w: int = 53, seed: int = 0,
           channels: int = 3) -> tuple[bytes, np.ndarray, np.ndarray]:
    """(HR photo bytes, cropped HR, LR made as split makes it in evaluate mode)."""
    hr = smooth_image(h, w, seed, channels)
    lr = make_lr(hr, "evaluate", SCALE)
    return png(hr), hr[: h - h % SCALE, : w - w % SCALE], lr


# --------------------------------------------------------------------------- per-image scores


def test_identical_sr_scores_inf_and_the_report_stays_valid_json() -> None:
    hr_bytes, hr, lr = triple()
    row = evaluate_image("a", hr_bytes, png(hr), png(lr), SCALE)
    assert row["psnr"] == math.inf
    assert row["ssim"] == pytest.approx(1.0)
    report = metrics_report("2026-01-05", SCALE, [row])
    assert report["images"][0]["psnr"] == PSNR_CAP_DB
    assert report["mean"]["psnr"] == PSNR_CAP_DB
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    regression_gate(report)  # a perfect SR beats bicubic


def test_noisy_sr_scores_lower_than_clean_sr() -> None:
    hr_bytes, hr, lr = triple(seed=1)
    clean = bicubic_image(lr, SCALE)
    a = evaluate_image("x", hr_bytes, png(clean), png(lr), SCALE)
    b = evaluate_image("x", hr_bytes, png(noisy(clean, 12.0)), png(lr), SCALE)
    assert b["psnr"] < a["psnr"] - 3
    assert b["ssim"] < a["ssim"]
    # Same LR, so the baseline does not depend on the SR under test.
    assert (a["psnr_bicubic"], a["ssim_bicubic"]) == (b["psnr_bicubic"], b["ssim_bicubic"])


@pytest.mark.parametrize("channels", [3, 1])
def test_bicubic_scores_match_superres_evaluate(channels: int) -> None:
    hr_full = smooth_image(70, 58, seed=2, channels=channels)
    hr_rgb = images.decode(png(hr_full)).rgb()
    lr_rgb, hr_crop = protocol_pair(hr_rgb, SCALE)
    want_y, hr_y = bicubic_y(lr_rgb, SCALE), colour.rgb_to_y(hr_crop)
    lr = make_lr(hr_full, "evaluate", SCALE)  # split's LR, in the photo's own layout
    row = evaluate_image("g", png(hr_full), png(bicubic_image(lr, SCALE)), png(lr), SCALE)
    assert row["psnr_bicubic"] == metrics.psnr(hr_y, want_y, shave=SCALE)
    assert row["ssim_bicubic"] == metrics.ssim(hr_y, want_y, shave=SCALE)
    assert 25 < row["psnr_bicubic"] < 60


def test_grey_and_alpha_layouts_keep_their_layout_in_the_bicubic_png() -> None:
    for channels, mode in ((1, "L"), (4, "RGBA")):
        hr = smooth_image(48, 40, seed=3, channels=channels)
        if channels == 4:
            hr[..., 3] = 200
        lr = make_lr(hr, "evaluate", SCALE)
        row = evaluate_image("p", png(hr), png(bicubic_image(lr, SCALE)), png(lr), SCALE)
        bic = images.decode(row["bicubic_png"]).pixels
        assert Image.open(io.BytesIO(row["bicubic_png"])).mode == mode
        assert bic.shape[:2] == hr.shape[:2]
        assert Image.open(io.BytesIO(row["compare_png"])).mode == "RGB"
        # SR equal to bicubic scores (almost) what the luma baseline scores.
        assert row["psnr"] == pytest.approx(row["psnr_bicubic"], abs=0.1)


def test_sr_of_the_wrong_size_is_refused_naming_the_image() -> None:
    hr_bytes, hr, lr = triple()
    with pytest.raises(SizeMismatchError, match=r"image bad: the SR output is 52x64 but .* is 52x66"):
        evaluate_image("bad", hr_bytes, png(np.zeros((64, 52, 3), np.uint8)), png(lr), SCALE)
    with pytest.raises(SizeMismatchError, match="the LR input"):
        evaluate_image("bad", hr_bytes, png(hr), png(lr[:-1]), SCALE)
    with pytest.raises(SizeMismatchError, match="x2 the LR input"):
        upscale_artifacts("bad", png(hr[:-2]), png(lr), SCALE)


# --------------------------------------------------------------------------- artifacts


@pytest.mark.parametrize(("h", "w"), [(67, 53), (230, 260)])
def test_comparison_png_is_three_crops_with_gaps(h: int, w: int) -> None:
    hr_bytes, hr, lr = triple(h, w, seed=4)
    sr = bicubic_image(lr, SCALE)
    row = evaluate_image("c", hr_bytes, png(sr), png(lr), SCALE)
    ch, cw = min(COMPARE_CROP, hr.shape[0]), min(COMPARE_CROP, hr.shape[1])
    assert png_size(row["compare_png"]) == (3 * cw + 2 * COMPARE_GAP, ch)
    assert png_size(row["bicubic_png"]) == (hr.shape[1], hr.shape[0])
    cmp = images.decode(row["compare_png"]).pixels
    top, left, _, _ = texture_window(colour.rgb_to_y(hr))
    assert np.array_equal(cmp[:, :cw], hr[top:top + ch, left:left + cw])
    assert np.array_equal(cmp[:, 2 * (cw + COMPARE_GAP):], sr[top:top + ch, left:left + cw])
    assert (cmp[:, cw:cw + COMPARE_GAP] == 255).all()
    # Deterministic: the same inputs give the same bytes.
    assert evaluate_image("c", hr_bytes, png(sr), png(lr), SCALE)["compare_png"] == row["compare_png"]


def test_upscale_artifacts_compare_bicubic_with_sr() -> None:
    lr = smooth_image(100, 90, seed=5)
    sr = noisy(bicubic_image(lr, SCALE), 3.0)
    out = upscale_artifacts("u", png(sr), png(lr), SCALE)
    assert set(out) == {"image_id", "bicubic_png", "compare_png", "output_std"}
    assert out["output_std"] == stage.output_std(sr) > 10
    assert png_size(out["compare_png"]) == (2 * COMPARE_CROP + COMPARE_GAP, COMPARE_CROP)
    assert np.array_equal(images.decode(out["bicubic_png"]).pixels, bicubic_image(lr, SCALE))


def test_the_runs_pixel_limit_reaches_every_decode_and_sr_may_be_scale_squared_larger() -> None:
    """The limit is the run's (``--max-pixels``), on the photo: an SR output is scale^2 larger."""
    from superres.pipeline.reconstruct import reconstruct_image
    from superres.pipeline.split import tiles_of

    hr_bytes, hr, lr = triple(80, 60)  # HR 80x60 = 4,800 px, LR 40x30 = 1,200, SR 4,800
    sr = png(bicubic_image(lr, SCALE))
    # The photo exactly at the limit: every decode passes, though SR is 4x the limit in upscale mode.
    assert evaluate_image("e", hr_bytes, sr, png(lr), SCALE, max_pixels=4_800)["psnr"] > 20
    upscale_lr = png(hr)  # upscale mode: the photo is the LR, its output 9,600x2 px
    up_sr = png(bicubic_image(hr, SCALE))
    assert upscale_artifacts("u", up_sr, upscale_lr, SCALE, max_pixels=4_800)["image_id"] == "u"
    # One pixel under it, each stage refuses the photo with the decoder's specific reason.
    with pytest.raises(images.ImageError, match="exceeds the limit of 4799") as info:
        evaluate_image("e", hr_bytes, sr, png(lr), SCALE, max_pixels=4_799)
    assert info.value.reason == "too_many_pixels"
    with pytest.raises(images.ImageError, match=r"19200 pixels exceeds the limit of 19196"):
        upscale_artifacts("u", up_sr, upscale_lr, SCALE, max_pixels=4_799)  # 4 x 4,799 for the SR
    row = split_image("r", png(hr), mode="upscale", scale=SCALE, tile=32, halo=4, max_pixels=4_800)
    assert len(tiles_of(row, max_pixels=4_800)) == row["tiles"]
    for stage_call in (lambda: tiles_of(row, max_pixels=4_799),
                       lambda: reconstruct_image(row, [], SCALE, max_pixels=4_799)):
        with pytest.raises(images.ImageError, match="exceeds the limit of 4799"):
            stage_call()


def test_texture_window_finds_the_detailed_region() -> None:
    y = np.full((400, 400), 100.0)
    y[300:380, 250:330] = np.random.default_rng(0).uniform(0, 255, (80, 80))
    top, left, h, w = texture_window(y, 160)
    assert (h, w) == (160, 160)
    assert top <= 300 and top + h >= 380 and left <= 250 and left + w >= 330
    assert texture_window(np.zeros((50, 30)), 160) == (0, 0, 50, 30)


def test_evaluate_batches_yields_one_record_per_image() -> None:
    rows = []
    for i in range(2):
        hr_bytes, hr, lr = triple(seed=10 + i)
        rows.append({"image_id": f"i{i}", "png": png(hr), "lr_png": png(lr), "hr": hr_bytes})
    batch = pa.RecordBatch.from_pylist(rows)
    out = list(evaluate_batches(iter([batch]), mode="evaluate", scale=SCALE))
    assert [b.schema for b in out] == [EVAL_SCHEMA, EVAL_SCHEMA]
    recs = [r for b in out for r in b.to_pylist()]
    assert [r["png"] for r in recs] == [r["png"] for r in rows]  # passed through untouched
    up = next(evaluate_batches(iter([batch.drop_columns(["hr"])]), mode="upscale", scale=SCALE))
    assert up.to_pylist()[0]["psnr"] is None


# --------------------------------------------------------------------------- report and gate


def test_publish_chunks_cover_every_id_once_in_bounded_sorted_groups() -> None:
    ids = [f"i{n:02d}" for n in (5, 3, 9, 1, 7)]
    assert publish_chunks(ids, 2) == [("i01", 0), ("i03", 0), ("i05", 1), ("i07", 1), ("i09", 2)]
    assert publish_chunks(ids, 8) == [(i, 0) for i in sorted(ids)]
    assert len(publish_chunks([f"{n}" for n in range(64)])) == 64
    assert max(c for _, c in publish_chunks([f"{n:02d}" for n in range(64)])) == 64 // stage.PUBLISH_CHUNK - 1
    with pytest.raises(ValueError, match="at least 1"):
        publish_chunks(ids, 0)


def test_metrics_report_has_the_exact_shape() -> None:
    rows = [
        {"image_id": "b", "psnr": 31.0, "ssim": 0.9, "psnr_bicubic": 30.0, "ssim_bicubic": 0.88,
         "bicubic_png": b"..", "compare_png": b".."},
        {"image_id": "a", "psnr": 33.0, "ssim": 0.92, "psnr_bicubic": 31.0, "ssim_bicubic": 0.9},
    ]
    report = metrics_report("2026-01-05", 2, rows)
    assert list(report) == ["ds", "scale", "mode", "images", "mean", "mean_images", "flagged_count",
                            "flagged", "mean_all", "gate"]
    assert report["ds"] == "2026-01-05" and report["scale"] == 2 and report["mode"] == "evaluate"
    assert [r["image_id"] for r in report["images"]] == ["a", "b"]
    assert all(list(r) == ["image_id", *KEYS, "output_std", "flags"] for r in report["images"])
    assert all(r["flags"] == [] and r["output_std"] is None for r in report["images"])
    assert list(report["mean"]) == list(KEYS)
    assert report["mean"] == mean_of(report["images"]) == report["mean_all"]
    assert report["mean"]["psnr"] == pytest.approx(32.0)
    assert (report["mean_images"], report["flagged_count"], report["flagged"]) == (2, 0, [])
    assert report["gate"] == {"sr_below_bicubic_db": 3.0, "near_constant_std": 1.0}
    empty = metrics_report("2026-01-05", 2, [])
    assert (empty["mean"], empty["mean_all"], empty["mean_images"]) == (None, None, 0)


def test_regression_gate_passes_a_better_model_and_fails_a_worse_one() -> None:
    good = metrics_report("2026-01-05", 2, [
        {"image_id": "a", "psnr": 33.0, "ssim": 0.9, "psnr_bicubic": 32.0, "ssim_bicubic": 0.9}])
    regression_gate(good)
    for sr in (32.0, 29.5):  # equal is not better
        bad = metrics_report("2026-01-05", 2, [
            {"image_id": "a", "psnr": sr, "ssim": 0.9, "psnr_bicubic": 32.0, "ssim_bicubic": 0.9}])
        with pytest.raises(ModelRegressionError, match=rf"{sr:.3f} dB .* 32\.000 dB"):
            regression_gate(bad)
    perfect = {"image_id": "f", "psnr": math.inf, "ssim": 1.0, "psnr_bicubic": math.inf, "ssim_bicubic": 1.0}
    regression_gate(metrics_report("2026-01-05", 2, [perfect]))  # flat images: both perfect is no regression
    with pytest.raises(ValueError, match="no images"):
        regression_gate(metrics_report("2026-01-05", 2, []))


# --------------------------------------------------------------------------- the Spark job

OUTPUT_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("png", pa.binary()), ("width", pa.int32()), ("height", pa.int32()),
    ("bytes", pa.int64()), ("sha256", pa.string()),
])


def stage_day(storage: LocalStorage, staging: Path, ds: str, quality: str) -> dict[str, bytes]:
    """Raw photos + manifest, and staged ``images``/``outputs`` as split/reconstruct leave them.

    ``quality="good"`` makes SR halfway between bicubic and HR (beats bicubic);
    ``"bad"`` adds heavy noise to bicubic; returns the staged SR PNGs by file name.
    """
    photos = {"p1": smooth_image(44, 50, 1), "p2": smooth_image(41, 36, 2, channels=1),
              "tiny": np.zeros((1, 1, 3), np.uint8)}  # fetched, but split quarantines it
    halo = ModelSpec(scale=SCALE).halo
    manifest: dict[str, Any] = {"ds": ds, "images": [], "quarantined": []}
    image_rows, output_rows, staged = [], [], {}
    for image_id, hr in photos.items():
        key = f"{layout.raw_prefix(ds)}/{image_id}.png"
        storage.write_bytes(key, png(hr))
        manifest["images"].append({"image_id": image_id, "key": key})
        row = split_image(image_id, png(hr), mode="evaluate", scale=SCALE, tile=16, halo=halo,
                          max_pixels=10**6)
        image_rows.append(row)
        if row["status"] != "ok":
            continue
        lr = images.decode(row["lr_png"]).pixels
        bic = bicubic_image(lr, SCALE).astype(np.float64)
        crop = hr[: bic.shape[0], : bic.shape[1]]
        sr = colour.to_uint8((bic + crop) / 2) if quality == "good" else noisy(bic, 25.0)
        data = png(sr)
        staged[f"{image_id}.png"] = data
        output_rows.append({"image_id": image_id, "png": data, "width": sr.shape[1], "height": sr.shape[0],
                            "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    storage.write_json(layout.manifest_key(ds), manifest)
    for name, rows, schema in (("images", image_rows, IMAGE_SCHEMA), ("outputs", output_rows, OUTPUT_SCHEMA)):
        part = Path(layout.staging_path(str(staging), name, ds))
        part.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), part / "part-00000.parquet")
    assert [r["status"] for r in image_rows] == ["ok", "ok", "quarantined"]
    return staged


@pytest.mark.spark
def test_spark_evaluate_job_publishes_only_after_the_gate(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    spec = importlib.util.spec_from_file_location("spark_job_evaluate", ROOT / "spark_jobs" / "evaluate.py")
    assert spec and spec.loader
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)

    storage, staging = LocalStorage(tmp_path / "store"), tmp_path / "staging"

    def run(ds: str, mode: str = "evaluate") -> int:
        return job.main(["--ds", ds, "--storage-uri", str(storage.root), "--staging-uri", str(staging),
                         "--scale", str(SCALE), "--mode", mode, "--partitions", "1"])

    # 1. A model that beats bicubic: everything is published; a stale file from an earlier run goes.
    # One image per publish chunk, so the driver fetches the results in two round trips.
    monkeypatch.setattr(stage, "PUBLISH_CHUNK", 1)
    good = "2026-01-05"
    staged = stage_day(storage, staging, good, "good")
    storage.replace_partition(layout.sr_prefix(good), {"stale.png": b"old"})
    assert run(good) == 0
    assert storage.read_partition(layout.sr_prefix(good)) == staged  # byte-identical, one per ok image
    assert storage.list(layout.sr_prefix(good)) == [
        f"{layout.sr_prefix(good)}/{n}" for n in ("_SUCCESS", "p1.png", "p2.png")]
    for artifact in ("compare", "bicubic"):
        files = storage.read_partition(f"reports/ds={good}/{artifact}")
        assert sorted(files) == ["p1.png", "p2.png"]
    report = storage.read_json(layout.report_key(good, "metrics.json"))  # stored with sorted keys
    assert set(report) == {"ds", "scale", "mode", "images", "mean", "mean_images", "flagged_count",
                           "flagged", "mean_all", "gate"}
    assert report["ds"] == good and report["scale"] == SCALE
    assert [r["image_id"] for r in report["images"]] == ["p1", "p2"]
    assert all(set(r) == {"image_id", *KEYS, "output_std", "flags"} for r in report["images"])
    assert report["flagged"] == [] and report["mean_images"] == 2
    assert set(report["mean"]) == set(KEYS)
    assert report["mean"]["psnr"] > report["mean"]["psnr_bicubic"]
    summary = storage.read_json(layout.report_key(good, "stages/evaluate.json"))
    assert summary["published"] is True and summary["images"] == 2
    evaluated = Path(layout.staging_path(str(staging), "evaluated", good))
    assert sorted(p.name for p in evaluated.glob("chunk=*")) == ["chunk=0", "chunk=1"]
    # PNG bytes are compressed already: the staged results are written without a codec.
    codecs = {pq.ParquetFile(f).metadata.row_group(0).column(0).compression
              for f in evaluated.glob("chunk=*/*.parquet")}
    assert codecs == {"UNCOMPRESSED"}
    assert summary["mean"] == report["mean"] and summary["flagged"] == 0

    # 1b. Upscale mode over the same staged outputs: no scores, but each image's output_std and flags.
    assert run(good, mode="upscale") == 0
    upscaled = storage.read_json(layout.report_key(good, "metrics.json"))
    assert upscaled["mode"] == "upscale" and upscaled["mean"] is None and upscaled["mean_all"] is None
    assert [(r["image_id"], r["psnr"], r["flags"]) for r in upscaled["images"]] == [
        ("p1", None, []), ("p2", None, [])]
    assert all(r["output_std"] > 1 for r in upscaled["images"])
    assert storage.read_partition(layout.sr_prefix(good)) == staged

    # 2. A model worse than bicubic: the job fails, metrics.json explains why, nothing is published.
    bad = "2026-01-06"
    stage_day(storage, staging, bad, "bad")
    with pytest.raises(ModelRegressionError, match="not above the bicubic baseline"):
        run(bad)
    failed = storage.read_json(layout.report_key(bad, "metrics.json"))
    assert failed["mean_all"]["psnr"] < failed["mean_all"]["psnr_bicubic"]
    assert storage.list(layout.sr_prefix(bad)) == []
    assert not storage.exists(f"{layout.sr_prefix(bad)}/{SUCCESS}")
    assert storage.list(layout.report_key(bad, "compare")) == []
    assert storage.list(layout.report_key(bad, "bicubic")) == []
    assert not storage.exists(layout.report_key(bad, "stages/evaluate.json"))

