"""Plain decoding and encoding (odd and bad inputs: tests/reliability/test_bad_images.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from superres import images
from superres.engine import bicubic_rgb
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


@pytest.mark.parametrize("shape", [(24, 32), (24, 32, 1), (24, 32, 2), (24, 32, 3), (24, 32, 4), (1, 1, 3),
                                   (1, 7), (5, 1, 4)])
def test_png_encoding_is_lossless_in_every_layout(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)  # noise: every byte value and wrap-around
    data = images.encode_png(pixels)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[shape[2] if len(shape) == 3 else 1]
        decoded = np.asarray(im)
    assert np.array_equal(decoded.reshape(shape), pixels)
    assert np.array_equal(images.decode(data).pixels.reshape(shape), pixels)  # our strict decoder too


def test_png_encoding_compresses_like_pillow_and_refuses_non_uint8() -> None:
    photo = bicubic_rgb(smooth_image(128, 128), 2)  # 256x256, smooth like the SR and bicubic outputs
    ours = len(images.encode_png(photo))
    pillow = len(_bytes(Image.fromarray(photo), "PNG", compress_level=1))
    assert ours < 0.75 * photo.nbytes and ours < 1.1 * pillow  # really compressed, and no worse than Pillow
    with pytest.raises(TypeError, match="uint8"):
        images.encode_png(photo.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        images.encode_png(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        images.encode_png(np.zeros((0, 4), np.uint8))


def test_png_writer_uses_zlib_ng_and_makes_zlibs_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The accelerator is installed (requirements.txt) and changes no byte of the output."""
    import zlib

    from zlib_ng import zlib_ng

    assert images._deflate is zlib_ng
    photo = bicubic_rgb(smooth_image(96, 80), 2)
    noise = np.random.default_rng(3).integers(0, 256, (50, 70, 4), dtype=np.uint8)
    fast = [images.encode_png(photo), images.encode_png(noise)]
    monkeypatch.setattr(images, "_deflate", zlib)
    assert [images.encode_png(photo), images.encode_png(noise)] == fast
