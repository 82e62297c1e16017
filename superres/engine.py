"""Super-resolution of planes and images with a loaded FSRCNN.

:class:`Upscaler` is the one inference path: the CLI, the evaluation, the
Spark inference job and the benchmarks all call it.  Whole-image SR is
defined as "reflect-pad by the halo, run the network, crop", which is exactly
what every tile does, so tiled and whole-image results agree.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from superres import colour, tiling
from superres.model import FSRCNN, default_weights, load_model, pick_device
from superres.resize import resize_plane

UNIT = np.float32(255.0)  # Y on 0..255 <-> the network's [0, 1]


def configure_threads(threads: int | None = None) -> int:
    """Match torch's intra-op threads to the cores this process may use."""
    if threads is None or threads <= 0:
        env = os.environ.get("SUPERRES_TORCH_THREADS")
        threads = int(env) if env else len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


@dataclass
class Upscaler:
    model: FSRCNN
    batch_size: int = 16

    @classmethod
    def load(
        cls, scale: int, weights: str | Path | None = None, device: str = "auto",
        batch_size: int = 16,
    ) -> Upscaler:
        path = Path(weights) if weights else default_weights(scale)
        return cls(load_model(path, scale=scale, device=pick_device(device)), batch_size)

    @property
    def scale(self) -> int:
        return self.model.spec.scale

    @property
    def halo(self) -> int:
        return self.model.spec.halo

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def forward_unit(self, windows: np.ndarray) -> np.ndarray:
        """N x h x w float32 Y windows in [0, 1] -> N x (h*s) x (w*s) float32, same units.

        This is the network's own domain; the Spark tiles are stored in it.
        """
        x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)).to(self.device)
        return self.model(x.unsqueeze(1)).squeeze(1).cpu().numpy()

    def run_windows(self, windows: Sequence[np.ndarray], unit: bool = False) -> list[np.ndarray]:
        """Forward same-shaped windows in batches of ``batch_size``.

        Windows are on the 0..255 scale unless ``unit``; results come back in the same units.
        """
        out: list[np.ndarray] = []
        for i in range(0, len(windows), self.batch_size):
            batch = np.stack(windows[i : i + self.batch_size]).astype(np.float32, copy=False)
            if unit:
                out.extend(self.forward_unit(batch))
            else:
                out.extend(self.forward_unit(batch / UNIT) * UNIT)
        return out

    def sr_plane(self, plane: np.ndarray, tile: int | None = None) -> np.ndarray:
        """Super-resolve a Y plane (0..255). ``tile=None`` runs the whole image at once."""
        h, w = plane.shape
        if tile is None:
            tile = max(h, w)
        _, tiles = tiling.split(plane, "plane", tile, self.halo)
        srs = self.run_windows([t.pixels for t in tiles])
        cores = [(t.y, t.x, tiling.crop_core(t, sr, self.scale)) for t, sr in zip(tiles, srs, strict=True)]
        return tiling.stitch(cores, h, w, self.scale)

    def upscale_rgb(self, rgb: np.ndarray, tile: int | None = None) -> np.ndarray:
        """RGB uint8 -> SR RGB uint8: FSRCNN on Y, bicubic on Cb/Cr (SR literature)."""
        ycc = colour.rgb_to_ycbcr(rgb)
        y_sr = self.sr_plane(ycc[..., 0], tile)
        return merge_colour(y_sr, ycc[..., 1:], self.scale)

    def upscale(self, pixels: np.ndarray, tile: int | None = None) -> np.ndarray:
        """Any of L, LA, RGB, RGBA (uint8, HxW or HxWxC) -> the same layout, upscaled.

        Grey stays grey (FSRCNN on the plane itself); alpha is bicubic-upscaled.
        """
        return assemble(pixels, self.sr_plane(luma(pixels), tile), self.scale)


def luma(pixels: np.ndarray) -> np.ndarray:
    """Y plane (0..255) of a uint8 image in any of the L/LA/RGB/RGBA layouts."""
    if pixels.ndim == 2 or pixels.shape[2] in (1, 2):
        grey = pixels if pixels.ndim == 2 else pixels[..., 0]
        return colour.rgb_to_y(np.repeat(grey[..., None], 3, axis=2))
    return colour.rgb_to_y(pixels[..., :3])


def assemble(lr: np.ndarray, y_sr: np.ndarray, scale: int) -> np.ndarray:
    """SR luma + bicubic chroma (and alpha) in the LR image's channel layout, clamped uint8."""
    if lr.ndim == 2 or lr.shape[2] in (1, 2):
        h, w = y_sr.shape
        neutral = np.full((h, w, 2), 128.0, np.float32)
        base = colour.to_uint8(colour.ycbcr_to_rgb(np.dstack([y_sr, neutral]))[..., 0])
    else:
        ycc = colour.rgb_to_ycbcr(lr[..., :3])
        base = merge_colour(y_sr, ycc[..., 1:], scale)
    if lr.ndim == 3 and lr.shape[2] in (2, 4):
        base = np.dstack([base, upscale_bicubic_plane(lr[..., -1], scale)])
    return base


def merge_colour(y_sr: np.ndarray, cbcr_lr: np.ndarray, scale: int) -> np.ndarray:
    """SR Y + bicubic-upscaled Cb/Cr -> clamped RGB uint8."""
    h, w = y_sr.shape
    cb = resize_plane(cbcr_lr[..., 0], w, h)
    cr = resize_plane(cbcr_lr[..., 1], w, h)
    return colour.to_uint8(colour.ycbcr_to_rgb(np.dstack([y_sr, cb, cr])))


def upscale_bicubic_plane(plane: np.ndarray, scale: int) -> np.ndarray:
    h, w = plane.shape
    return colour.to_uint8(resize_plane(plane.astype(np.float32), w * scale, h * scale))


def bicubic_rgb(rgb: np.ndarray, scale: int) -> np.ndarray:
    """The baseline every SR result is compared with: plain bicubic upscaling."""
    h, w = rgb.shape[:2]
    planes = [resize_plane(rgb[..., c].astype(np.float32), w * scale, h * scale) for c in range(3)]
    return colour.to_uint8(np.dstack(planes))
