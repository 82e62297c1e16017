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


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """The Y channel only (0..255), as the evaluation protocol measures it."""
    rgb = np.asarray(rgb, dtype=np.float64) / 255.0
    return (16.0 + rgb @ _FWD[0]).astype(np.float32)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Round to 8 bits, clamping first so that 256 never wraps to 0."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
