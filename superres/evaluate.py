"""Evaluation under the paper protocol: HR -> LR -> SR (and bicubic) -> Y PSNR/SSIM.

``protocol_pair`` makes the LR exactly as the protocol says (crop HR to a
multiple of the scale, antialiased bicubic down, round to 8 bits),
``evaluate_pairs`` scores FSRCNN and the bicubic baseline side by side, and
``json_report`` writes exact matches (infinite PSNR) as ``null`` with a count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from superres import colour, metrics
from superres.engine import Upscaler
from superres.resize import crop_to_multiple, downscale, resize_plane

KEYS = ("psnr", "ssim", "psnr_bicubic", "ssim_bicubic")


def protocol_pair(hr_rgb: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(LR uint8, cropped HR uint8) for an HR image."""
    hr = crop_to_multiple(hr_rgb, scale)
    if min(hr.shape[:2]) < scale:
        raise ValueError(f"image {hr_rgb.shape[1]}x{hr_rgb.shape[0]} is smaller than the scale")
    return colour.to_uint8(downscale(hr, scale)), np.ascontiguousarray(hr)


def bicubic_y(lr_rgb: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic baseline on Y: the LR Y plane upscaled with bicubic, rounded to 8 bits."""
    y = colour.rgb_to_y(lr_rgb)
    h, w = y.shape
    return np.clip(np.rint(resize_plane(y, w * scale, h * scale)), 0, 255)


def sr_y(upscaler: Upscaler, lr_rgb: np.ndarray, tile: int | None = None) -> np.ndarray:
    """FSRCNN's Y output for an LR image, rounded to 8 bits (what the paper scores)."""
    return np.clip(np.rint(upscaler.sr_plane(colour.rgb_to_y(lr_rgb), tile)), 0, 255)


def score_image(
    upscaler: Upscaler, lr_rgb: np.ndarray, hr_rgb: np.ndarray, with_ssim: bool = True,
    tile: int | None = None,
) -> dict[str, float]:
    s = upscaler.scale
    hr_y = colour.rgb_to_y(hr_rgb)
    out = {}
    for key, test in (("", sr_y(upscaler, lr_rgb, tile)), ("_bicubic", bicubic_y(lr_rgb, s))):
        out["psnr" + key] = metrics.psnr(hr_y, test, shave=s)
        if with_ssim:
            out["ssim" + key] = metrics.ssim(hr_y, test, shave=s)
    return out


def mean_of(rows: list[dict], keys: Iterable[str] = KEYS) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in keys if rows and k in rows[0]}


def evaluate_pairs(
    upscaler: Upscaler,
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray]],
    with_ssim: bool = True,
    tile: int | None = None,
    progress: Callable[[str], None] | None = None,
    on_error: Callable[[str, ValueError], None] | None = None,
) -> dict:
    """Score (name, LR, HR) triples; returns the ``evaluate`` report.

    An image that cannot be scored (too small for the border shave or the SSIM
    window) raises ``ValueError``, unless ``on_error`` is given: then it is told
    the name and the error, the image is left out and the rest are still scored.
    PSNRs of exact matches are ``inf`` here; :func:`json_report` makes the JSON form.
    """
    rows = []
    for name, lr, hr in pairs:
        try:
            scores = score_image(upscaler, lr, hr, with_ssim, tile)
        except ValueError as exc:
            if on_error is None:
                raise
            on_error(name, exc)
            continue
        rows.append({"name": name, **scores})
        if progress:
            progress(name)
    return {"scale": upscaler.scale, "images": rows, "mean": mean_of(rows)}


PSNR_KEYS = ("psnr", "psnr_bicubic")


def json_report(report: dict) -> dict:
    """The ``evaluate`` report as JSON can hold it: no ``inf``, no ``NaN``.

    A per-image PSNR of an exact match (the images are identical, e.g. bicubic on a
    flat image) is infinite; it is written as ``null``, and ``"identical"`` counts
    those per key (``{"psnr": N, "psnr_bicubic": M}``).  Each mean is over the finite
    values only, and ``null`` when there are none.  The result passes
    ``json.dumps(..., allow_nan=False)``.
    """
    rows = [{k: (None if k in PSNR_KEYS and not np.isfinite(v) else v) for k, v in r.items()}
            for r in report["images"]]
    keys = [k for k in KEYS if rows and k in rows[0]] or list(KEYS)
    mean = {}
    for k in keys:
        finite = [float(r[k]) for r in rows if r.get(k) is not None and np.isfinite(r[k])]
        mean[k] = float(np.mean(finite)) if finite else None
    identical = {k: sum(1 for r in rows if k in r and r[k] is None) for k in PSNR_KEYS}
    return {**report, "images": rows, "mean": mean, "identical": identical}
