"""Reconstruct stage: SR tile cores of one image + its LR image -> the SR PNG."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from superres import colour, images, tiling
from superres.engine import UNIT, merge_colour, upscale_bicubic_plane


def assemble(lr: np.ndarray, y_sr: np.ndarray, scale: int) -> np.ndarray:
    """SR luma + bicubic chroma (and alpha) in the LR image's channel layout, clamped uint8."""
    if lr.ndim == 2 or lr.shape[2] in (1, 2):
        h, w = y_sr.shape
        neutral = np.full((h, w, 2), 128.0, np.float32)
        base = colour.to_uint8(colour.ycbcr_to_rgb(np.dstack([y_sr, neutral]))[..., 0])
    else:
        ycc = colour.rgb_to_ycbcr(lr[..., :3])
        base = merge_colour(y_sr, ycc[..., 1:], scale)
    if lr.ndim == 3 and lr.shape[2] in (2, 4):
        base = np.dstack([base, upscale_bicubic_plane(lr[..., -1], scale)])
    return base


def reconstruct_image(
    image: dict[str, Any], cores: Iterable[tuple[int, int, np.ndarray]], scale: int
) -> dict[str, Any]:
    """Stitch an image's SR cores (LR origin y, x, pixels) and encode the PNG."""
    lr = images.decode(image["lr_png"]).pixels
    h, w = int(image["lr_height"]), int(image["lr_width"])
    y_sr = tiling.stitch(cores, h, w, scale) * UNIT  # cores are in the network's [0, 1]
    png = images.encode_png(assemble(lr, y_sr, scale))
    return {
        "image_id": image["image_id"], "png": png, "width": w * scale, "height": h * scale,
        "bytes": len(png), "sha256": hashlib.sha256(png).hexdigest(),
    }


OUTPUT_SCHEMA = (
    "image_id string, png binary, width int, height int, bytes long, sha256 string"
)
