"""PSNR and SSIM under the FSRCNN paper's protocol.

Both compare 8-bit-rounded BT.601 Y planes after shaving ``shave`` pixels from
every border (the protocol shaves ``scale``).  SSIM is Wang et al. (2004) with
an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255, over the
"valid" region, as in the reference MATLAB ``ssim_index``.
"""

from __future__ import annotations

import math

import numpy as np

from superres.colour import rgb_to_y


def _prepare(a: np.ndarray, b: np.ndarray, shave: int) -> tuple[np.ndarray, np.ndarray]:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    a = np.rint(np.asarray(a, dtype=np.float64))
    b = np.rint(np.asarray(b, dtype=np.float64))
    if shave:
        a, b = a[shave:-shave, shave:-shave], b[shave:-shave, shave:-shave]
    if a.size == 0:
        raise ValueError("image is empty after shaving the border")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray, shave: int = 0, peak: float = 255.0) -> float:
    """PSNR in dB between two Y planes on the 0..255 scale; ``inf`` when identical."""
    a, b = _prepare(a, b, shave)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def _gaussian(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation with a 1-D kernel along both axes."""
    k = len(g)
    rows = sum(g[i] * x[i : x.shape[0] - k + 1 + i, :] for i in range(k))
    return sum(g[i] * rows[:, i : rows.shape[1] - k + 1 + i] for i in range(k))


def ssim(a: np.ndarray, b: np.ndarray, shave: int = 0, peak: float = 255.0) -> float:
    """Mean SSIM between two Y planes on the 0..255 scale."""
    a, b = _prepare(a, b, shave)
    g = _gaussian()
    if min(a.shape) < len(g):
        raise ValueError(f"image {a.shape} is smaller than the {len(g)}x{len(g)} SSIM window")
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    saa = _filter_valid(a * a, g) - mu_a**2
    sbb = _filter_valid(b * b, g) - mu_b**2
    sab = _filter_valid(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * sab + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2)
    return float(np.mean(num / den))


def y_of(rgb_or_y: np.ndarray) -> np.ndarray:
    """Y plane of an RGB image, or the plane itself if it already is one."""
    arr = np.asarray(rgb_or_y)
    return rgb_to_y(arr) if arr.ndim == 3 else arr.astype(np.float32)


def score(reference: np.ndarray, test: np.ndarray, scale: int) -> tuple[float, float]:
    """(PSNR, SSIM) of ``test`` against ``reference`` on Y with the protocol's shave."""
    ry, ty = y_of(reference), y_of(test)
    return psnr(ry, ty, shave=scale), ssim(ry, ty, shave=scale)
