"""Every odd input is either normalised or rejected with a clear reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from superres import images
from tests.helpers import random_upscaler, smooth_image


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
        (b"\x00\x01garbage" * 10, "not_an_image"),
    ],
)
def test_non_images_are_rejected(data: bytes, reason: str) -> None:
    with pytest.raises(images.ImageError) as err:
        images.decode(data)
    assert err.value.reason == reason


def test_truncated_jpeg_is_rejected() -> None:
    data = _bytes(Image.fromarray(smooth_image(64, 64)), "JPEG")
    with pytest.raises(images.ImageError, match="truncated or corrupt") as err:
        images.decode(data[: len(data) // 2])
    assert err.value.reason == "corrupt"


def test_corrupt_png_chunk_is_rejected() -> None:
    data = bytearray(_bytes(Image.fromarray(RGB), "PNG"))
    idat = data.find(b"IDAT")
    data[idat + 10 : idat + 20] = b"\xff" * 10
    with pytest.raises(images.ImageError) as err:
        images.decode(bytes(data))
    assert err.value.reason == "corrupt"


def test_pixel_limit_rejects_bombs_before_decoding() -> None:
    data = _bytes(Image.new("L", (2000, 2000)), "PNG")
    with pytest.raises(images.ImageError, match="exceeds the limit") as err:
        images.decode(data, max_pixels=1_000_000)
    assert err.value.reason == "too_many_pixels"


def test_animated_gif_is_rejected() -> None:
    frames = [Image.fromarray(smooth_image(16, 16, seed=i)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(images.ImageError, match="animated GIF with 3 frames") as err:
        images.decode(buf.getvalue())
    assert err.value.reason == "animated"


def test_single_frame_gif_is_processable() -> None:
    dec = images.decode(_bytes(Image.fromarray(RGB).convert("P"), "GIF"))
    assert dec.pixels.shape[:2] == (24, 32)


def test_tiny_images_are_processable() -> None:
    dec = images.decode(_bytes(Image.new("RGB", (1, 1), (200, 30, 40)), "PNG"))
    out = random_upscaler(4).upscale(dec.pixels, tile=64)
    assert out.shape == (4, 4, 3)


def test_png_encoding_is_deterministic() -> None:
    assert images.encode_png(RGB) == images.encode_png(RGB.copy())
