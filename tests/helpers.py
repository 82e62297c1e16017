"""Small builders shared by tests: models with random weights and generated images."""

from __future__ import annotations

import numpy as np
import torch

from superres.engine import Upscaler
from superres.model import FSRCNN, ModelSpec


def random_upscaler(scale: int, seed: int = 0, d: int = 56, s: int = 12, m: int = 4) -> Upscaler:
    """An FSRCNN with random (but not tiny) weights, so every pixel of context matters."""
    torch.manual_seed(seed)
    model = FSRCNN(ModelSpec(scale=scale, d=d, s=s, m=m))
    torch.nn.init.normal_(model.deconv.weight, std=0.02)
    return Upscaler(model.eval(), batch_size=8)


def smooth_image(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """A natural-ish uint8 image: smooth gradients plus texture and a few edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = []
    for c in range(channels):
        fx, fy = rng.uniform(0.02, 0.2, size=2)
        base = 128 + 70 * np.sin(fx * xx + c) * np.cos(fy * yy - c)
        base += 40 * ((xx // max(w // 4, 1) + yy // max(h // 3, 1)) % 2)
        base += rng.normal(0, 6, size=(h, w))
        planes.append(base)
    img = np.clip(np.dstack(planes), 0, 255).astype(np.uint8)
    return img[..., 0] if channels == 1 else img
