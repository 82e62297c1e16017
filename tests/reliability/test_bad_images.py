"""Bad images: each is detected at fetch, before any Spark work, quarantined with a record and its
bytes, and the run goes on; the odd-but-valid ones are normalised and processed.

The end-to-end tests serve every kind from :mod:`tests.reliability.samples` through the faulty
Picsum server, fetch them into storage, and then push what was accepted through the very
functions the Spark jobs run per image (split -> tiles -> FSRCNN -> reconstruct -> evaluate)
and the run report, without a JVM.  The unit tests below pin the decoder's normalisation.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from typing import Any

import numpy as np
import pytest
from PIL import Image

from superres import fetch, images, tiling
from superres.config import Settings
from superres.engine import Upscaler
from superres.fetch import Listed, Reply, fetch_partition
from superres.orchestration.tasks import build_report
from superres.pipeline import evaluate, inference, reconstruct, split
from superres.storage import LocalStorage
from tests.helpers import random_upscaler, smooth_image
from tests.reliability import samples
from tests.reliability.faulty_picsum import Fault, FaultyPicsum
from tests.reliability.io_fixtures import DS, PHOTOS, bounded, settings_for

CASES = samples.cases()
QUARANTINED = [c for c in CASES if c.reason]
PROCESSABLE = [c for c in CASES if not c.reason]


@pytest.fixture(scope="module")
def upscalers() -> dict[int, Upscaler]:
    return {s: random_upscaler(s, d=16, s=8, m=1) for s in (2, 3, 4)}


def process_like_spark(image_id: str, data: bytes, s: Settings, up: Upscaler) -> dict[str, Any]:
    """One photo through the per-image functions of the split, inference, reconstruct and evaluate jobs."""
    row = split.split_image(image_id, data, mode=s.mode, scale=s.scale, tile=s.tile_size, halo=up.halo,
                            max_pixels=s.max_pixels)
    if row["status"] != "ok":
        return row
    sr_tiles = inference.infer_records(split.tiles_of(row), up)
    cores = [(t["y"], t["x"], tiling.decode_sr_pixels(t["pixels"], t["sr_h"], t["sr_w"])) for t in sr_tiles]
    out = reconstruct.reconstruct_image(row, cores, s.scale)
    scored = evaluate.evaluate_row({"image_id": image_id, "png": out["png"], "lr_png": row["lr_png"],
                                    "hr": data}, s.mode, s.scale)
    return {**row, "output": out, "scored": scored}


def serve_cases(server: FaultyPicsum) -> dict[str, samples.Case]:
    """Photo id i answers CASES[i]'s body and headers; ids past the cases serve real photos."""
    by_id = {}
    for i, case in enumerate(CASES):
        headers = {**case.headers, "Picsum-ID": str(i)}
        server.faults[str(i)] = Fault("body", headers=headers, body=case.body)
        by_id[str(i)] = case
    return by_id


# --------------------------------------------------------------------------- through the fetch stage


def test_every_bad_image_kind_through_the_fetch_stage(faulty: FaultyPicsum, store: LocalStorage) -> None:
    assert len(CASES) < PHOTOS
    by_id = serve_cases(faulty)
    settings = settings_for(faulty.url, num_images=PHOTOS, max_pixels=samples.MAX_PIXELS)
    manifest = bounded(lambda: fetch_partition(settings, DS, store))

    # Counts reconcile and every id is accounted for exactly once.
    assert manifest["fetched"] == PHOTOS == len(manifest["images"]) + len(manifest["quarantined"])
    quarantined = {q["image_id"]: q for q in manifest["quarantined"]}
    accepted = {i["image_id"]: i for i in manifest["images"]}
    assert set(quarantined) | set(accepted) == {str(i) for i in range(PHOTOS)}
    assert not set(quarantined) & set(accepted)

    # Each bad kind: quarantined with its reason, a full record and its exact bytes kept.
    for pid, case in by_id.items():
        if not case.reason:
            continue
        record = quarantined.get(pid)
        assert record is not None, f"{case.name} was not quarantined"
        assert record["reason"] == case.reason, (case.name, record["message"])
        assert record["source"] == f"{faulty.url}/id/{pid}/64/48"
        assert record["bytes"] == len(case.body)
        assert record["sha256"] == hashlib.sha256(case.body).hexdigest()
        assert record["http_status"] == 200 and record["message"]
        assert record["key"] == f"quarantine/ds={DS}/{pid}.bin"
        assert store.read_bytes(record["key"]) == case.body  # even the zero-byte one is kept
    assert len(quarantined) == len(QUARANTINED)

    # The records are in the run's report and beside the kept bodies.
    report = store.read_json(f"reports/ds={DS}/quarantine.json")
    assert report == {"ds": DS, "requested": PHOTOS, "fetched": PHOTOS,
                      "quarantined": manifest["quarantined"]}
    assert store.read_json(f"quarantine/ds={DS}/_quarantine.json")["quarantined"] == manifest["quarantined"]
    marker = store.read_marker(f"quarantine/ds={DS}")
    assert marker is not None
    assert set(marker["files"]) == {f"{p}.bin" for p in quarantined} | {"_quarantine.json"}

    # The processable kinds (and the ordinary photo) are in raw/ as served, normalised on decode.
    for pid, case in by_id.items():
        if case.reason:
            continue
        image = accepted[pid]
        assert (image["format"], image["mode"]) == (case.fmt, case.mode), case.name
        body = store.read_bytes(image["key"])
        assert body == case.body and image["sha256"] == hashlib.sha256(body).hexdigest()
        assert case.check is not None
        case.check(images.decode(body).pixels)
    raw = store.read_marker(f"raw/ds={DS}")
    assert raw is not None
    assert set(raw["files"]) == {k["key"].rsplit("/", 1)[1] for k in accepted.values()} | {"_manifest.json"}
    assert store.read_json(f"raw/ds={DS}/_manifest.json") == manifest


def test_accepted_photos_all_go_through_every_stage_and_counts_reconcile(
        faulty: FaultyPicsum, store: LocalStorage, upscalers: dict[int, Upscaler]) -> None:
    """What fetch accepted never fails later (no Spark work wasted on it); the report reconciles."""
    by_id = serve_cases(faulty)
    settings = settings_for(faulty.url, num_images=PHOTOS, max_pixels=samples.MAX_PIXELS)
    manifest = bounded(lambda: fetch_partition(settings, DS, store))
    outputs = {}
    for image in manifest["images"]:
        data = store.read_bytes(image["key"])
        done = process_like_spark(image["image_id"], data, settings, upscalers[settings.scale])
        assert done["status"] == "ok", (by_id.get(image["image_id"]), done["reason"], done["message"])
        hr = images.decode(data).pixels
        h, w = (hr.shape[0] // 2) * 2, (hr.shape[1] // 2) * 2  # the protocol crops to a multiple of x2
        assert (done["output"]["height"], done["output"]["width"]) == (h, w)
        assert (done["lr_height"], done["lr_width"]) == (h // 2, w // 2)
        assert math.isfinite(done["scored"]["ssim"]) and done["scored"]["psnr"] > 0
        sr = images.decode(done["output"]["png"]).pixels
        assert sr.shape[:2] == (h, w) and sr.ndim == hr.ndim  # grey stays grey, alpha stays
        outputs[f"{image['image_id']}.png"] = done["output"]["png"]
    store.replace_partition(f"sr/ds={DS}", outputs)

    run = {"ds": DS, "run_id": "manual__bad_images", "settings": settings.public()}
    report = build_report(run, store)
    assert report["counts"] == {"fetched": PHOTOS, "processed": len(PROCESSABLE) + (PHOTOS - len(CASES)),
                                "quarantined": len(QUARANTINED)}
    assert report["reconciled"] is True


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_one_by_one_in_upscale_mode_becomes_scale_by_scale(
        faulty: FaultyPicsum, store: LocalStorage, upscalers: dict[int, Upscaler], scale: int) -> None:
    """1x1 cannot be evaluated (no LR to make), but upscale mode processes it: scale x scale out."""
    body = samples.encode(Image.new("RGB", (1, 1), (200, 30, 40)), "PNG")
    for photo in faulty.photos:
        faulty.faults[photo.id] = Fault("body", headers={"Content-Type": "image/png"}, body=body)
    settings = settings_for(faulty.url, num_images=1, mode="upscale", scale=scale)
    manifest = bounded(lambda: fetch_partition(settings, DS, store))
    (image,) = manifest["images"]
    assert (image["width"], image["height"]) == (1, 1) and manifest["quarantined"] == []

    done = process_like_spark(image["image_id"], store.read_bytes(image["key"]), settings, upscalers[scale])
    assert done["status"] == "ok" and done["tiles"] == 1
    sr = images.decode(done["output"]["png"]).pixels
    assert sr.shape == (scale, scale, 3)
    # the tiled Spark path gives what the engine gives for the whole image (the CLI's path)
    whole = upscalers[scale].upscale(images.decode(body).pixels)
    assert whole.shape == sr.shape and np.abs(whole.astype(int) - sr.astype(int)).max() <= 1
    assert done["scored"]["psnr"] is None and done["scored"]["compare_png"]


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_evaluate_min_side_is_exactly_what_the_evaluate_stage_can_score(
        upscalers: dict[int, Upscaler], scale: int) -> None:
    """fetch.min_side is not a guess: one pixel less and the evaluate job would fail on the photo."""
    side = fetch.min_side("evaluate", scale)
    settings = Settings(scale=scale, mode="evaluate")
    up = upscalers[scale]
    ok = samples.encode(Image.fromarray(smooth_image(side, side + 5, seed=scale)), "PNG")
    done = process_like_spark("ok", ok, settings, up)
    assert done["status"] == "ok" and math.isfinite(done["scored"]["ssim"])

    small = samples.encode(Image.fromarray(smooth_image(side - 1, side + 5, seed=scale)), "PNG")
    with pytest.raises(ValueError, match="SSIM window|empty"):
        process_like_spark("small", small, settings, up)
    reply = Reply(200, _headers("image/png"), small, "http://127.0.0.1/x")
    with pytest.raises(images.ImageError) as err:
        fetch.check_body(Listed("small", "a", 1, 1, ""), reply, settings)
    assert err.value.reason == "too_small" and f"smaller than {side} px" in str(err.value)
    assert fetch.min_side("upscale", scale) == 1


def _headers(content_type: str) -> Any:
    from requests.structures import CaseInsensitiveDict

    return CaseInsensitiveDict({"Content-Type": content_type})


# --------------------------------------------------------------------------- decode, unit level


@pytest.mark.parametrize("case", QUARANTINED, ids=lambda c: c.name)
def test_each_quarantined_kind_has_its_reason_at_the_fetch_check(case: samples.Case) -> None:
    reply = Reply(200, _headers(case.headers.get("Content-Type", "")) if case.headers else _headers(""),
                  case.body, "http://127.0.0.1/id/1/64/48")
    if not case.headers:
        reply.headers.pop("Content-Type")
    settings = Settings(max_pixels=samples.MAX_PIXELS)
    with pytest.raises(images.ImageError) as err:
        fetch.check_body(Listed("1", "a", 1, 1, ""), reply, settings)
    assert err.value.reason == case.reason, str(err.value)


@pytest.mark.parametrize("case", PROCESSABLE, ids=lambda c: c.name)
def test_each_processable_kind_is_normalised(case: samples.Case) -> None:
    dec = images.decode(case.body, max_pixels=samples.MAX_PIXELS)
    assert (dec.format, dec.source_mode) == (case.fmt, case.mode)
    assert dec.pixels.dtype == np.uint8 and dec.pixels.ndim in (2, 3)
    assert case.check is not None
    case.check(dec.pixels)


def _bytes(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


RGB = smooth_image(24, 32)


def test_grayscale_stays_grey_and_upscales_grey() -> None:
    grey = smooth_image(20, 20, channels=1)
    dec = images.decode(_bytes(Image.fromarray(grey), "PNG"))
    assert dec.pixels.shape == (20, 20) and dec.source_mode == "L"
    out = random_upscaler(2).upscale(dec.pixels)
    assert out.shape == (40, 40) and out.dtype == np.uint8
    assert dec.rgb().shape == (20, 20, 3)


def test_rgba_alpha_is_kept_and_upscaled() -> None:
    rgba = np.dstack([RGB, np.linspace(0, 255, 32, dtype=np.uint8)[None, :].repeat(24, 0)])
    dec = images.decode(_bytes(Image.fromarray(rgba), "PNG"))
    assert dec.has_alpha and dec.pixels.shape == (24, 32, 4)
    out = random_upscaler(3).upscale(dec.pixels)
    assert out.shape == (72, 96, 4)
    # alpha is bicubic-upscaled: monotone left-to-right ramp survives
    assert out[10, 0, 3] < 20 and out[10, -1, 3] > 235


def test_palette_png_with_and_without_transparency() -> None:
    pal = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    dec = images.decode(_bytes(pal, "PNG"))
    assert dec.source_mode == "P" and dec.pixels.shape == (24, 32, 3)
    dec_t = images.decode(_bytes(pal, "PNG", transparency=0))
    assert dec_t.pixels.shape == (24, 32, 4)
    assert (dec_t.pixels[..., 3] == 0).any() or (dec_t.pixels[..., 3] == 255).all()


def test_16bit_png_is_scaled_to_8_bits() -> None:
    ramp = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 256).astype(np.uint16)
    dec = images.decode(_bytes(Image.fromarray(ramp), "PNG"))
    assert dec.source_mode.startswith("I")
    assert dec.pixels.dtype == np.uint8 and dec.pixels.shape == (16, 16)
    assert dec.pixels[0, 0] == 0 and dec.pixels[-1, -1] == round(65280 / 65535 * 255)


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    cmyk = Image.fromarray(RGB).convert("CMYK")
    dec = images.decode(_bytes(cmyk, "JPEG", quality=95))
    assert dec.source_mode == "CMYK" and dec.pixels.shape == (24, 32, 3)
    assert np.abs(dec.pixels.astype(int) - RGB.astype(int)).mean() < 12


@pytest.mark.parametrize("orientation,shape", [(1, (24, 32)), (3, (24, 32)), (6, (32, 24)), (8, (32, 24))])
def test_exif_orientation_is_applied(orientation: int, shape: tuple[int, int]) -> None:
    marked = RGB.copy()
    marked[:4, :4] = [255, 0, 0]  # a red top-left corner to follow
    exif = Image.Exif()
    exif[0x0112] = orientation
    dec = images.decode(_bytes(Image.fromarray(marked), "JPEG", quality=95, exif=exif.tobytes()))
    assert dec.pixels.shape[:2] == shape
    red = (dec.pixels[..., 0] > 200) & (dec.pixels[..., 1] < 60)
    ys, xs = np.nonzero(red)
    corner = (ys.mean() < shape[0] / 2, xs.mean() < shape[1] / 2)
    expected = {1: (True, True), 3: (False, False), 6: (True, False), 8: (False, True)}[orientation]
    assert corner == expected


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty"),
        (b"<!DOCTYPE html><html><body>Service unavailable</body></html>", "not_an_image"),
        (b'{"error": "rate limited"}', "not_an_image"),
        (b"\x00\x01garbage" * 10, "not_an_image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 16, "corrupt"),  # a JPEG header cut short
        (b"\x89PNG\r\n\x1a\n", "corrupt"),  # a PNG signature and nothing else
    ],
    ids=["empty", "html", "json", "garbage", "jpeg_header_only", "png_signature_only"],
)
def test_non_images_and_cut_headers_are_rejected(data: bytes, reason: str) -> None:
    with pytest.raises(images.ImageError) as err:
        images.decode(data)
    assert err.value.reason == reason


def test_truncated_jpeg_is_rejected() -> None:
    data = _bytes(Image.fromarray(smooth_image(64, 64)), "JPEG")
    with pytest.raises(images.ImageError, match="truncated or corrupt") as err:
        images.decode(data[: len(data) // 2])
    assert err.value.reason == "corrupt"


@pytest.mark.parametrize("build, where", [
    (samples.png_bad_idat_crc, "chunk IDAT at byte 33 fails its CRC"),
    (samples.png_bad_header_crc, "chunk IHDR at byte 8 fails its CRC"),
    (samples.png_without_iend, "no IEND chunk"),
    (samples.png_garbled_idat, "truncated or corrupt PNG data"),
])
def test_corrupt_png_chunks_are_rejected(build: Any, where: str) -> None:
    with pytest.raises(images.ImageError, match=where) as err:
        images.decode(build())
    assert err.value.reason == "corrupt"


def test_png_chunk_running_past_the_end_is_rejected() -> None:
    data = bytearray(samples.photo_png())
    idat = data.find(b"IDAT")
    data[idat - 4:idat] = (10**6).to_bytes(4, "big")
    with pytest.raises(images.ImageError, match="declares 1000000 bytes") as err:
        images.decode(bytes(data))
    assert err.value.reason == "corrupt"


def test_pixel_limit_rejects_bombs_before_decoding() -> None:
    data = _bytes(Image.new("L", (2000, 2000)), "PNG")
    with pytest.raises(images.ImageError, match="exceeds the limit") as err:
        images.decode(data, max_pixels=1_000_000)
    assert err.value.reason == "too_many_pixels"


def test_the_configured_pixel_limit_is_the_one_reported() -> None:
    """Above Pillow's own warning threshold (89 M) the message still names our limit."""
    expected = "10000x10000 = 100000000 pixels exceeds the limit of 99999999"
    with pytest.raises(images.ImageError, match=expected):
        images.decode(samples.png_declaring(10_000, 10_000), max_pixels=99_999_999)


def test_header_only_bomb_is_refused_without_allocating() -> None:
    """60000 x 60000 (3.6 G pixels) from a ~100-byte file: refused from the header alone."""
    data = samples.png_declaring(60_000, 60_000)
    assert len(data) < 200
    with pytest.raises(images.ImageError) as err:
        images.decode(data)
    assert err.value.reason == "too_many_pixels"


@pytest.mark.parametrize("build, fmt", [(samples.animated_gif, "GIF"), (samples.animated_webp, "WEBP")])
def test_animations_are_rejected(build: Any, fmt: str) -> None:
    with pytest.raises(images.ImageError, match=f"animated {fmt} with") as err:
        images.decode(build())
    assert err.value.reason == "animated"


def test_single_frame_gif_is_processable() -> None:
    dec = images.decode(_bytes(Image.fromarray(RGB).convert("P"), "GIF"))
    assert dec.pixels.shape[:2] == (24, 32)


def test_tiny_images_are_processable_by_the_engine() -> None:
    dec = images.decode(_bytes(Image.new("RGB", (1, 1), (200, 30, 40)), "PNG"))
    out = random_upscaler(4).upscale(dec.pixels, tile=64)
    assert out.shape == (4, 4, 3)


def test_quarantine_records_are_json_and_name_the_content_type(faulty: FaultyPicsum,
                                                               store: LocalStorage) -> None:
    """The message says what the server claimed the body was, so the record is self-explanatory."""
    for photo in faulty.photos:
        faulty.faults[photo.id] = Fault("body", headers={"Content-Type": "text/html"},
                                        body=samples.html_error_page())
    settings = settings_for(faulty.url, num_images=2)
    manifest = bounded(lambda: fetch_partition(settings, DS, store))
    for record in manifest["quarantined"]:
        assert record["reason"] == "not_an_image" and "Content-Type text/html" in record["message"]
    json.dumps(manifest, allow_nan=False)


def test_wrong_photo_is_quarantined(faulty: FaultyPicsum, store: LocalStorage) -> None:
    """A good JPEG, but the source says it is another photo (Picsum-ID): not what we asked for."""
    for photo in faulty.photos:
        faulty.faults[photo.id] = Fault("body", headers={"Content-Type": "image/jpeg", "Picsum-ID": "999"},
                                        body=samples.photo_jpeg())
    manifest = bounded(lambda: fetch_partition(settings_for(faulty.url, num_images=2), DS, store))
    assert {q["reason"] for q in manifest["quarantined"]} == {"wrong_photo"}
    assert all("got Picsum-ID '999'" in q["message"] for q in manifest["quarantined"])


def test_rerun_after_recovery_clears_old_quarantine(faulty: FaultyPicsum, store: LocalStorage) -> None:
    for photo in faulty.photos:
        faulty.faults[photo.id] = Fault("body", headers=samples.JPEG, body=samples.truncated_jpeg())
    bounded(lambda: fetch_partition(settings_for(faulty.url, num_images=3), DS, store))
    assert [k for k in store.list(f"quarantine/ds={DS}") if k.endswith(".bin")]
    faulty.faults.clear()
    manifest = bounded(lambda: fetch_partition(settings_for(faulty.url, num_images=3), DS, store))
    assert len(manifest["images"]) == 3 and manifest["quarantined"] == []
    assert [k for k in store.list(f"quarantine/ds={DS}") if k.endswith(".bin")] == []
    assert store.read_json(f"reports/ds={DS}/quarantine.json")["quarantined"] == []


# --------------------------------------------------------------------------- black 16-bit files, thin strips


def _black_16bit_png() -> bytes:
    """A 16-bit RGB PNG whose samples are 8-bit values 0..255, unscaled: black on its own scale."""
    return samples.rgb16_png_of(smooth_image(40, 48, seed=9).astype(np.uint16))


def _fetch_served(faulty: FaultyPicsum, store: LocalStorage, body: bytes, mode: str) -> dict[str, Any]:
    """Every photo answers ``body``; the fetch's manifest."""
    for photo in faulty.photos:
        faulty.faults[photo.id] = Fault("body", headers={"Content-Type": "image/png"}, body=body)
    return bounded(lambda: fetch_partition(settings_for(faulty.url, num_images=3, mode=mode), DS, store))


@pytest.mark.parametrize("mode", ["evaluate", "upscale"])
def test_black_16bit_png_is_quarantined_at_fetch(faulty: FaultyPicsum, store: LocalStorage,
                                                 mode: str) -> None:
    """8-bit values in a 16-bit PNG used to be fetched and processed into a black output."""
    body = _black_16bit_png()
    manifest = _fetch_served(faulty, store, body, mode)
    assert manifest["images"] == [] and len(manifest["quarantined"]) == 3
    for record in manifest["quarantined"]:
        assert record["reason"] == "black_16bit"
        assert record["message"].startswith("16-bit image decodes to black: no sample reaches 1/128 of white")
        assert store.read_bytes(record["key"]) == body


def test_thin_strip_is_quarantined_at_fetch(faulty: FaultyPicsum, store: LocalStorage) -> None:
    """A 20000x1 strip is a ~100-byte PNG under any pixel limit, and costs ~15x a photo's work per pixel
    (the halo); upscale mode, which takes any size, used to fetch and process it."""
    body = images.encode_png(np.zeros((1, 20_000, 3), np.uint8))
    manifest = _fetch_served(faulty, store, body, "upscale")
    assert manifest["images"] == [] and len(manifest["quarantined"]) == 3
    for record in manifest["quarantined"]:
        assert record["reason"] == "extreme_aspect_ratio"
        assert record["message"].startswith(
            "20000x1 has an aspect ratio of 20000:1, beyond the limit of 100:1")
        assert store.read_bytes(record["key"]) == body


@pytest.mark.parametrize("mode, shape, limit",
                         [("evaluate", (17, 1700), 100.0), ("upscale", (1, 800), 1000.0)])
def test_a_photo_the_fetch_admits_goes_through_every_stage(upscalers: dict[int, Upscaler], mode: str,
                                                           shape: tuple[int, int], limit: float) -> None:
    """The ratio is an admission check: the Spark stages do not apply it again.  1700x17 is exactly
    100:1, but its x2 LR (850x8 after the protocol's crop) is 106:1; a raised limit admits 800x1."""
    settings = Settings(mode=mode, scale=2, max_aspect_ratio=limit)
    body = samples.encode(Image.fromarray(smooth_image(*shape, seed=4)), "PNG")
    reply = Reply(200, _headers("image/png"), body, "http://127.0.0.1/id/1/64/48")
    assert fetch.check_body(Listed("1", "a", 1, 1, ""), reply, settings).pixels.shape[:2] == shape
    done = process_like_spark("strip", body, settings, upscalers[2])
    assert done["status"] == "ok", done["message"]
    assert done["output"]["width"] == shape[1] * (2 if mode == "upscale" else 1)
