"""Decoding images into plain uint8 arrays, or a clear reason why not.

Every odd input the pipeline can meet is either normalised here or rejected
with an :class:`ImageError` whose ``reason`` is a short machine-readable code
(used in quarantine records) and whose message says what was wrong.

Handled: grey (L, 1), grey+alpha (LA), palette (P, with or without
transparency), RGB, RGBA, CMYK, YCbCr/LAB/HSV, 16-bit and 32-bit integer
grey, 16-bit RGB, any EXIF orientation.  Rejected: empty, truncated or corrupt
data (for PNG every chunk's CRC is checked and IEND must be present, because
Pillow itself skips the IDAT CRCs), non-image bytes, animations, float images,
16-bit images that decode to black (see below), anything over the pixel limit,
and strips thinner than the aspect-ratio limit (both checked from the header,
before any pixel is decompressed).

Images deeper than 8 bits a sample are read on their nominal scale, 0..65535
for 16 bits, as the PNG specification defines it: 8-bit = round(v / 257) for
grey, and Pillow's high byte (v >> 8, within one level of that) for 16-bit
colour.  PNG's sBIT chunk does not change this: the specification has encoders
scale samples to the full range and sBIT only says how many of the top bits
are significant, so v / 257 is right with or without it (and Pillow does not
expose sBIT).  Nothing is guessed from the content: a 16-bit file holding
8-bit values 0..255 unscaled is, on that scale, black (at most 1/257 of
white).  Such an image is refused (``black_16bit``) rather than processed into
a black output or brightened by a guess that would also brighten every truly
dark 16-bit photo.  The test is on the 8-bit result: a deep image none of
whose colour samples comes out above 1 (of 255), i.e. none reaches 1/128 of
white.

Thin strips cost far more per pixel than photos: FSRCNN needs ``halo`` (8)
pixels of context on every side of every output pixel, so a 1-pixel-high
strip runs the network on 17 rows for each row it produces, about 15 times a
photo's cost per pixel.  That is the network's receptive field, not the
tiling: an untiled forward needs the same rows.  ``max_aspect_ratio`` bounds
the work: within it, no image under ``max_pixels`` costs more than 1.25 times
a square photo at the pixel limit, where 8,000,000 x 5 would cost 3.9 times
and 40,000,000 x 1 about 15 times (tests/test_image_gates.py).

Integer grey of mode ``I`` (a 16-bit PGM, a 32-bit TIFF) is on the same 16-bit
scale, clipped to 0..65535 first.
"""

from __future__ import annotations

import io
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # zlib-ng: the same deflate stream at the writer's settings in ~55 % of the time
    from zlib_ng import zlib_ng as _deflate
except ImportError:  # pragma: no cover - requirements.txt installs it; stdlib zlib is the fallback
    _deflate = zlib

DEFAULT_MAX_PIXELS = 40_000_000
# Longest side over shortest side: panoramas are within 20:1; a 2,000,000 x 1 strip is not a photo.
DEFAULT_MAX_ASPECT_RATIO = 100.0
# A deep image whose 8-bit result has no colour sample above this is black (see the module doc).
BLACK_16BIT_PEAK = 1

ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM"}


# Signatures of the formats we accept: bytes that start like one of these but that Pillow
# cannot open are a damaged image ("corrupt"), not some other kind of document.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_PNG_SIGNATURE = _SIGNATURES[0][0]


class ImageError(ValueError):
    """An input that cannot be super-resolved; ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Decoded:
    pixels: np.ndarray  # uint8: HxW (grey), HxWx2 (LA), HxWx3 (RGB) or HxWx4 (RGBA)
    format: str  # the container format PIL detected, e.g. "JPEG"
    source_mode: str  # the mode before normalisation, e.g. "CMYK" or "I;16"

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def has_alpha(self) -> bool:
        return self.pixels.ndim == 3 and self.pixels.shape[2] in (2, 4)

    def rgb(self) -> np.ndarray:
        """Colour pixels without alpha, grey expanded to three equal channels."""
        px = self.pixels if self.pixels.ndim == 3 else self.pixels[..., None]
        base = px[..., :3] if px.shape[2] >= 3 else px[..., :1]
        return np.ascontiguousarray(np.repeat(base, 3, axis=2) if base.shape[2] == 1 else base)


def _normalise_mode(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("RGB", "RGBA", "L", "LA"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode == "P" or mode == "PA":
        has_alpha = "transparency" in img.info or mode == "PA"
        return img.convert("RGBA" if has_alpha else "RGB")
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    if mode == "RGBX" or mode == "RGBa":
        return img.convert("RGBA" if mode == "RGBa" else "RGB")
    if mode.startswith("I;16") or mode == "I":
        # 16/32-bit integer grey: the 16-bit scale, whatever range the samples use (module doc).
        arr = np.clip(np.asarray(img, dtype=np.float64), 0, 65535)
        return Image.fromarray(np.rint(arr / 257.0).astype(np.uint8))
    raise ImageError("unsupported_mode", f"unsupported pixel mode {mode!r}")


def is_deep(img: Image.Image) -> bool:
    """True for an image with more than 8 bits a sample, read (call before ``load``).

    Integer grey modes are deep.  Pillow hands 16-bit colour over as 8-bit RGB/RGBA:
    its reader's raw mode (``RGB;16B``, ``LA;16B``, ...) or, for PPM, the declared
    maximum value says that the file was deeper.
    """
    if img.mode.startswith("I;16") or img.mode == "I":
        return True
    for tile in getattr(img, "tile", None) or ():
        args = tile.args if isinstance(tile.args, tuple) else (tile.args,)
        rawmode = args[0] if args and isinstance(args[0], str) else ""
        if ";16" in rawmode or ";32" in rawmode:
            return True
        if tile.codec_name == "ppm" and len(args) > 1 and isinstance(args[1], int) and args[1] > 255:
            return True
    return False


def check_not_black_16bit(pixels: np.ndarray, deep: bool) -> None:
    """Refuse a deep image that decodes to black on its nominal scale (the module doc says why)."""
    if not deep:
        return
    colour = pixels if pixels.ndim == 2 else pixels[..., :3] if pixels.shape[2] >= 3 else pixels[..., :1]
    if int(colour.max(initial=0)) <= BLACK_16BIT_PEAK:
        raise ImageError(
            "black_16bit",
            "16-bit image decodes to black: no sample reaches 1/128 of white on the 16-bit scale "
            "(8-bit values 0..255 stored without scaling?); save it as 8-bit or scale its samples "
            "to 0..65535",
        )


def check_aspect_ratio(width: int, height: int, max_aspect_ratio: float | None) -> None:
    """Refuse a strip whose longest side exceeds ``max_aspect_ratio`` times its shortest."""
    if max_aspect_ratio is None or width < 1 or height < 1:
        return
    long, short = max(width, height), min(width, height)
    if long > max_aspect_ratio * short:
        ratio = f"{long / short:.1f}".rstrip("0").rstrip(".")
        raise ImageError(
            "extreme_aspect_ratio",
            f"{width}x{height} has an aspect ratio of {ratio}:1, beyond the limit of "
            f"{max_aspect_ratio:g}:1 (a strip this thin costs many times a photo's work per pixel)",
        )


def sniff_format(data: bytes) -> str | None:
    """The format named by the first bytes (PNG, JPEG, GIF, WEBP, TIFF), or None."""
    for signature, fmt in _SIGNATURES:
        if data.startswith(signature):
            return fmt
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _chunk_name(raw: bytes) -> str:
    return "".join(chr(c) if 0x21 <= c <= 0x7E else "?" for c in raw)


def check_png_chunks(data: bytes) -> None:
    """Walk a PNG's chunks: each must fit in the data and match its CRC, and IEND must come.

    Pillow verifies CRCs only of the chunks before the image data and stops
    reading at the end of IDAT, so a flipped bit inside IDAT's CRC or a file cut
    after the pixels would otherwise pass as a good photo.
    """
    view = memoryview(data)
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length = int.from_bytes(view[pos:pos + 4], "big")
        name = _chunk_name(bytes(view[pos + 4:pos + 8]))
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > len(data):
            raise ImageError("corrupt", f"truncated or corrupt PNG data: chunk {name} at byte {pos} "
                             f"declares {length} bytes but the data ends at byte {len(data)}")
        if zlib.crc32(view[pos + 4:end - 4]) != int.from_bytes(view[end - 4:end], "big"):
            raise ImageError("corrupt", f"truncated or corrupt PNG data: chunk {name} at byte {pos} "
                             "fails its CRC check")
        if name == "IEND":
            return
        pos = end
    raise ImageError("corrupt", "truncated or corrupt PNG data: no IEND chunk (the file was cut short)")


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
           max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO) -> Decoded:
    """Decode image bytes into uint8 pixels, applying EXIF orientation.

    ``max_pixels`` and ``max_aspect_ratio`` are checked from the header.  ``None``
    for the ratio skips it: for the pipeline's own LR and SR PNGs, whose photo the
    fetch check admitted (a protocol crop may make an LR a little thinner).
    """
    if not data:
        raise ImageError("empty", "empty body: 0 bytes")
    sniffed = sniff_format(data)
    if sniffed == "PNG":
        check_png_chunks(data)
    fmt = sniffed or "image"  # Image.open itself can fail (truncated header) before the format is known
    try:
        with warnings.catch_warnings():
            # The configured max_pixels below is the limit, not Pillow's global default (its
            # warning fires above 89 M pixels whatever we configured).  Pillow still refuses
            # outright above twice that (DecompressionBombError), which we report the same way.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or "unknown"
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(
                    "too_many_pixels",
                    f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}",
                )
            check_aspect_ratio(width, height, max_aspect_ratio)
            if fmt not in ALLOWED_FORMATS:
                raise ImageError("unsupported_format", f"unsupported image format {fmt}")
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                raise ImageError("animated", f"animated {fmt} with {frames} frames is not supported")
            deep = is_deep(img)
            img.load()
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        if sniffed is not None:
            raise ImageError("corrupt", f"truncated or corrupt {sniffed} data: the header cannot be read "
                             f"({len(data)} bytes)") from exc
        head = data[:64].lstrip().lower()
        if head.startswith((b"<!doctype", b"<html", b"<?xml", b"{")):
            raise ImageError("not_an_image", "body is text (HTML/XML/JSON), not an image") from exc
        raise ImageError("not_an_image", "bytes are not a recognised image format") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError("too_many_pixels", f"decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError("corrupt", f"truncated or corrupt {fmt} data: {exc}") from exc
    source_mode = img.mode
    if source_mode == "F":
        raise ImageError("unsupported_mode", "32-bit float images are not supported")
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # a broken EXIF block must not sink a good photo
        raise ImageError("corrupt", f"unreadable EXIF orientation: {exc}") from exc
    img = _normalise_mode(img)
    pixels = np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
    check_not_black_16bit(pixels, deep)
    return Decoded(pixels, fmt, source_mode)


def read(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS,
         max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO) -> Decoded:
    return decode(Path(path).read_bytes(), max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio)


# PNG colour type by channel count: grey, grey+alpha, RGB, RGBA.
_PNG_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + tag + body + zlib.crc32(tag + body).to_bytes(4, "big")


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 HxW / HxWx{1,2,3,4} -> PNG bytes (deterministic: no timestamps, no ancillary chunks).

    Written here rather than by Pillow because encoding the 4x-size outputs is the
    biggest per-image cost of reconstruct and evaluate after the model itself
    (benchmarks/README.md).  Every row uses PNG's *Up* filter (one vectorised
    subtraction) and the deflate stream uses zlib level 1 with the run-length
    strategy: about half of Pillow's time at ``compress_level=1`` for the same
    size on photos.  zlib-ng, when installed, makes the same bytes as zlib here
    (tests/test_images.py) about 1.8x as fast.  Lossless; any PNG reader decodes it.
    """
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise TypeError(f"encode_png needs uint8 pixels, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in _PNG_COLOUR_TYPE or 0 in arr.shape[:2]:
        raise ValueError(f"encode_png needs a non-empty HxW or HxWx1..4 array, got shape {arr.shape}")
    h, w, c = arr.shape
    rows = np.ascontiguousarray(arr).reshape(h, w * c)
    scanlines = np.empty((h, w * c + 1), np.uint8)
    scanlines[:, 0] = 2  # filter type Up: each byte minus the byte above it (mod 256)
    scanlines[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=scanlines[1:, 1:])
    deflate = _deflate.compressobj(1, _deflate.DEFLATED, 15, 9, _deflate.Z_RLE)
    idat = deflate.compress(scanlines) + deflate.flush()
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, _PNG_COLOUR_TYPE[c], 0, 0, 0])
    return (_PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm"}


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in a folder, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
