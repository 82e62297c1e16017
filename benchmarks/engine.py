"""The engine: whole-image FSRCNN x2 in plain PyTorch eager versus the project's backend.

Both run in this process on all cores, on the same Y planes, alternating
round by round so that a load change hits both.  Throughput is LR megapixels
per second; the figure is the median over rounds.  Ablation rows switch the
backend's ideas on one at a time (one round each, informational).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.common import Image, median, timed
from superres import colour
from superres.engine import Upscaler, configure_threads, luma


def planes_of(images: list[Image]) -> list[np.ndarray]:
    return [luma(img.rgb) for img in images]


def throughput(up: Upscaler, planes: list[np.ndarray], tile: int | None = None) -> tuple[float, list]:
    mp = sum(p.size for p in planes) / 1e6
    seconds, out = timed(lambda: [up.sr_plane(p, tile) for p in planes])
    return mp / seconds, out


def probe(model, images: list[Image], threads: int = 0) -> Callable[[], float]:
    """One round of the project's backend on all cores, to time again at any moment (MP/s).

    The dag part takes one before each DAG run, and the Spark stage one after each of its
    rounds: the machine's speed drifts by a third within minutes here (benchmarks/README.md,
    *Reading the figures*), so pure inference is measured in the same minutes as the runs it
    is compared with, not only in :func:`run` beforehand.
    """
    configure_threads(threads or None)
    planes = planes_of(images)
    fast = Upscaler(model, backend="fast")
    fast.sr_plane(planes[0])  # warm

    def rate() -> float:
        return throughput(fast, planes)[0]

    return rate


def run(model, images: list[Image], rounds: int = 3, ablation: bool = True,
        threads: int = 0, ablation_images: int = 4) -> dict[str, Any]:
    threads = configure_threads(threads or None)
    planes = planes_of(images)
    eager = Upscaler(model, backend="eager")
    fast = Upscaler(model, backend="fast")
    # Warm-up (first-call allocations, oneDNN primitive creation) and the output check.
    want = [eager.sr_plane(p) for p in planes[:2]]
    got = [fast.sr_plane(p) for p in planes[:2]]
    levels = max(int(np.abs(colour.to_uint8(a).astype(int) - colour.to_uint8(b).astype(int)).max())
                 for a, b in zip(want, got, strict=True))
    rates: dict[str, list[float]] = {"eager": [], "fast": []}
    for _ in range(rounds):
        for name, up in (("eager", eager), ("fast", fast)):
            rate, _ = throughput(up, planes)
            rates[name].append(rate)
            print(f"  engine {name:5s} {rate:.3f} MP/s", flush=True)
    result: dict[str, Any] = {
        "images": len(planes), "lr_size": list(planes[0].shape), "threads": threads, "rounds": rounds,
        "eager_mp_s": median(rates["eager"]), "fast_mp_s": median(rates["fast"]),
        "eager_mp_s_rounds": rates["eager"], "fast_mp_s_rounds": rates["fast"],
        "max_uint8_diff_vs_eager": levels,
        "backend": {"name": "fast", "work_tile": fast.whole_image_tile(*planes[0].shape),
                    "max_pixels": fast.max_pixels},
    }
    result["speedup"] = result["fast_mp_s"] / result["eager_mp_s"]
    if ablation:
        result["ablation"] = ablate(model, planes[:ablation_images])
    return result


def ablate(model, planes: list[np.ndarray]) -> dict[str, float]:
    """Each idea alone and stacked, one round each (MP/s): what helped and by how much."""
    import torch

    from superres.model import FastFSRCNN

    big = 1 << 30
    rows: dict[str, float] = {}

    def rate(up: Upscaler, tile: int | None = None) -> float:
        up.sr_plane(planes[0], tile)
        return throughput(up, planes, tile)[0]

    rows["eager whole image (reference)"] = rate(Upscaler(model, backend="eager"))
    cl = Upscaler(model, backend="eager")
    cl._net = _ChannelsLast(model)
    rows["eager + channels_last"] = rate(cl)
    sub = Upscaler(model, backend="fast", work_tile=big, max_pixels=big)
    sub._net = FastFSRCNN(model, channels_last=False)
    rows["sub-pixel deconv, whole image"] = rate(sub)
    rows["+ channels_last, whole image"] = rate(Upscaler(model, backend="fast", work_tile=big,
                                                         max_pixels=big))
    threads = torch.get_num_threads()
    tiled = Upscaler(model, backend="fast")
    try:  # the tiles, but one forward at a time with all cores on each (intra-op threads only)
        tiled.max_pixels = big
        rows["+ halo tiles, intra-op threads"] = rate(tiled)
    finally:
        tiled.max_pixels = Upscaler.max_pixels
    rows["+ one tile per core (the fast backend)"] = rate(tiled)
    for tile in (96, 128, 256):
        rows[f"fast backend, work tile {tile}"] = rate(Upscaler(model, backend="fast", work_tile=tile))
    torch.set_num_threads(threads)
    for k, v in rows.items():
        print(f"  engine ablation {k:42s} {v:.3f} MP/s", flush=True)
    return rows


class _ChannelsLast:
    """The eager module with channels-last weights and input (ablation only)."""

    def __init__(self, model) -> None:
        import copy

        import torch

        self.net = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def __call__(self, x):
        import torch

        return self.net(x.contiguous(memory_format=torch.channels_last)).contiguous()
