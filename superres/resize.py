"""Bicubic resizing that matches MATLAB ``imresize`` closely enough for the protocol.

PIL's BICUBIC (a = -0.5, like MATLAB) on 32-bit float ``F`` images widens the
kernel when downscaling, i.e. it antialiases, and keeps full precision.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_plane(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize one float plane (HxW) with antialiased bicubic; returns float32."""
    img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    return np.asarray(img.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)


def resize(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize HxW or HxWxC float data channel by channel."""
    if arr.ndim == 2:
        return resize_plane(arr, width, height)
    return np.stack([resize_plane(arr[..., c], width, height) for c in range(arr.shape[2])], axis=-1)


def crop_to_multiple(arr: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right so both sides are multiples of ``scale`` (protocol step 1)."""
    h, w = arr.shape[:2]
    return arr[: h - h % scale, : w - w % scale]


def downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """The protocol's LR: crop HR to a multiple of ``scale``, then antialiased bicubic."""
    hr = crop_to_multiple(hr, scale)
    h, w = hr.shape[:2]
    return resize(hr.astype(np.float32), w // scale, h // scale)
