"""An independent numpy port of MATLAB's ``imresize(..., 'bicubic')`` (antialiased).

The FSRCNN paper's bicubic figures were made with MATLAB; this reference lets a
test check that the project's PIL-based resize reproduces them, without MATLAB
and without the shared datasets.
"""

from __future__ import annotations

import numpy as np


def _cubic(x: np.ndarray) -> np.ndarray:
    a = np.abs(x)
    a2, a3 = a * a, a * a * a
    return (1.5 * a3 - 2.5 * a2 + 1) * (a <= 1) + (-0.5 * a3 + 2.5 * a2 - 4 * a + 2) * ((a > 1) & (a <= 2))


def _contributions(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    width = 4.0
    if scale < 1:  # antialiasing: stretch the kernel when shrinking

        def kernel(x: np.ndarray) -> np.ndarray:
            return scale * _cubic(scale * x)

        width = width / scale
    else:
        kernel = _cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(np.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    weights = kernel(u[:, None] - idx)
    weights /= weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx = mirror[np.mod(idx - 1, mirror.size).astype(int)]
    return weights, idx


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """Resize a float HxW(xC) array by ``scale`` along both axes, MATLAB-style."""
    out = np.asarray(img, dtype=np.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        w, idx = _contributions(n, int(np.ceil(n * scale)), scale)
        moved = np.moveaxis(out, axis, 0)
        res = np.einsum("ot,ot...->o...", w, moved[idx])
        out = np.moveaxis(res, 0, axis)
    return out
