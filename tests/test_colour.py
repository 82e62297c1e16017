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
