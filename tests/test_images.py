"""Plain decoding and encoding (odd and bad inputs: tests/reliability/test_bad_images.py)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from superres import images
from tests.helpers import smooth_image


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


RGB = smooth_image(24, 32)


def test_rgb_jpeg_and_png_decode() -> None:
    dec = images.decode(_bytes(Image.fromarray(RGB), "PNG"))
    assert dec.format == "PNG" and dec.pixels.shape == (24, 32, 3)
    assert np.array_equal(dec.pixels, RGB)
    assert images.decode(_bytes(Image.fromarray(RGB), "JPEG")).pixels.shape == (24, 32, 3)


def test_png_encoding_is_deterministic() -> None:
    assert images.encode_png(RGB) == images.encode_png(RGB.copy())
