"""Inputs that used to pass every gate and come out wrong: 16-bit files holding 8-bit values
(decoded black), outputs far below their own bicubic or near-constant (now flagged per image,
not averaged in), and thin strips whose halo work the pixel limit alone does not bound."""

from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from superres import images
from superres.config import Settings
from superres.fetch import Listed, Reply, check_body
from superres.pipeline import evaluate as stage
from superres.pipeline.evaluate import (
    EVAL_SCHEMA,
    NEAR_CONSTANT_OUTPUT,
    SR_BELOW_BICUBIC,
    ModelRegressionError,
    bicubic_image,
    evaluate_batches,
    evaluate_image,
    image_flags,
    metrics_report,
    regression_gate,
    upscale_artifacts,
)
from superres.pipeline.split import make_lr
from superres.tiling import Geometry, balanced_tile
from tests.helpers import random_upscaler, smooth_image

DS = "2026-01-05"
SCALE = 2


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16(samples: np.ndarray, sbit: bytes | None = None) -> bytes:
    """A 16-bit PNG written by hand (Pillow writes only 16-bit grey): HxW grey, HxWx2 grey+alpha,
    HxWx3 RGB or HxWx4 RGBA, with an sBIT chunk when given."""
    arr = samples if samples.ndim == 3 else samples[..., None]
    h, w, c = arr.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    chunks = [_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))]
    if sbit is not None:
        chunks.append(_chunk(b"sBIT", sbit))
    chunks += [_chunk(b"IDAT", zlib.compress(raw)), _chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


# A photo-like picture whose values use the whole 8-bit range 0..255.
PHOTO8 = smooth_image(40, 48, seed=11)
GREY8 = smooth_image(40, 48, seed=12, channels=1)


def _headers(content_type: str = "image/png"):
    from requests.structures import CaseInsensitiveDict

    return CaseInsensitiveDict({"Content-Type": content_type})


def _check(data: bytes, settings: Settings | None = None) -> images.Decoded:
    reply = Reply(200, _headers(), data, "http://127.0.0.1/id/1/48/40")
    return check_body(Listed("1", "a", 1, 1, ""), reply, settings or Settings(mode="upscale"))


# --------------------------------------------------------------------------- 16-bit inputs


@pytest.mark.parametrize("layout", ["grey", "grey_alpha", "rgb", "rgba"])
def test_a_16bit_png_holding_8bit_values_is_refused_not_decoded_black(layout: str) -> None:
    """8-bit values written into a 16-bit PNG without scaling are black on the 16-bit scale."""
    colour = GREY8 if layout.startswith("grey") else PHOTO8
    samples = colour.astype(np.uint16)  # 0..255 in a 0..65535 container
    if layout in ("grey_alpha", "rgba"):
        samples = np.dstack([samples, np.full(samples.shape[:2], 65535, np.uint16)])
    data = png16(samples)
    with pytest.raises(images.ImageError) as err:
        images.decode(data)
    assert err.value.reason == "black_16bit"
    assert str(err.value) == ("16-bit image decodes to black: no sample reaches 1/128 of white on the 16-bit "
                              "scale (8-bit values 0..255 stored without scaling?); save it as 8-bit or "
                              "scale its samples to 0..65535")
    with pytest.raises(images.ImageError) as fetched:  # quarantined by the fetch, with the same reason
        _check(data)
    assert fetched.value.reason == "black_16bit"
    # The same picture scaled to the 16-bit range, as the PNG specification has encoders do it.
    scaled = colour.astype(np.uint16) * 257
    if layout in ("grey_alpha", "rgba"):
        scaled = np.dstack([scaled, np.full(colour.shape[:2], 65535, np.uint16)])
    dec = images.decode(png16(scaled))
    if layout == "grey_alpha":  # Pillow reads 16-bit grey+alpha as RGBA
        colour = np.repeat(colour[..., None], 3, axis=2)
    opaque = np.full(colour.shape[:2], 255, np.uint8)
    assert np.array_equal(dec.pixels, np.dstack([colour, opaque]) if layout in ("grey_alpha", "rgba")
                          else colour)


def test_16bit_samples_are_read_on_the_16bit_scale_without_guessing() -> None:
    """A dark but real 16-bit image is neither refused nor brightened: round(v / 257)."""
    dark = (GREY8.astype(np.uint32) * 10).astype(np.uint16)  # up to 2550 of 65535: 8-bit 0..10
    dec = images.decode(encode(Image.fromarray(dark), "PNG"))
    assert dec.source_mode == "I;16"
    assert np.array_equal(dec.pixels, np.rint(dark / 257.0).astype(np.uint8))
    assert 5 <= int(dec.pixels.max()) <= 10


@pytest.mark.parametrize("fmt", ["PPM", "TIFF"])
def test_other_deep_grey_formats_follow_the_same_rule(fmt: str) -> None:
    """Mode ``I`` (a 16-bit PGM, a 32-bit TIFF) is on the 16-bit scale too: 0..255 is black there,
    where it used to be read as 8-bit, unlike the same values in a 16-bit PNG."""
    def body(values: np.ndarray) -> bytes:
        if fmt == "PPM":
            h, w = values.shape
            return f"P5\n{w} {h}\n65535\n".encode() + values.astype(">u2").tobytes()
        return encode(Image.fromarray(values.astype(np.int32)), "TIFF")

    assert Image.open(io.BytesIO(body(GREY8.astype(np.uint16)))).mode == "I"
    with pytest.raises(images.ImageError) as err:
        images.decode(body(GREY8.astype(np.uint16)))
    assert err.value.reason == "black_16bit"
    scaled = GREY8.astype(np.uint32) * 257
    assert np.array_equal(images.decode(body(scaled)).pixels, GREY8)


def test_sbit_does_not_change_the_16bit_scale() -> None:
    """sBIT says how many top bits are significant; samples are still scaled to 0..65535."""
    sbit8 = bytes([8])
    scaled = (GREY8.astype(np.uint32) * 257).astype(np.uint16)
    assert np.array_equal(images.decode(png16(scaled, sbit=sbit8)).pixels, GREY8)
    shifted = (GREY8.astype(np.uint16) << 8)  # 8 significant bits, low byte zero-filled
    assert np.abs(images.decode(png16(shifted, sbit=sbit8)).pixels.astype(int) - GREY8).max() <= 1
    with pytest.raises(images.ImageError) as err:  # unscaled 0..255 contradicts the spec, sBIT or not
        images.decode(png16(GREY8.astype(np.uint16), sbit=sbit8))
    assert err.value.reason == "black_16bit"


def test_8bit_black_is_still_an_image() -> None:
    """Only deep files are refused for being black; an 8-bit black photo is decoded (and its output
    is flagged by the per-image gate instead)."""
    assert images.decode(images.encode_png(np.zeros((20, 24, 3), np.uint8))).pixels.max() == 0


# --------------------------------------------------------------------------- the per-image gate


@pytest.mark.parametrize(("psnr", "bicubic", "std", "flags"), [
    (33.0, 31.0, 40.0, []),
    (30.5, 33.0, 40.0, []),  # below bicubic, but within the 3 dB margin
    (29.9, 33.0, 40.0, [SR_BELOW_BICUBIC]),
    (45.0, 55.0, 0.4, [SR_BELOW_BICUBIC, NEAR_CONSTANT_OUTPUT]),  # a black output of a dark photo
    (60.0, math.inf, 0.0, [SR_BELOW_BICUBIC, NEAR_CONSTANT_OUTPUT]),  # flat: bicubic exact (capped)
    (math.inf, math.inf, 0.0, [NEAR_CONSTANT_OUTPUT]),
    (None, None, 0.9, [NEAR_CONSTANT_OUTPUT]),  # upscale mode: no ground truth, the std still counts
    (None, None, 1.0, []),
])
def test_image_flags(psnr: float | None, bicubic: float | None, std: float, flags: list[str]) -> None:
    assert image_flags(psnr, bicubic, std) == flags


def test_image_flags_thresholds_are_the_settings() -> None:
    assert image_flags(30.0, 33.0, 5.0, sr_below_bicubic_db=2.0, near_constant_std=1.0) == [SR_BELOW_BICUBIC]
    assert image_flags(30.0, 33.0, 5.0, sr_below_bicubic_db=3.5, near_constant_std=6.0) == \
        [NEAR_CONSTANT_OUTPUT]


def _row(image_id: str, psnr: float, bicubic: float, std: float = 40.0) -> dict:
    return {"image_id": image_id, "psnr": psnr, "ssim": 0.9, "psnr_bicubic": bicubic, "ssim_bicubic": 0.88,
            "output_std": std}


def test_flagged_images_are_listed_and_left_out_of_the_mean() -> None:
    rows = [_row("a", 33.0, 31.0), _row("b", 35.0, 34.0), _row("black", 44.0, 54.0, std=0.3)]
    report = metrics_report(DS, SCALE, rows)
    assert [r["flags"] for r in report["images"]] == [[], [], [SR_BELOW_BICUBIC, NEAR_CONSTANT_OUTPUT]]
    assert report["flagged"] == [{"image_id": "black", "flags": [SR_BELOW_BICUBIC, NEAR_CONSTANT_OUTPUT]}]
    assert (report["mean_images"], report["flagged_count"]) == (2, 1)
    assert report["mean"]["psnr"] == pytest.approx(34.0)
    assert report["mean"]["psnr_bicubic"] == pytest.approx(32.5)
    assert report["mean_all"]["psnr"] == pytest.approx(112 / 3)
    assert report["mean_all"]["psnr_bicubic"] == pytest.approx(119 / 3)
    custom = metrics_report(DS, SCALE, rows, sr_below_bicubic_db=20.0, near_constant_std=0.1)
    assert custom["flagged"] == []
    assert custom["gate"] == {"sr_below_bicubic_db": 20.0, "near_constant_std": 0.1}


def test_the_regression_gate_judges_every_image_flagged_or_not() -> None:
    """Leaving a lost image out must not flatter the model: the gate uses ``mean_all``."""
    report = metrics_report(DS, SCALE, [_row("a", 33.0, 32.0), _row("b", 20.0, 30.0)])
    assert report["mean"]["psnr"] > report["mean"]["psnr_bicubic"]  # over the unflagged image only
    with pytest.raises(ModelRegressionError, match=r"26\.500 dB .* 31\.000 dB over 2 image"):
        regression_gate(report)
    everything = metrics_report(DS, SCALE, [_row("a", 20.0, 30.0), _row("b", 21.0, 30.0)])
    assert everything["mean"] is None and everything["flagged_count"] == 2
    with pytest.raises(ModelRegressionError):
        regression_gate(everything)
    regression_gate(metrics_report(DS, SCALE, [_row("a", 33.0, 32.0), _row("flat", 60.0, 54.0, std=0.2)]))


def test_a_black_output_is_flagged_through_the_stage_functions() -> None:
    """The executor's per-image function measures the output; the driver's report flags it."""
    hr = smooth_image(48, 40, seed=4)
    lr = make_lr(hr, "evaluate", SCALE)
    good_sr = bicubic_image(lr, SCALE)
    black_sr = np.zeros_like(good_sr)
    rows = [{"image_id": i, "png": images.encode_png(sr), "lr_png": images.encode_png(lr),
             "hr": images.encode_png(hr)} for i, sr in (("good", good_sr), ("black", black_sr))]
    batches = list(evaluate_batches(iter([pa.RecordBatch.from_pylist(rows)]), mode="evaluate", scale=SCALE))
    assert all(b.schema == EVAL_SCHEMA for b in batches)
    scored = [r for b in batches for r in b.to_pylist()]
    assert scored[1]["output_std"] == 0.0 and scored[0]["output_std"] > 10
    assert scored[1]["psnr"] < scored[1]["psnr_bicubic"] - 3
    report = metrics_report(DS, SCALE, scored)
    assert report["flagged"] == [{"image_id": "black", "flags": [SR_BELOW_BICUBIC, NEAR_CONSTANT_OUTPUT]}]
    assert report["mean"]["psnr"] == pytest.approx(scored[0]["psnr"])
    assert report["mean_images"] == 1
    one = evaluate_image("good", rows[0]["hr"], rows[0]["png"], rows[0]["lr_png"], SCALE)
    assert one["output_std"] == stage.output_std(good_sr)


def test_upscale_mode_flags_a_near_constant_output() -> None:
    """No ground truth, so no scores and no sr_below_bicubic; the near-constant check still applies."""
    lr = smooth_image(30, 36, seed=6)
    flat = np.full((60, 72, 3), 17, np.uint8)
    out = upscale_artifacts("flat", images.encode_png(flat), images.encode_png(lr), SCALE)
    good = upscale_artifacts("ok", images.encode_png(bicubic_image(lr, SCALE)), images.encode_png(lr), SCALE)
    rows = [{"image_id": "flat", **dict.fromkeys(stage.KEYS), "output_std": out["output_std"]},
            {"image_id": "ok", **dict.fromkeys(stage.KEYS), "output_std": good["output_std"]}]
    report = metrics_report(DS, SCALE, rows, mode="upscale")
    assert report["mode"] == "upscale" and report["mean"] is None and report["mean_all"] is None
    assert report["flagged"] == [{"image_id": "flat", "flags": [NEAR_CONSTANT_OUTPUT]}]
    assert report["images"][1]["flags"] == [] and report["images"][1]["psnr"] is None


def test_output_std_ignores_alpha_and_takes_the_most_varied_channel() -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 3] = np.arange(100).reshape(10, 10)  # only alpha varies
    assert stage.output_std(rgba) == 0.0
    rgba[::2, :, 2] = 200  # stripes in blue only
    assert stage.output_std(rgba) == pytest.approx(100.0)
    assert stage.output_std(np.full((5, 5), 9, np.uint8)) == 0.0


# --------------------------------------------------------------------------- settings


def test_the_new_limits_are_typed_settings_with_env_overrides() -> None:
    s = Settings()
    assert (s.max_aspect_ratio, s.sr_below_bicubic_db, s.near_constant_std) == (100.0, 3.0, 1.0)
    assert s.max_aspect_ratio == images.DEFAULT_MAX_ASPECT_RATIO
    env = Settings.from_env({"SUPERRES_MAX_ASPECT_RATIO": "250", "SUPERRES_SR_BELOW_BICUBIC_DB": "1.5",
                             "SUPERRES_NEAR_CONSTANT_STD": "0.25"})
    assert (env.max_aspect_ratio, env.sr_below_bicubic_db, env.near_constant_std) == (250.0, 1.5, 0.25)
    for bad in ({"max_aspect_ratio": 0.5}, {"max_aspect_ratio": float("nan")},
                {"sr_below_bicubic_db": -1.0}, {"near_constant_std": float("inf")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Settings(**bad)


def test_spark_jobs_take_the_gate_thresholds_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from superres.pipeline.spark import job_parser

    monkeypatch.setenv("SUPERRES_SR_BELOW_BICUBIC_DB", "4.5")
    monkeypatch.setenv("SUPERRES_NEAR_CONSTANT_STD", "2")
    args = job_parser("test").parse_args(["--ds", DS])
    assert (args.sr_below_bicubic_db, args.near_constant_std) == (4.5, 2.0)
    args = job_parser("test").parse_args(["--ds", DS, "--sr-below-bicubic-db", "1"])
    assert args.sr_below_bicubic_db == 1.0


# --------------------------------------------------------------------------- thin strips


def test_a_thin_strip_is_refused_from_the_header() -> None:
    strip = images.encode_png(np.zeros((1, 20_000), np.uint8))  # 20000x1: fully decodable, 100 bytes
    with pytest.raises(images.ImageError) as err:
        images.decode(strip)
    assert err.value.reason == "extreme_aspect_ratio"
    assert str(err.value) == ("20000x1 has an aspect ratio of 20000:1, beyond the limit of 100:1 (a strip "
                              "this thin costs many times a photo's work per pixel)")
    huge = images.encode_png(np.zeros((1, 2_000_000), np.uint8))  # the 321-byte kind of file
    with pytest.raises(images.ImageError, match="2000000x1 has an aspect ratio of 2000000:1") as err:
        images.decode(huge)
    assert err.value.reason == "extreme_aspect_ratio"
    for shape in ((1, 100), (100, 1), (3, 300)):  # 100:1 exactly is allowed, either way round
        assert images.decode(images.encode_png(np.zeros(shape, np.uint8))).pixels.shape == shape
    for shape, ratio in (((1, 101), "101"), ((101, 1), "101"), ((3, 301), "100.3")):
        with pytest.raises(images.ImageError, match=f"aspect ratio of {ratio}:1, beyond the limit of 100:1"):
            images.decode(images.encode_png(np.zeros(shape, np.uint8)))
    assert images.decode(strip, max_aspect_ratio=None).width == 20_000  # the run's own PNGs


def test_the_fetch_check_applies_the_configured_ratio() -> None:
    wide = images.encode_png(np.zeros((2, 900), np.uint8))
    assert _check(wide, Settings(mode="upscale", max_aspect_ratio=500)).width == 900
    with pytest.raises(images.ImageError) as err:
        _check(wide, Settings(mode="upscale", max_aspect_ratio=400))
    assert err.value.reason == "extreme_aspect_ratio"
    assert "900x2 has an aspect ratio of 450:1, beyond the limit of 400:1" in str(err.value)
    with pytest.raises(images.ImageError, match="beyond the limit of 100:1"):
        _check(wide, Settings(mode="upscale"))


def test_the_cli_refuses_a_thin_strip_with_one_error_line(tmp_path: Path, capsys) -> None:
    from superres.cli import main
    from superres.model import ModelMeta, save_model

    up = random_upscaler(2, seed=5, d=16, s=8, m=1)
    weights = tmp_path / "x2.pt"
    save_model(up.model, weights, ModelMeta.for_spec(up.model.spec))
    strip, photo = tmp_path / "strip.png", tmp_path / "photo.png"
    strip.write_bytes(images.encode_png(np.zeros((1, 20_000, 3), np.uint8)))
    photo.write_bytes(images.encode_png(smooth_image(12, 10)))
    out = tmp_path / "out"
    code = main(["upscale", str(strip), str(photo), "--scale", "2", "--out", str(out),
                 "--model", str(weights)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"error: {strip}: 20000x1 has an aspect ratio of 20000:1, beyond the limit of 100:1" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["photo.png"]  # the rest are still processed
    # A user who means it raises the limit for that run.
    strip.write_bytes(images.encode_png(np.zeros((1, 300, 3), np.uint8)))
    assert main(["upscale", str(strip), "--scale", "2", "--out", str(out), "--model", str(weights),
                 "--max-aspect-ratio", "300"]) == 0
    assert Image.open(out / "strip.png").size == (600, 2)
    for bad in ("0.5", "inf", "nan", "wide"):
        with pytest.raises(SystemExit) as exc:
            main(["upscale", str(strip), "--scale", "2", "--out", str(out), "--max-aspect-ratio", bad])
        assert exc.value.code == 2


def _work(height: int, width: int, tile: int = 192, halo: int = 8) -> int:
    """Window pixels FSRCNN computes for a whole image (the engine's cut: balanced halo tiles)."""
    g = Geometry(height, width, balanced_tile(height, width, tile), halo)
    return g.count * g.window_h * g.window_w


def test_the_aspect_limit_bounds_the_halo_work() -> None:
    """Cost model behind the limit: work is window pixels (the time per window pixel is the same
    for strips and photos), so at the pixel limit nothing admitted costs much more than a square."""
    limit, ratio = images.DEFAULT_MAX_PIXELS, images.DEFAULT_MAX_ASPECT_RATIO
    side = math.isqrt(limit)
    square = _work(side, side)
    admitted = []
    for h in range(1, side + 1):
        w = min(int(ratio * h), limit // h)
        if w < h:
            break
        admitted.append(_work(h, w))
    assert max(admitted) <= 1.25 * square
    assert _work(1, 1) == 17 * 17 and _work(1, 100) == 17 * 116  # a 1-px strip computes 17 rows a row
    # What the limit refuses at the pixel limit: 3.9 and 15.6 times a square photo's work.
    assert 3.8 * square < _work(5, 8_000_000) < 3.9 * square
    assert 15 * square < _work(1, 40_000_000) < 16 * square
