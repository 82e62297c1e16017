"""Tiled SR equals whole-image SR, and tiles survive Parquet."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from superres import colour, tiling
from tests.helpers import random_upscaler

UPSCALERS = {s: random_upscaler(s, seed=s) for s in (2, 3, 4)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 64),
    w=st.integers(1, 64),
    tile=st.integers(6, 48),
    scale=st.sampled_from([2, 3, 4]),
    seed=st.integers(0, 2**16),
)
def test_tiled_equals_whole_image(h: int, w: int, tile: int, scale: int, seed: int) -> None:
    """Holds: uint8 results identical, or off by at most 1 level where float sums reorder."""
    up = UPSCALERS[scale]
    plane = np.random.default_rng(seed).uniform(16, 235, size=(h, w)).astype(np.float32)
    whole = up.sr_plane(plane, tile=None)
    tiled = up.sr_plane(plane, tile=tile)
    assert whole.shape == tiled.shape == (h * scale, w * scale)
    diff = np.abs(colour.to_uint8(whole).astype(int) - colour.to_uint8(tiled).astype(int))
    assert diff.max() <= 1
    # In float the two differ only by summation order (~1e-4 of a level).
    assert np.abs(whole - tiled).max() < 1e-2


def test_halo_is_needed() -> None:
    """Without the halo the seams show: the equality above is not vacuous."""
    up = random_upscaler(2, seed=1)
    plane = np.random.default_rng(0).uniform(16, 235, size=(40, 40)).astype(np.float32)
    whole = up.sr_plane(plane)
    _, tiles = tiling.split(plane, "x", 10, halo=0)
    srs = up.run_windows([t.pixels for t in tiles])
    cores = [(t.y, t.x, tiling.crop_core(t, sr, 2)) for t, sr in zip(tiles, srs, strict=True)]
    seamy = tiling.stitch(cores, 40, 40, 2)
    assert np.abs(seamy - whole).max() > 1.0


def test_geometry_counts_and_shapes() -> None:
    geo, tiles = tiling.split(np.zeros((50, 33), np.float32), "img", 16, halo=8)
    assert (geo.rows, geo.cols, geo.count) == (4, 3, 12) and len(tiles) == 12
    assert {t.pixels.shape for t in tiles} == {(32, 32)}
    # every core is disjoint and together they cover the image exactly once
    cover = np.zeros((50, 33), int)
    for t in tiles:
        cover[t.y : t.y + t.h, t.x : t.x + t.w] += 1
        assert t.off_y >= 8 and t.off_x >= 8
        assert t.off_y + t.h + 8 <= 32 and t.off_x + t.w + 8 <= 32
    assert (cover == 1).all()


def test_image_smaller_than_tile_gets_one_tile() -> None:
    geo, tiles = tiling.split(np.ones((1, 1), np.float32), "dot", 64, halo=8)
    assert geo.count == 1 and tiles[0].pixels.shape == (17, 17)
    assert (tiles[0].pixels == 1).all()


def test_reflect_padding_mirrors_without_repeating_the_edge() -> None:
    plane = np.arange(4, dtype=np.float32).reshape(1, 4)
    row = tiling.reflect_pad(plane, 2)[2]
    assert row.tolist() == [2, 1, 0, 1, 2, 3, 2, 1]


def test_stitch_refuses_a_missing_tile() -> None:
    _, tiles = tiling.split(np.zeros((20, 20), np.float32), "x", 10, halo=2)
    cores = [(t.y, t.x, np.zeros((t.h * 2, t.w * 2), np.float32)) for t in tiles[:-1]]
    with pytest.raises(ValueError, match="not covered"):
        tiling.stitch(cores, 20, 20, 2)


def test_tile_records_survive_parquet(tmp_path) -> None:
    plane = np.random.default_rng(3).uniform(0, 255, size=(37, 29)).astype(np.float32)
    _, tiles = tiling.split(plane, "photo-1", 16, halo=8)
    table = pa.Table.from_pylist([t.to_record() for t in tiles])
    pq.write_table(table, tmp_path / "tiles.parquet")
    back = [tiling.Tile.from_record(r) for r in pq.read_table(tmp_path / "tiles.parquet").to_pylist()]
    assert len(back) == len(tiles)
    for a, b in zip(tiles, back, strict=True):
        assert (a.image_id, a.row, a.col, a.y, a.x, a.h, a.w, a.off_y, a.off_x, a.halo) == (
            b.image_id, b.row, b.col, b.y, b.x, b.h, b.w, b.off_y, b.off_x, b.halo)
        assert np.array_equal(a.pixels, b.pixels)


def test_decode_pixels_checks_length() -> None:
    with pytest.raises(ValueError, match="expected 3x3"):
        tiling.decode_pixels(b"\0" * 16, 3, 3)


def test_sr_pixels_are_float16_within_a_fraction_of_a_level() -> None:
    core = np.random.default_rng(3).uniform(-0.1, 1.1, size=(37, 29)).astype(np.float32)
    core[0, :3] = [np.nan, np.inf, -np.inf]
    buf = tiling.encode_sr_pixels(core)
    assert len(buf) == core.size * 2  # half of float32's bytes
    back = tiling.decode_sr_pixels(buf, 37, 29)
    assert back.dtype == np.float32
    assert np.isnan(back[0, 0]) and back[0, 1] == np.inf and back[0, 2] == -np.inf
    ok = np.isfinite(core)
    err = np.abs(back[ok] - core[ok])
    assert err.max() <= 2.0**-11  # half a float16 step on [1, 2): 0.06 of a level at most
    levels = np.abs(colour.to_uint8(back[ok] * 255).astype(int) - colour.to_uint8(core[ok] * 255).astype(int))
    assert levels.max() <= 1
    with pytest.raises(ValueError, match="expected 37x30"):
        tiling.decode_sr_pixels(buf, 37, 30)


@settings(max_examples=200, deadline=None)
@given(h=st.integers(1, 3000), w=st.integers(1, 3000), tile=st.integers(1, 512))
def test_balanced_tile_keeps_the_count_and_wastes_no_window(h: int, w: int, tile: int) -> None:
    cut = tiling.balanced_tile(h, w, tile)
    assert 1 <= cut <= tile
    geo, even = tiling.Geometry(h, w, tile, 8), tiling.Geometry(h, w, cut, 8)
    assert (even.rows, even.cols) == (geo.rows, geo.cols)  # never more tiles
    # All windows share one shape, so the pixels the network computes never grow.
    assert even.count * even.window_h * even.window_w <= geo.count * geo.window_h * geo.window_w
    # On the longer cut axis the cores tile the image with less than one pixel per tile to spare.
    assert min(k * cut - n for n, k in ((h, even.rows), (w, even.cols))) < max(even.rows, even.cols)


def test_balanced_tile_for_the_dag_default() -> None:
    assert tiling.balanced_tile(512, 512, 192) == 171
    assert tiling.balanced_tile(512, 512, 128) == 128
    assert tiling.balanced_tile(384, 512, 192) == 192  # 2 x 192 rows; 512 still needs 3 columns


def test_split_records_the_even_tile_it_cut() -> None:
    from superres import images
    from superres.pipeline.split import split_image

    png = images.encode_png(np.zeros((512, 512, 3), np.uint8))
    row = split_image("a", png, mode="upscale", scale=2, tile=192, halo=8, max_pixels=10**8)
    assert (row["status"], row["tile"], row["rows"], row["cols"], row["tiles"]) == ("ok", 171, 3, 3, 9)
