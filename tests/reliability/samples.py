"""Bad and odd image bodies, built in memory, each with what the pipeline must do with it.

``CASES`` is the catalogue the bad-image tests serve through the faulty Picsum
server: every entry is either *quarantined* with a reason code or *processable*,
in which case ``check`` verifies the normalised pixels.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from tests.helpers import smooth_image

JPEG = {"Content-Type": "image/jpeg"}
PNG = {"Content-Type": "image/png"}
GIF = {"Content-Type": "image/gif"}
WEBP = {"Content-Type": "image/webp"}
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, in order."""
    out, pos = [], 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        out.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def build_png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunk(k, d) for k, d in chunks)


# --------------------------------------------------------------------------- quarantined kinds


def photo_jpeg(w: int = 48, h: int = 40, seed: int = 0) -> bytes:
    return encode(Image.fromarray(smooth_image(h, w, seed=seed)), "JPEG", quality=90)


def photo_png(w: int = 48, h: int = 40, seed: int = 0) -> bytes:
    return encode(Image.fromarray(smooth_image(h, w, seed=seed)), "PNG")


def truncated_jpeg() -> bytes:
    data = photo_jpeg(64, 64)
    return data[: len(data) // 2]


def html_error_page() -> bytes:
    return (b"<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head>"
            b"<body><h1>Service Unavailable</h1><p>Try again later.</p></body></html>")


def png_bad_idat_crc() -> bytes:
    """A bit flipped in IDAT's CRC: Pillow alone would decode it as a good photo."""
    data = bytearray(photo_png())
    idat = data.find(b"IDAT")
    length = struct.unpack(">I", data[idat - 4:idat])[0]
    data[idat + 4 + length] ^= 0x01
    return bytes(data)


def png_garbled_idat() -> bytes:
    """IDAT bytes overwritten, CRC recomputed: the zlib stream itself is broken."""
    chunks = png_chunks(photo_png())
    out = []
    for kind, data in chunks:
        if kind == b"IDAT":
            data = data[:6] + b"\xff" * 24 + data[30:]
        out.append((kind, data))
    return build_png(out)


def png_without_iend() -> bytes:
    data = photo_png()
    return data[: data.rfind(b"IEND") - 4]


def png_bad_header_crc() -> bytes:
    data = bytearray(photo_png())
    data[data.find(b"IHDR") + 5] ^= 0xFF  # inside the width: IHDR's CRC no longer matches
    return bytes(data)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, valid PNG file whose header declares ``width`` x ``height`` grey pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return build_png([(b"IHDR", ihdr), (b"IDAT", zlib.compress(b"\x00" * 64)), (b"IEND", b"")])


def png_big(side: int = 1200) -> bytes:
    """A real, fully decodable PNG of side x side black pixels (a few KB compressed)."""
    return encode(Image.new("L", (side, side)), "PNG")


def animated_gif() -> bytes:
    frames = [Image.fromarray(smooth_image(40, 48, seed=i)).convert("P") for i in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def animated_webp() -> bytes:
    frames = [Image.fromarray(smooth_image(40, 48, seed=i)) for i in range(2)]
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, loop=0)


# --------------------------------------------------------------------------- processable kinds


def patches(w: int = 48, h: int = 40) -> np.ndarray:
    """Three flat vertical bands, red | green | blue: colours that survive any sane conversion."""
    img = np.zeros((h, w, 3), np.uint8)
    third = w // 3
    img[:, :third], img[:, third:2 * third], img[:, 2 * third:] = RED, GREEN, BLUE
    return img


def band_means(pixels: np.ndarray) -> list[tuple[int, int, int]]:
    """Mean colour of the middle of each band (away from JPEG ringing at the borders)."""
    h, w = pixels.shape[:2]
    third = w // 3
    out = []
    for b in range(3):
        region = pixels[h // 4: 3 * h // 4, b * third + 4: (b + 1) * third - 4, :3]
        out.append(tuple(int(round(v)) for v in region.reshape(-1, 3).mean(axis=0)))
    return out


def close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 12) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def cmyk_jpeg() -> bytes:
    return encode(Image.fromarray(patches()).convert("CMYK"), "JPEG", quality=95)


def check_cmyk(px: np.ndarray) -> None:
    assert px.shape == (40, 48, 3)
    assert all(close(m, want) for m, want in zip(band_means(px), (RED, GREEN, BLUE), strict=True)), \
        band_means(px)


GREY16 = (np.arange(40 * 48, dtype=np.uint32).reshape(40, 48) * 34).astype(np.uint16)


def grey16_png() -> bytes:
    return encode(Image.fromarray(GREY16), "PNG")


def check_grey16(px: np.ndarray) -> None:
    assert px.shape == (40, 48) and px.dtype == np.uint8
    assert np.array_equal(px, np.rint(GREY16 / 65535.0 * 255.0).astype(np.uint8))


def rgb16_png() -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one, so by hand): top bytes = patches."""
    rgb = patches().astype(np.uint16) * 257  # 0xff -> 0xffff
    rgb[..., 1] |= 0x0080  # low bytes that must be dropped, not rounded into the top byte
    return rgb16_png_of(rgb)


def rgb16_png_of(rgb: np.ndarray) -> bytes:
    """HxWx3 uint16 samples as a 16-bit RGB PNG."""
    h = rgb.shape[0]
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", rgb.shape[1], h, 16, 2, 0, 0, 0)
    return build_png([(b"IHDR", ihdr), (b"IDAT", zlib.compress(raw)), (b"IEND", b"")])


def check_rgb16(px: np.ndarray) -> None:
    assert px.shape == (40, 48, 3)
    assert np.array_equal(px, patches())


def palette_png_transparent() -> bytes:
    pal = Image.fromarray(patches()).convert("P", palette=Image.Palette.ADAPTIVE, colors=3)
    green = next(i for i, c in enumerate(np.array(pal.getpalette()[:9]).reshape(3, 3)) if tuple(c) == GREEN)
    return encode(pal, "PNG", transparency=green)


def check_palette(px: np.ndarray) -> None:
    assert px.shape == (40, 48, 4)
    alpha = px[..., 3]
    assert (alpha[:, :16] == 255).all() and (alpha[:, 16:32] == 0).all() and (alpha[:, 32:] == 255).all()
    assert (px[:, :16, :3] == RED).all() and (px[:, 32:, :3] == BLUE).all()


RGBA = np.dstack([patches(), np.tile(np.linspace(0, 255, 48).astype(np.uint8), (40, 1))])


def rgba_png() -> bytes:
    return encode(Image.fromarray(RGBA), "PNG")


def check_rgba(px: np.ndarray) -> None:
    assert np.array_equal(px, RGBA)


GREY = smooth_image(40, 48, seed=7, channels=1)


def grey_png() -> bytes:
    return encode(Image.fromarray(GREY), "PNG")


def check_grey(px: np.ndarray) -> None:
    assert np.array_equal(px, GREY)


def exif_rotated_jpeg() -> bytes:
    """Stored 48 wide x 40 high with a red top-left corner, EXIF orientation 6 (rotate 90 CW)."""
    img = np.full((40, 48, 3), 128, np.uint8)
    img[:8, :8] = RED
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(img), "JPEG", quality=95, exif=exif.tobytes())


def check_exif(px: np.ndarray) -> None:
    assert px.shape == (48, 40, 3)  # displayed 40 wide x 48 high
    red = (px[..., 0] > 200) & (px[..., 1] < 80) & (px[..., 2] < 80)
    ys, xs = np.nonzero(red)
    assert ys.mean() < 12 and xs.mean() > 40 - 12  # rotated clockwise: now the top-right corner


SMALL = smooth_image(24, 40, seed=3)  # far smaller than one 128 px tile, but big enough to evaluate


def small_png() -> bytes:
    return encode(Image.fromarray(SMALL), "PNG")


def check_small(px: np.ndarray) -> None:
    assert np.array_equal(px, SMALL)


def one_by_one_png() -> bytes:
    return encode(Image.new("RGB", (1, 1), (200, 30, 40)), "PNG")


def single_frame_gif() -> bytes:
    return encode(Image.fromarray(patches()).convert("P", palette=Image.Palette.ADAPTIVE, colors=3), "GIF")


def check_gif(px: np.ndarray) -> None:
    assert px.shape == (40, 48, 3) and np.array_equal(px, patches())


# --------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    headers: dict[str, str]
    reason: str | None = None  # None: processable
    check: Callable[[np.ndarray], None] | None = None
    fmt: str | None = None  # the format the manifest must record, for processable cases
    mode: str | None = None  # the mode before normalisation, for processable cases
    settings: dict[str, object] = field(default_factory=dict)


# The pixel limit the bad-image fetch runs with: big enough for every photo here, and
# the "bomb" cases are far above it.
MAX_PIXELS = 1_000_000


def cases() -> list[Case]:
    """Everything the bad-image tests serve, in photo-id order."""
    return [
        Case("zero_byte_body", b"", JPEG, reason="empty"),
        Case("truncated_jpeg", truncated_jpeg(), JPEG, reason="corrupt"),
        Case("html_error_page_200", html_error_page(), {"Content-Type": "text/html; charset=utf-8"},
             reason="not_an_image"),
        Case("jpeg_served_as_text_plain", photo_jpeg(), {"Content-Type": "text/plain"},
             reason="bad_content_type"),
        Case("jpeg_without_content_type", photo_jpeg(), {}, reason="missing_content_type"),
        Case("png_bad_idat_crc", png_bad_idat_crc(), PNG, reason="corrupt"),
        Case("png_garbled_idat", png_garbled_idat(), PNG, reason="corrupt"),
        Case("png_bad_header_crc", png_bad_header_crc(), PNG, reason="corrupt"),
        Case("png_without_iend", png_without_iend(), PNG, reason="corrupt"),
        Case("bomb_over_pixel_limit", png_big(1200), PNG, reason="too_many_pixels"),
        Case("bomb_header_60000x60000", png_declaring(60_000, 60_000), PNG, reason="too_many_pixels"),
        Case("one_by_one_evaluate", one_by_one_png(), PNG, reason="too_small"),
        Case("animated_gif", animated_gif(), GIF, reason="animated"),
        Case("animated_webp", animated_webp(), WEBP, reason="animated"),
        Case("cmyk_jpeg", cmyk_jpeg(), JPEG, check=check_cmyk, fmt="JPEG", mode="CMYK"),
        Case("png_16bit_grey", grey16_png(), PNG, check=check_grey16, fmt="PNG", mode="I;16"),
        Case("png_16bit_rgb", rgb16_png(), PNG, check=check_rgb16, fmt="PNG", mode="RGB"),
        Case("palette_png_transparency", palette_png_transparent(), PNG, check=check_palette, fmt="PNG",
             mode="P"),
        Case("rgba_png", rgba_png(), PNG, check=check_rgba, fmt="PNG", mode="RGBA"),
        Case("grayscale_png", grey_png(), PNG, check=check_grey, fmt="PNG", mode="L"),
        Case("exif_rotated_jpeg", exif_rotated_jpeg(), JPEG, check=check_exif, fmt="JPEG", mode="RGB"),
        Case("smaller_than_one_tile", small_png(), PNG, check=check_small, fmt="PNG", mode="RGB"),
        Case("single_frame_gif", single_frame_gif(), GIF, check=check_gif, fmt="GIF", mode="P"),
    ]
