"""Evaluation under the paper protocol: HR -> LR -> SR (and bicubic) -> Y PSNR/SSIM.

``protocol_pair`` makes the LR exactly as the protocol says (crop HR to a
multiple of the scale, antialiased bicubic down, round to 8 bits), and
``evaluate_pairs`` scores FSRCNN and the bicubic baseline side by side.
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
) -> dict:
    """Score (name, LR, HR) triples; returns the ``evaluate`` JSON shape."""
    rows = []
    for name, lr, hr in pairs:
        rows.append({"name": name, **score_image(upscaler, lr, hr, with_ssim, tile)})
        if progress:
            progress(name)
    return {"scale": upscaler.scale, "images": rows, "mean": mean_of(rows)}
