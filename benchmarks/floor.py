"""The floor under the dag's marginal cost: the per-image work a run publishes besides the
model, alone in one process.

The dag part compares what one more megapixel costs end to end with what the model alone
costs for it.  The megapixel also has to be decoded, and its SR PNG and the gallery's
bicubic PNG and comparison strip encoded.  Here that work runs with the project's
own functions, in one thread, with no Spark, no storage, no scheduler and none of
the pipeline's intermediate datasets, so its CPU time is the least that any pipeline
publishing the same artifacts can add to the model.  ``1 + floor / model`` is then
the lowest marginal ratio any design reaches on these cores; it says whether the
dag's marginal-cost target can be met at all while the output stays what it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import Image, jpeg_bytes
from superres import images as codec
from superres.engine import Upscaler, assemble, luma
from superres.pipeline.evaluate import bicubic_image, upscale_comparison


def cpu_s(fn: Callable[[], Any], rounds: int = 3) -> float:
    """Least CPU seconds of this process over ``rounds`` calls (interference only adds)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def run(up: Upscaler, photos: list[Image], model_cpu_s_per_mp: float, rounds: int = 3) -> dict[str, Any]:
    """Core-seconds per LR MP of each step, and the lowest reachable marginal ratio.

    ``model_cpu_s_per_mp`` is the model alone as the dag's profile counts it: cores / the
    throughput of the engine's backend (the dag's reference).
    """
    s = up.scale
    mp = sum(p.megapixels for p in photos)
    jpegs = [jpeg_bytes(p.rgb) for p in photos]
    lrs = [codec.decode(j).pixels for j in jpegs]
    y_srs = [up.sr_plane(luma(lr)) for lr in lrs]
    srs = [assemble(lr, y, s) for lr, y in zip(lrs, y_srs, strict=True)]
    bicubics = [bicubic_image(lr, s) for lr in lrs]
    steps: dict[str, Callable[[], Any]] = {
        "decode_photo": lambda: [codec.decode(j) for j in jpegs],
        "luma": lambda: [luma(lr) for lr in lrs],
        "sr_colour": lambda: [assemble(lr, y, s) for lr, y in zip(lrs, y_srs, strict=True)],
        "sr_png": lambda: [codec.encode_png(sr) for sr in srs],
        "bicubic": lambda: [bicubic_image(lr, s) for lr in lrs],
        "bicubic_png": lambda: [codec.encode_png(b) for b in bicubics],
        "compare_png": lambda: [codec.encode_png(upscale_comparison(lr, b, sr, s))
                                for lr, b, sr in zip(lrs, bicubics, srs, strict=True)],
    }
    per_mp = {name: cpu_s(fn, rounds) / mp for name, fn in steps.items()}
    total = sum(per_mp.values())
    gallery = per_mp["bicubic"] + per_mp["bicubic_png"] + per_mp["compare_png"]
    return {
        "images": len(photos), "megapixels": mp, "cpu_s_per_mp": per_mp, "total_cpu_s_per_mp": total,
        "model_cpu_s_per_mp": model_cpu_s_per_mp,
        "lowest_marginal_ratio": 1 + total / model_cpu_s_per_mp,
        # The SR PNG alone (no gallery panels): what dropping the bicubic and comparison PNGs would leave.
        "lowest_marginal_ratio_without_gallery": 1 + (total - gallery) / model_cpu_s_per_mp,
    }
