"""BT.601 "studio swing" YCbCr, as MATLAB's ``rgb2ycbcr`` and the SR literature use it.

All functions take and return float arrays on the 0..255 scale (HxWx3), so no
rounding happens until :func:`to_uint8`, which clamps first: values never wrap.
"""

from __future__ import annotations

import numpy as np

# Rows: Y, Cb, Cr.  Columns: R, G, B in [0, 1] (MATLAB rgb2ycbcr, ITU-R BT.601).
_FWD = np.array(
    [
        [65.481, 128.553, 24.966],
        [-37.797, -74.203, 112.0],
        [112.0, -93.786, -18.214],
    ],
    dtype=np.float64,
)
_OFFSET = np.array([16.0, 128.0, 128.0])
_INV = np.linalg.inv(_FWD)


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """RGB (0..255, HxWx3) -> YCbCr (0..255 studio swing), float32."""
    rgb = np.asarray(rgb, dtype=np.float64) / 255.0
    return (rgb @ _FWD.T + _OFFSET).astype(np.float32)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """YCbCr (0..255 studio swing) -> RGB on 0..255, float32, unclamped."""
    ycc = np.asarray(ycc, dtype=np.float64)
    return ((ycc - _OFFSET) @ _INV.T * 255.0).astype(np.float32)


def ycbcr_planes_to_rgb8(y: np.ndarray, cb: np.ndarray | float, cr: np.ndarray | float) -> np.ndarray:
    """Y, Cb, Cr planes (0..255 studio swing) -> RGB uint8 (HxWx3), rounded and clamped.

    What ``to_uint8(ycbcr_to_rgb(np.dstack([y, cb, cr])))`` computes, one output
    channel at a time in float32 with reused buffers: the HxWx3 float64
    temporaries of that form made it the costliest step of stitching a 4x-size
    SR image after PNG encoding.  Results differ from it only where a value
    lies within float32 rounding (~1e-5 of a level) of a half level.
    A scalar chroma (128 for grey) broadcasts.
    """
    luma = np.asarray(y, dtype=np.float32) - np.float32(16.0)
    chroma = (np.asarray(cb, dtype=np.float32) - np.float32(128.0),
              np.asarray(cr, dtype=np.float32) - np.float32(128.0))
    out = np.empty(luma.shape + (3,), np.uint8)
    acc, term = np.empty_like(luma), np.empty_like(luma)
    for c, k in enumerate((_INV * 255.0).astype(np.float32)):
        np.multiply(luma, k[0], out=acc)
        for plane, kc in zip(chroma, k[1:], strict=True):
            np.multiply(plane, kc, out=term)
            acc += term
        np.rint(acc, out=acc)
        np.clip(acc, 0, 255, out=acc)
        out[..., c] = acc
    return out


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """The Y channel only (0..255), as the evaluation protocol measures it."""
    rgb = np.asarray(rgb, dtype=np.float64) / 255.0
    return (16.0 + rgb @ _FWD[0]).astype(np.float32)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Round to 8 bits, clamping first so that 256 never wraps to 0."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
