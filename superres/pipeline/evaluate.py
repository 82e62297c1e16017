"""Evaluate stage: score each SR PNG against its HR photo and bicubic, and make the artifacts.

Everything here is a pure function of bytes and arrays so that Spark executors
(``evaluate_batches`` is the ``mapInArrow`` body) and tests call the same code.

Scoring follows the paper protocol of :mod:`superres.evaluate`: PSNR/SSIM on
BT.601 Y, 8-bit rounded, with ``scale`` pixels shaved from every border.

* SR is scored on the Y of the published PNG itself (what users receive).
* The bicubic baseline is bicubic on the LR image's Y plane, exactly as
  :func:`superres.evaluate.bicubic_y` does, so the numbers match
  ``superres evaluate`` and the paper (33.66 dB on Set5 x2).  The bicubic
  *PNG* artifact is the plain per-channel bicubic upscale of the LR image
  (:func:`superres.engine.bicubic_rgb`); its Y differs from the scored plane
  only by 8-bit rounding of R, G and B (~0.01 dB).

PSNR is infinite when SR equals HR.  JSON has no infinity, so
:func:`metrics_report` caps PSNR at :data:`PSNR_CAP_DB`: a finite PSNR of
8-bit Y planes is at most ``10*log10(255**2 * N)`` (about 125 dB for the
40 MP pixel limit), so the cap can only mean "identical".

The per-image gate (:func:`image_flags`, applied by :func:`metrics_report`)
flags an image whose SR scores far below its own bicubic (``sr_below_bicubic``)
or whose output is near-constant (``near_constant_output``, the one check that
upscale mode, without ground truth, can make).  A flagged image is still
published, but it is listed with its flags in ``metrics.json``, shown flagged
on the gallery, and left out of the report's ``mean``; ``mean_all`` keeps
every image, and is what the regression gate judges the model on, so a flag
can never make a weak model look better.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from superres import images, metrics
from superres.config import Settings
from superres.engine import bicubic_rgb, luma, upscale_bicubic_plane
from superres.evaluate import KEYS, mean_of
from superres.resize import crop_to_multiple, resize_plane

PSNR_CAP_DB = 200.0
COMPARE_CROP = 160  # side of the comparison window, in HR/SR pixels
COMPARE_GAP = 4  # pixels between panels
# Images per driver round trip when publishing: what the driver (and a Spark Connect
# server, which gathers a whole result before sending it) holds at once, whatever the batch.
PUBLISH_CHUNK = 8
GAP_COLOUR = 255  # white gutters

EVAL_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("png", pa.binary()),
    ("psnr", pa.float64()), ("ssim", pa.float64()),
    ("psnr_bicubic", pa.float64()), ("ssim_bicubic", pa.float64()),
    ("bicubic_png", pa.binary()), ("compare_png", pa.binary()),
    ("output_std", pa.float64()),
])

# The per-image gate's flags (image_flags), in the order they are listed.
SR_BELOW_BICUBIC = "sr_below_bicubic"
NEAR_CONSTANT_OUTPUT = "near_constant_output"
FLAGS = (SR_BELOW_BICUBIC, NEAR_CONSTANT_OUTPUT)


class ModelRegressionError(RuntimeError):
    """The model scores no better than bicubic: its outputs must not be published."""


class SizeMismatchError(ValueError):
    """SR, LR and HR images of one photo do not line up at the run's scale."""


# --------------------------------------------------------------------------- images


def bicubic_image(lr: np.ndarray, scale: int) -> np.ndarray:
    """Plain bicubic upscale of an LR image in its own layout (L, LA, RGB or RGBA), uint8."""
    if lr.ndim == 2:
        return upscale_bicubic_plane(lr, scale)
    if lr.shape[2] >= 3:
        base = bicubic_rgb(lr[..., :3], scale)
        extra = [upscale_bicubic_plane(lr[..., c], scale) for c in range(3, lr.shape[2])]
        return np.dstack([base, *extra]) if extra else base
    return np.dstack([upscale_bicubic_plane(lr[..., c], scale) for c in range(lr.shape[2])])


def bicubic_luma(lr: np.ndarray, scale: int) -> np.ndarray:
    """The protocol's bicubic baseline: LR Y plane upscaled with bicubic, rounded to 8 bits."""
    y = luma(lr)
    h, w = y.shape
    return np.clip(np.rint(resize_plane(y, w * scale, h * scale)), 0, 255)


def display_rgb(pixels: np.ndarray) -> np.ndarray:
    """Colour pixels for viewing: grey expanded to RGB, alpha dropped (scores ignore it too)."""
    if pixels.ndim == 2:
        return np.repeat(pixels[..., None], 3, axis=2)
    if pixels.shape[2] in (1, 2):
        return np.repeat(pixels[..., :1], 3, axis=2)
    return np.ascontiguousarray(pixels[..., :3])


def texture_window(y: np.ndarray, size: int = COMPARE_CROP) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the ``size`` window with the most gradient energy.

    Detail is where SR and bicubic differ, so that is what the comparison shows.
    Candidates lie on a grid of quarter-window steps (plus the far edges); the
    first maximum in row-major order wins, so the choice is deterministic.
    """
    h, w = y.shape
    sh, sw = min(size, h), min(size, w)
    plane = np.asarray(y, dtype=np.float64)
    energy = np.zeros((h, w))
    energy[:, 1:] += np.abs(np.diff(plane, axis=1))
    energy[1:, :] += np.abs(np.diff(plane, axis=0))
    sat = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    def starts(n: int, s: int) -> np.ndarray:
        return np.unique(np.append(np.arange(0, n - s + 1, max(1, s // 4)), n - s))

    ys, xs = starts(h, sh), starts(w, sw)
    ty, tx = np.ix_(ys, xs)
    sums = sat[ty + sh, tx + sw] - sat[ty, tx + sw] - sat[ty + sh, tx] + sat[ty, tx]
    iy, ix = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(ys[iy]), int(xs[ix]), sh, sw


def side_by_side(panels: Sequence[np.ndarray], window: tuple[int, int, int, int],
                 gap: int = COMPARE_GAP) -> np.ndarray:
    """The same window of same-sized images, left to right with white gutters, as RGB uint8."""
    top, left, h, w = window
    crops = [display_rgb(p)[top:top + h, left:left + w] for p in panels]
    out = np.full((h, len(crops) * w + (len(crops) - 1) * gap, 3), GAP_COLOUR, np.uint8)
    for i, crop in enumerate(crops):
        x = i * (w + gap)
        out[:, x:x + w] = crop
    return out


def output_std(pixels: np.ndarray) -> float:
    """How far an output is from constant: the largest standard deviation (0..255) of its
    colour channels (alpha is left out, as the scores leave it out)."""
    colour = display_rgb(pixels)
    if colour.size == 0:
        return 0.0
    return float(max(np.std(colour[..., c], dtype=np.float64) for c in range(colour.shape[2])))


def _check_size(image_id: str, what: str, got: np.ndarray, want: tuple[int, int], why: str) -> None:
    h, w = got.shape[:2]
    if (h, w) != want:
        raise SizeMismatchError(
            f"image {image_id}: {what} is {w}x{h} but {why} is {want[1]}x{want[0]}"
        )


# --------------------------------------------------------------------------- per image


def _decode(data: bytes, max_pixels: int) -> np.ndarray:
    """Pixels of a photo the fetch check admitted (aspect ratio included) or of the run's own PNGs."""
    return images.decode(data, max_pixels=max_pixels, max_aspect_ratio=None).pixels


def sr_max_pixels(max_pixels: int, scale: int) -> int:
    """Decode limit for an SR output: the run's limit is on the photo, not its x scale^2 result."""
    return max_pixels * scale * scale


def evaluate_image(image_id: str, hr_bytes: bytes, sr_png: bytes, lr_png: bytes,
                   scale: int, max_pixels: int = images.DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """Evaluate mode: scores of SR and bicubic against the HR photo, plus both artifacts.

    The HR is cropped to a multiple of ``scale`` as the protocol does when it
    makes the LR; SR must then be exactly that size and the LR ``1/scale`` of it.
    PSNR is ``inf`` when SR equals HR (see :data:`PSNR_CAP_DB` for the JSON).
    """
    hr = crop_to_multiple(_decode(hr_bytes, max_pixels), scale)
    sr = _decode(sr_png, sr_max_pixels(max_pixels, scale))
    lr = _decode(lr_png, max_pixels)
    size = hr.shape[:2]
    why = f"the HR photo cropped to a multiple of x{scale}"
    _check_size(image_id, "the SR output", sr, size, why)
    _check_size(image_id, "the LR input", lr, (size[0] // scale, size[1] // scale), f"1/{scale} of {why}")
    hr_y, sr_y, bic_y = luma(hr), luma(sr), bicubic_luma(lr, scale)
    bicubic = bicubic_image(lr, scale)
    return {
        "image_id": image_id,
        "psnr": metrics.psnr(hr_y, sr_y, shave=scale),
        "ssim": metrics.ssim(hr_y, sr_y, shave=scale),
        "psnr_bicubic": metrics.psnr(hr_y, bic_y, shave=scale),
        "ssim_bicubic": metrics.ssim(hr_y, bic_y, shave=scale),
        "bicubic_png": images.encode_png(bicubic),
        "compare_png": images.encode_png(side_by_side([hr, bicubic, sr], texture_window(hr_y))),
        "output_std": output_std(sr),
    }


def upscale_artifacts(image_id: str, sr_png: bytes, lr_png: bytes, scale: int,
                      max_pixels: int = images.DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """Upscale mode (no ground truth): the bicubic PNG and a bicubic | SR comparison."""
    sr = _decode(sr_png, sr_max_pixels(max_pixels, scale))
    lr = _decode(lr_png, max_pixels)
    want = (lr.shape[0] * scale, lr.shape[1] * scale)
    _check_size(image_id, "the SR output", sr, want, f"x{scale} the LR input")
    bicubic = bicubic_image(lr, scale)
    return {
        "image_id": image_id,
        "bicubic_png": images.encode_png(bicubic),
        "compare_png": images.encode_png(upscale_comparison(lr, bicubic, sr, scale)),
        "output_std": output_std(sr),
    }


def upscale_comparison(lr: np.ndarray, bicubic: np.ndarray, sr: np.ndarray, scale: int) -> np.ndarray:
    """Upscale mode's bicubic | SR strip of the most detailed window.

    The window is found on the LR (scale^2 fewer pixels to scan than the bicubic image;
    the detail is the same) and mapped up, keeping COMPARE_CROP (or the image) as its size.
    """
    top, left, _, _ = texture_window(luma(lr), -(-COMPARE_CROP // scale))
    top, left = top * scale, left * scale
    h, w = sr.shape[:2]
    return side_by_side([bicubic, sr], (top, left, min(COMPARE_CROP, h - top), min(COMPARE_CROP, w - left)))


def evaluate_row(row: Mapping[str, Any], mode: str, scale: int,
                 max_pixels: int = images.DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """One joined row (image_id, png, lr_png[, hr]) -> an :data:`EVAL_SCHEMA` record.

    The SR PNG is passed through untouched, so the driver publishes exactly
    the bytes that were scored (after checking them against the staged sha256).
    """
    image_id, png = row["image_id"], bytes(row["png"])
    if mode == "evaluate":
        out = evaluate_image(image_id, bytes(row["hr"]), png, bytes(row["lr_png"]), scale, max_pixels)
    elif mode == "upscale":
        out = dict.fromkeys(KEYS)
        out.update(upscale_artifacts(image_id, png, bytes(row["lr_png"]), scale, max_pixels))
    else:
        raise ValueError(f"mode must be 'evaluate' or 'upscale', got {mode!r}")
    out["png"] = png
    return out


def evaluate_batches(batches: Iterator[pa.RecordBatch], *, mode: str, scale: int,
                     max_pixels: int = images.DEFAULT_MAX_PIXELS) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: one image at a time, so a worker holds one photo's arrays at once."""
    for batch in batches:
        for i in range(batch.num_rows):
            row = batch.slice(i, 1).to_pylist()[0]
            yield pa.RecordBatch.from_pylist([evaluate_row(row, mode, scale, max_pixels)], schema=EVAL_SCHEMA)


def publish_chunks(ids: Sequence[str], size: int | None = None) -> list[tuple[str, int]]:
    """(image_id, chunk) for the sorted ids: the driver fetches one chunk of results at a time."""
    size = PUBLISH_CHUNK if size is None else size
    if size < 1:
        raise ValueError(f"publish chunk size must be at least 1, got {size}")
    return [(image_id, n // size) for n, image_id in enumerate(sorted(ids))]


# --------------------------------------------------------------------------- report and gate


def json_psnr(value: float | None) -> float | None:
    """PSNR as valid JSON: ``inf`` (identical images) becomes :data:`PSNR_CAP_DB`; None stays None."""
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        raise ValueError("PSNR is NaN")
    return min(value, PSNR_CAP_DB)


def image_flags(psnr: float | None, psnr_bicubic: float | None, std: float | None, *,
                sr_below_bicubic_db: float = Settings.sr_below_bicubic_db,
                near_constant_std: float = Settings.near_constant_std) -> list[str]:
    """The per-image gate: which of :data:`FLAGS` one image earns.

    * ``sr_below_bicubic``: its SR PSNR is more than ``sr_below_bicubic_db`` below
      its own bicubic's (PSNRs as :func:`json_psnr` caps them; needs both scores,
      so never in upscale mode);
    * ``near_constant_output``: its output's :func:`output_std` is below
      ``near_constant_std`` (a black or flat output, whatever the scores say).
    """
    flags = []
    if psnr is not None and psnr_bicubic is not None and \
            min(float(psnr), PSNR_CAP_DB) < min(float(psnr_bicubic), PSNR_CAP_DB) - sr_below_bicubic_db:
        flags.append(SR_BELOW_BICUBIC)
    if std is not None and float(std) < near_constant_std:
        flags.append(NEAR_CONSTANT_OUTPUT)
    return flags


def _mean(rows: Sequence[Mapping[str, Any]]) -> dict[str, float] | None:
    """Means of :data:`KEYS` over rows that have scores, or None when there are none."""
    scored = [r for r in rows if all(r[k] is not None for k in KEYS)]
    return {k: mean_of(scored)[k] for k in KEYS} if scored else None


def metrics_report(ds: str, scale: int, rows: Sequence[Mapping[str, Any]], *, mode: str = "evaluate",
                   sr_below_bicubic_db: float = Settings.sr_below_bicubic_db,
                   near_constant_std: float = Settings.near_constant_std) -> dict[str, Any]:
    """``metrics.json``: per-image scores and flags sorted by image_id, and their means.

    Each image carries its :func:`image_flags` (``[]`` when it passed) and its
    ``output_std``; ``flagged`` lists the flagged ones again, with their flags.
    ``mean`` is over the unflagged images only (``mean_images`` of them, with
    ``flagged_count`` beside it) and ``mean_all`` over every image; either is
    ``None`` when it covers no scored image (always in upscale mode, whose
    images have no scores, only flags).  PSNRs are capped, so the report is
    always valid JSON.
    """
    gate = {"sr_below_bicubic_db": float(sr_below_bicubic_db), "near_constant_std": float(near_constant_std)}
    scored = []
    for r in sorted(rows, key=lambda r: str(r["image_id"])):
        entry: dict[str, Any] = {
            "image_id": str(r["image_id"]),
            "psnr": json_psnr(r.get("psnr")), "ssim": _float(r.get("ssim")),
            "psnr_bicubic": json_psnr(r.get("psnr_bicubic")), "ssim_bicubic": _float(r.get("ssim_bicubic")),
        }
        std = r.get("output_std")
        entry["output_std"] = None if std is None else round(float(std), 4)
        entry["flags"] = image_flags(entry["psnr"], entry["psnr_bicubic"], std, **gate)
        scored.append(entry)
    passed = [r for r in scored if not r["flags"]]
    flagged = [{"image_id": r["image_id"], "flags": r["flags"]} for r in scored if r["flags"]]
    return {
        "ds": ds, "scale": int(scale), "mode": mode, "images": scored,
        "mean": _mean(passed), "mean_images": len(passed), "flagged_count": len(flagged),
        "flagged": flagged, "mean_all": _mean(scored), "gate": gate,
    }


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def regression_gate(report: Mapping[str, Any]) -> None:
    """Refuse to publish a model that does not beat bicubic on mean Y PSNR.

    Judged on ``mean_all``, every image flagged or not: leaving out the images
    where SR lost to bicubic would flatter the model.  A tie fails too (the
    model must add something), except the degenerate case where both are
    perfect (every PSNR capped: flat images).
    """
    mean = report.get("mean_all", report.get("mean")) or {}
    n = len(report["images"])
    if not n or mean.get("psnr") is None or mean.get("psnr_bicubic") is None:
        raise ValueError(f"metrics report for ds={report.get('ds')} scored no images; nothing to gate")
    sr, bic = float(mean["psnr"]), float(mean["psnr_bicubic"])
    if sr < bic or (sr == bic and sr < PSNR_CAP_DB):
        raise ModelRegressionError(
            f"ds={report.get('ds')} x{report.get('scale')}: mean SR PSNR {sr:.3f} dB is not above "
            f"the bicubic baseline {bic:.3f} dB over {n} image(s); SR outputs are not published"
        )
