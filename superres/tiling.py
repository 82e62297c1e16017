"""Halo tiles: the unit of work shared by the CLI and the Spark jobs.

An LR plane is reflect-padded by ``halo`` pixels and cut into tiles.  Each tile
owns a *core* (a disjoint block of the image, at most ``tile`` x ``tile``) and
carries a *window* of pixels around it with at least ``halo`` pixels of context
on every side.  All windows of one image have the same shape, so they batch
into one forward pass; the last row/column of windows is shifted back to stay
inside the padded plane.  Because the halo covers FSRCNN's receptive field,
stitching the SR cores gives the whole-image result.

A :class:`Tile` turns into a flat record of plain ints and bytes
(:meth:`Tile.to_record`) that survives Parquet unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np


def balanced_tile(height: int, width: int, tile: int) -> int:
    """The core side, at most ``tile``, that cuts an image into the fewest and most even tiles.

    512 px with ``tile`` 192 gives 171 (3 x 171), not 192 + 192 + a last window
    shifted back over only 128 new pixels: the same number of tiles, and every
    window does new work, so the halo is the only pixels computed twice.  The tile
    count never rises.  The backend cuts whole images the same way.
    """
    return max(math.ceil(n / math.ceil(n / tile)) for n in (height, width))


@dataclass(frozen=True)
class Geometry:
    """How one image is cut: image size, core tile size and halo (LR pixels)."""

    height: int
    width: int
    tile: int
    halo: int

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"empty image {self.width}x{self.height}")
        if self.tile < 1:
            raise ValueError(f"tile size must be >= 1, got {self.tile}")
        if self.halo < 0:
            raise ValueError(f"halo must be >= 0, got {self.halo}")

    @property
    def rows(self) -> int:
        return math.ceil(self.height / self.tile)

    @property
    def cols(self) -> int:
        return math.ceil(self.width / self.tile)

    @property
    def count(self) -> int:
        return self.rows * self.cols

    @property
    def window_h(self) -> int:
        return min(self.tile, self.height) + 2 * self.halo

    @property
    def window_w(self) -> int:
        return min(self.tile, self.width) + 2 * self.halo

    def core(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(y, x, h, w) of a tile's core in image coordinates."""
        y, x = row * self.tile, col * self.tile
        return y, x, min(self.tile, self.height - y), min(self.tile, self.width - x)

    def window_origin(self, row: int, col: int) -> tuple[int, int]:
        """Top-left of a tile's window in padded coordinates (clamped inside the plane)."""
        y, x, _, _ = self.core(row, col)
        padded_h, padded_w = self.height + 2 * self.halo, self.width + 2 * self.halo
        return min(y, padded_h - self.window_h), min(x, padded_w - self.window_w)


@dataclass
class Tile:
    image_id: str
    row: int
    col: int
    y: int  # core origin in the LR image
    x: int
    h: int  # core size
    w: int
    off_y: int  # core origin inside the window
    off_x: int
    halo: int
    pixels: np.ndarray  # float32 window, window_h x window_w

    def to_record(self) -> dict[str, Any]:
        """A flat, Parquet-friendly dict: ints, a string and raw float32 bytes."""
        return {
            "image_id": self.image_id,
            "row": self.row,
            "col": self.col,
            "y": self.y,
            "x": self.x,
            "h": self.h,
            "w": self.w,
            "off_y": self.off_y,
            "off_x": self.off_x,
            "halo": self.halo,
            "tile_h": int(self.pixels.shape[0]),
            "tile_w": int(self.pixels.shape[1]),
            "pixels": np.ascontiguousarray(self.pixels, dtype="<f4").tobytes(),
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Tile:
        pixels = decode_pixels(rec["pixels"], rec["tile_h"], rec["tile_w"])
        return cls(
            image_id=rec["image_id"],
            row=int(rec["row"]),
            col=int(rec["col"]),
            y=int(rec["y"]),
            x=int(rec["x"]),
            h=int(rec["h"]),
            w=int(rec["w"]),
            off_y=int(rec["off_y"]),
            off_x=int(rec["off_x"]),
            halo=int(rec["halo"]),
            pixels=pixels,
        )


def decode_pixels(buf: bytes, height: int, width: int, dtype: str = "<f4") -> np.ndarray:
    """Little-endian ``dtype`` bytes -> HxW float32 array, checking the length."""
    arr = np.frombuffer(buf, dtype=dtype)
    if arr.size != height * width:
        raise ValueError(f"pixel buffer holds {arr.size} values, expected {height}x{width}")
    return arr.reshape(height, width).astype(np.float32, copy=False)


def encode_pixels(arr: np.ndarray, dtype: str = "<f4") -> bytes:
    return np.ascontiguousarray(arr, dtype=dtype).tobytes()


# SR tiles (inference -> reconstruct) are stored as float16: half the bytes Spark moves
# and stores for them (the inference job's JVM spends a quarter less CPU per megapixel than
# with float32; benchmarks/README.md, *Spark session defaults*).  Y in [0, 1] keeps 11
# significant bits, an error of at most 0.06 of a uint8 level, so the stitched output stays within 1 level of
# float32's (the contract every backend meets); NaN and inf survive for the quality gate.
SR_DTYPE = "<f2"


def encode_sr_pixels(arr: np.ndarray) -> bytes:
    """An SR core (float32, network units) as the bytes the ``sr_tiles`` dataset stores."""
    with np.errstate(over="ignore"):  # beyond float16's range is inf, which the tile's stats count
        return encode_pixels(arr, SR_DTYPE)


def decode_sr_pixels(buf: bytes, height: int, width: int) -> np.ndarray:
    """``sr_tiles`` bytes -> the HxW float32 core."""
    return decode_pixels(buf, height, width, SR_DTYPE)


def reflect_pad(plane: np.ndarray, halo: int) -> np.ndarray:
    """Mirror the border (without repeating the edge pixel), as RealESRGAN does.

    numpy reflects repeatedly when the pad exceeds the plane, and a 1-pixel
    plane is simply repeated, so any size works.
    """
    if halo == 0:
        return np.asarray(plane, dtype=np.float32)
    return np.pad(np.asarray(plane, dtype=np.float32), halo, mode="reflect")


def split(plane: np.ndarray, image_id: str, tile: int, halo: int) -> tuple[Geometry, list[Tile]]:
    """Cut an LR plane (HxW) into halo tiles of one common window shape."""
    geo = Geometry(height=plane.shape[0], width=plane.shape[1], tile=tile, halo=halo)
    padded = reflect_pad(plane, halo)
    tiles = []
    for row in range(geo.rows):
        for col in range(geo.cols):
            y, x, h, w = geo.core(row, col)
            wy, wx = geo.window_origin(row, col)
            window = padded[wy : wy + geo.window_h, wx : wx + geo.window_w]
            tiles.append(
                Tile(image_id, row, col, y, x, h, w, y + halo - wy, x + halo - wx, halo,
                     np.ascontiguousarray(window))
            )
    return geo, tiles


def crop_core(tile: Tile, sr_window: np.ndarray, scale: int) -> np.ndarray:
    """The SR pixels of a tile's core out of its SR window."""
    oy, ox = tile.off_y * scale, tile.off_x * scale
    return sr_window[oy : oy + tile.h * scale, ox : ox + tile.w * scale]


def stitch(
    cores: Iterable[tuple[int, int, np.ndarray]], height: int, width: int, scale: int
) -> np.ndarray:
    """Place SR cores ``(y, x, pixels)`` (LR origins) into an (H*scale)x(W*scale) plane.

    Raises if any pixel is left uncovered, so a missing tile cannot pass silently.
    """
    out = np.zeros((height * scale, width * scale), dtype=np.float32)
    covered = np.zeros(out.shape, dtype=bool)
    for y, x, pix in cores:
        ys, xs = y * scale, x * scale
        out[ys : ys + pix.shape[0], xs : xs + pix.shape[1]] = pix
        covered[ys : ys + pix.shape[0], xs : xs + pix.shape[1]] = True
    if not covered.all():
        raise ValueError(f"{int((~covered).sum())} SR pixels not covered by any tile")
    return out
