"""benchmarks.floor: the published per-image work is timed step by step, and bounds the reachable ratio."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import floor
from benchmarks.common import Image
from superres.pipeline.evaluate import COMPARE_CROP, COMPARE_GAP, upscale_comparison
from tests.helpers import random_upscaler, smooth_image


def test_floor_times_every_published_step_and_bounds_the_ratio() -> None:
    up = random_upscaler(2, seed=3)
    photos = [Image(f"p{i}", smooth_image(96, 80, seed=i)) for i in range(2)]
    out = floor.run(up, photos, model_cpu_s_per_mp=2.0, rounds=1)
    steps = out["cpu_s_per_mp"]
    assert set(steps) == {"decode_photo", "luma", "sr_colour", "sr_png", "bicubic", "bicubic_png",
                          "compare_png"}
    assert all(v > 0 for v in steps.values())
    assert out["megapixels"] == pytest.approx(2 * 96 * 80 / 1e6)
    assert out["total_cpu_s_per_mp"] == pytest.approx(sum(steps.values()))
    assert out["lowest_marginal_ratio"] == pytest.approx(1 + out["total_cpu_s_per_mp"] / 2.0)
    gallery = steps["bicubic"] + steps["bicubic_png"] + steps["compare_png"]
    assert out["lowest_marginal_ratio_without_gallery"] == pytest.approx(
        out["lowest_marginal_ratio"] - gallery / 2.0)


def test_upscale_comparison_is_bicubic_then_sr() -> None:
    lr = smooth_image(100, 90, seed=1)
    bicubic = np.repeat(np.repeat(lr, 2, axis=0), 2, axis=1)
    sr = 255 - bicubic
    strip = upscale_comparison(lr, bicubic, sr, 2)
    assert strip.shape == (COMPARE_CROP, 2 * COMPARE_CROP + COMPARE_GAP, 3)  # bicubic | gutter | SR
    assert not np.array_equal(strip[:, :COMPARE_CROP], strip[:, -COMPARE_CROP:])
