from __future__ import annotations

import numpy as np

from superres import colour


def test_rgb_ycbcr_round_trip_within_one_level() -> None:
    v = np.arange(0, 256, 5, dtype=np.uint8)
    rgb = np.stack(np.meshgrid(v, v, v, indexing="ij"), axis=-1).reshape(-1, 1, 3)
    back = colour.to_uint8(colour.ycbcr_to_rgb(colour.rgb_to_ycbcr(rgb)))
    assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 1


def test_studio_swing_ranges() -> None:
    black = colour.rgb_to_ycbcr(np.zeros((1, 1, 3)))[0, 0]
    white = colour.rgb_to_ycbcr(np.full((1, 1, 3), 255))[0, 0]
    assert np.allclose(black, [16, 128, 128], atol=1e-3)
    assert np.allclose(white, [235, 128, 128], atol=1e-3)
    assert np.allclose(colour.rgb_to_y(np.full((1, 1, 3), 255)), 235, atol=1e-3)


def test_to_uint8_clamps_instead_of_wrapping() -> None:
    out = colour.to_uint8(np.array([-20.0, -0.4, 254.6, 256.0, 300.0]))
    assert out.tolist() == [0, 0, 255, 255, 255]


def test_planes_to_rgb8_matches_the_float64_reference() -> None:
    rng = np.random.default_rng(0)
    # Beyond the studio range on purpose: SR luma overshoots, and the output must clamp, not wrap.
    y = rng.uniform(-20, 280, (64, 80)).astype(np.float32)
    cb, cr = (rng.uniform(0, 255, (64, 80)).astype(np.float32) for _ in range(2))
    fast = colour.ycbcr_planes_to_rgb8(y, cb, cr)
    ref = colour.to_uint8(colour.ycbcr_to_rgb(np.dstack([y, cb, cr])))
    assert fast.dtype == np.uint8 and fast.shape == (64, 80, 3)
    diff = np.abs(fast.astype(int) - ref.astype(int))
    assert diff.max() <= 1
    assert (diff == 0).mean() > 0.999  # only float32 rounding at half levels may differ
    assert fast.min() == 0 and fast.max() == 255


def test_planes_to_rgb8_grey_chroma_broadcasts() -> None:
    y = np.linspace(16, 235, 50, dtype=np.float32).reshape(5, 10)
    out = colour.ycbcr_planes_to_rgb8(y, 128.0, 128.0)
    ref = colour.to_uint8(colour.ycbcr_to_rgb(np.dstack([y, np.full((5, 10, 2), 128.0)])))
    assert np.array_equal(out, ref)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
