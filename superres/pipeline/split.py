"""Split stage: photo bytes -> per-image geometry row + halo tile rows of LR Y.

In ``evaluate`` mode the LR is made from the photo with the evaluation
protocol's antialiased bicubic; in ``upscale`` mode the photo is the LR.
The LR image itself (PNG) travels in the image row so that reconstruct can
add bicubic chroma and alpha without going back to storage.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from superres import colour, images, tiling
from superres.engine import UNIT, luma
from superres.resize import crop_to_multiple, downscale

IMAGE_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("status", pa.string()), ("reason", pa.string()),
    ("message", pa.string()), ("source_mode", pa.string()),
    ("hr_width", pa.int32()), ("hr_height", pa.int32()),
    ("lr_width", pa.int32()), ("lr_height", pa.int32()),
    ("tile", pa.int32()), ("halo", pa.int32()), ("rows", pa.int32()), ("cols", pa.int32()),
    ("tiles", pa.int32()), ("lr_png", pa.binary()),
])
IMAGE_FIELDS = tuple(IMAGE_SCHEMA.names)

TILE_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("row", pa.int32()), ("col", pa.int32()),
    ("y", pa.int32()), ("x", pa.int32()), ("h", pa.int32()), ("w", pa.int32()),
    ("off_y", pa.int32()), ("off_x", pa.int32()), ("halo", pa.int32()),
    ("tile_h", pa.int32()), ("tile_w", pa.int32()), ("pixels", pa.binary()),
    ("min", pa.float32()), ("max", pa.float32()),
])


def make_lr(pixels: np.ndarray, mode: str, scale: int) -> np.ndarray:
    """The network input for a decoded photo (uint8, same channel layout)."""
    if mode == "upscale":
        return pixels
    if min(pixels.shape[:2]) < scale:
        raise images.ImageError(
            "too_small", f"{pixels.shape[1]}x{pixels.shape[0]} is smaller than the x{scale} factor"
        )
    return colour.to_uint8(downscale(crop_to_multiple(pixels, scale).astype(np.float32), scale))


def split_image(
    image_id: str, data: bytes, *, mode: str, scale: int, tile: int, halo: int, max_pixels: int,
) -> dict[str, Any]:
    """One photo -> its image row (geometry + LR PNG), or a quarantined row saying why."""
    row: dict[str, Any] = dict.fromkeys(IMAGE_FIELDS)
    row.update(image_id=image_id, tile=tile, halo=halo)
    try:
        # The fetch check admitted the photo, aspect ratio included (superres.fetch.check_body).
        dec = images.decode(data, max_pixels=max_pixels, max_aspect_ratio=None)
        lr = make_lr(dec.pixels, mode, scale)
    except images.ImageError as exc:
        row.update(status="quarantined", reason=exc.reason, message=str(exc))
        return row
    # ``tile`` is the largest core side; the image is cut into even tiles no larger than it.
    tile = tiling.balanced_tile(lr.shape[0], lr.shape[1], tile)
    geo = tiling.Geometry(height=lr.shape[0], width=lr.shape[1], tile=tile, halo=halo)
    row.update(
        tile=tile, status="ok", source_mode=dec.source_mode, hr_width=dec.width, hr_height=dec.height,
        lr_width=geo.width, lr_height=geo.height, rows=geo.rows, cols=geo.cols, tiles=geo.count,
        lr_png=images.encode_png(lr),
    )
    return row


def tiles_of(image: dict[str, Any], max_pixels: int = images.DEFAULT_MAX_PIXELS) -> list[dict[str, Any]]:
    """Halo tile records of an ``ok`` image row, with per-tile min/max for the quality gate.

    ``max_pixels`` is the run's input limit (the LR is never larger than the photo).
    """
    lr = images.decode(image["lr_png"], max_pixels=max_pixels, max_aspect_ratio=None).pixels
    unit = luma(lr) / UNIT  # tiles hold the network's input domain, Y in [0, 1]
    _, tiles = tiling.split(unit, image["image_id"], int(image["tile"]), int(image["halo"]))
    out = []
    for t in tiles:
        rec = t.to_record()
        rec.update(min=float(t.pixels.min()), max=float(t.pixels.max()))
        out.append(rec)
    return out


def split_images(batches: Iterator[pa.RecordBatch], **opts: Any) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: (image_id, data) rows -> image rows."""
    for batch in batches:
        rows = [split_image(r["image_id"], r["data"], **opts) for r in batch.to_pylist()]
        if rows:
            yield pa.RecordBatch.from_pylist(rows, schema=IMAGE_SCHEMA)


def cut_tiles(batches: Iterator[pa.RecordBatch],
              max_pixels: int = images.DEFAULT_MAX_PIXELS) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: ok image rows -> tile rows."""
    for batch in batches:
        for image in batch.to_pylist():
            yield pa.RecordBatch.from_pylist(tiles_of(image, max_pixels), schema=TILE_SCHEMA)
