"""Super-resolution of planes and images with a loaded FSRCNN.

:class:`Upscaler` is the one inference path: the CLI, the evaluation, the
Spark inference job and the benchmarks all call it.  Whole-image SR is
defined as "reflect-pad by the halo, run the network, crop", which is exactly
what every tile does, so tiled and whole-image results agree.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from superres import colour, tiling
from superres.resize import resize_plane

if TYPE_CHECKING:
    import torch

    from superres.model import FSRCNN

# torch is imported only where a model runs: the Spark stages that use just the
# colour/assembly helpers below (split, reconstruct, evaluate) then never pay for it.

UNIT = np.float32(255.0)  # Y on 0..255 <-> the network's [0, 1]


def configure_threads(threads: int | None = None) -> int:
    """Match torch's intra-op threads to the cores this process may use."""
    import torch

    if threads is None or threads <= 0:
        env = os.environ.get("SUPERRES_TORCH_THREADS")
        threads = int(env) if env else len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


BACKENDS = ("fast", "eager")
"""Inference backends, all plain PyTorch (so always available):

* ``eager``: the :class:`~superres.model.FSRCNN` module as trained (ConvTranspose2d),
  whole image in one forward: the reference every other backend is checked against;
* ``fast``: :class:`~superres.model.FastFSRCNN` (sub-pixel deconvolution, channels-last),
  run on halo tiles of at most ``work_tile`` LR pixels and forwards of at most
  ``max_pixels`` so that the 56-channel activations stay in the CPU caches, the
  forwards spread over the cores (see :meth:`Upscaler.forward_unit`).
  Same uint8 output as ``eager`` within 1 level (``tests/test_backends.py``).

``auto`` (the default; ``SUPERRES_BACKEND`` overrides it) is ``fast``.
"""
WORK_TILE = 192  # LR core size ``fast`` cuts a whole image into (halo tiles are exact)
MAX_PIXELS = 1 << 16  # input pixels per forward for ``fast``; bigger batches are split


def resolve_backend(backend: str | None = None) -> str:
    """``auto`` (or nothing) means ``SUPERRES_BACKEND`` when set, else ``fast``."""
    name = (backend or "auto").strip().lower()
    if name == "auto":
        name = (os.environ.get("SUPERRES_BACKEND") or "fast").strip().lower()
        name = "fast" if name == "auto" else name
    if name not in BACKENDS:
        raise ValueError(f"unknown inference backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")
    return name


@dataclass
class Upscaler:
    model: FSRCNN
    batch_size: int = 16
    backend: str = "auto"
    work_tile: int = WORK_TILE
    max_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        from superres.model import FastFSRCNN

        self.backend = resolve_backend(self.backend)
        # A snapshot of the weights (rebuild the Upscaler after training changes them).
        self._net = self.model if self.backend == "eager" else FastFSRCNN(self.model)

    @classmethod
    def load(
        cls, scale: int, weights: str | Path | None = None, device: str = "auto",
        batch_size: int = 16, backend: str = "auto",
    ) -> Upscaler:
        from superres.model import default_weights, load_model, pick_device

        path = Path(weights) if weights else default_weights(scale)
        return cls(load_model(path, scale=scale, device=pick_device(device)), batch_size, backend)

    @property
    def scale(self) -> int:
        return self.model.spec.scale

    @property
    def halo(self) -> int:
        return self.model.spec.halo

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward_unit(self, windows: np.ndarray) -> np.ndarray:
        """N x h x w float32 Y windows in [0, 1] -> N x (h*s) x (w*s) float32, same units.

        This is the network's own domain; the Spark tiles are stored in it.  ``eager``
        runs the batch as one forward with torch's intra-op threads.  ``fast`` splits it
        into forwards of at most ``max_pixels`` and, when torch may use several threads,
        runs those on as many Python threads with one intra-op thread each: separate
        tiles on separate cores scale better than one small convolution split across them.
        """
        import torch

        windows = np.ascontiguousarray(windows, dtype=np.float32)
        n, h, w = windows.shape
        s = self.scale
        out = np.empty((n, h * s, w * s), np.float32)
        if self.backend == "eager":
            out[:] = self._forward(windows)
            return out
        step = max(1, self.max_pixels // max(1, h * w))
        chunks = [slice(i, min(n, i + step)) for i in range(0, n, step)]
        workers = min(torch.get_num_threads(), len(chunks)) if self.device.type == "cpu" else 1

        def run(sl: slice) -> None:
            out[sl] = self._forward(windows[sl])

        if workers <= 1:
            for sl in chunks:
                run(sl)
            return out
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="superres-fwd") as pool:
                list(pool.map(run, chunks))
        finally:
            torch.set_num_threads(threads)
        return out

    def _forward(self, windows: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(windows).to(self.device)
            return self._net(x.unsqueeze(1)).squeeze(1).cpu().numpy()

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

    def whole_image_tile(self, h: int, w: int) -> int:
        """The core size ``fast`` cuts an h x w image into: at most ``work_tile``, and
        as even as possible (:func:`superres.tiling.balanced_tile`)."""
        return tiling.balanced_tile(h, w, self.work_tile)

    def sr_plane(self, plane: np.ndarray, tile: int | None = None) -> np.ndarray:
        """Super-resolve a Y plane (0..255). ``tile=None`` is whole-image SR.

        ``eager`` then runs the whole image in one forward; ``fast`` cuts it into
        halo tiles of ``work_tile`` (the same result: the halo covers the receptive field).
        """
        h, w = plane.shape
        if tile is None:
            tile = max(h, w) if self.backend == "eager" else self.whole_image_tile(h, w)
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
        base = colour.ycbcr_planes_to_rgb8(y_sr, 128.0, 128.0)[..., 0]
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
    return colour.ycbcr_planes_to_rgb8(y_sr, cb, cr)


def upscale_bicubic_plane(plane: np.ndarray, scale: int) -> np.ndarray:
    h, w = plane.shape
    return colour.to_uint8(resize_plane(plane.astype(np.float32), w * scale, h * scale))


def bicubic_rgb(rgb: np.ndarray, scale: int) -> np.ndarray:
    """The baseline every SR result is compared with: plain bicubic upscaling."""
    # One plane at a time, rounded as it comes: no HxWx3 float temporaries.
    return np.dstack([upscale_bicubic_plane(rgb[..., c], scale) for c in range(3)])
