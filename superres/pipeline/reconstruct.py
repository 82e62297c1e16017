"""Reconstruct stage: SR tile cores of one image + its LR image -> the SR PNG."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from superres import images, tiling
from superres.engine import UNIT, assemble


def reconstruct_image(
    image: dict[str, Any], cores: Iterable[tuple[int, int, np.ndarray]], scale: int,
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
) -> dict[str, Any]:
    """Stitch an image's SR cores (LR origin y, x, pixels) and encode the PNG.

    ``max_pixels`` is the run's input limit, which the LR (never larger than the photo) meets.
    """
    lr = images.decode(image["lr_png"], max_pixels=max_pixels, max_aspect_ratio=None).pixels
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
