"""Every inference backend gives the reference's uint8 output within 1 level.

The reference is plain PyTorch eager: the trained :class:`FSRCNN` (with its
ConvTranspose2d) run on the whole reflect-padded image in one forward.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from superres import colour, tiling
from superres.engine import BACKENDS, Upscaler, bicubic_rgb, resolve_backend, upscale_bicubic_plane
from superres.model import FSRCNN, FastFSRCNN, ModelSpec, default_weights, load_model, subpixel_deconv
from superres.pipeline.inference import infer_records, worker_upscaler
from tests.helpers import random_upscaler, smooth_image

SIZES = [(1, 1), (2, 7), (17, 5), (37, 29), (131, 97), (203, 410)]  # odd, tiny, > work_tile


def reference(up: Upscaler) -> Upscaler:
    return Upscaler(up.model, batch_size=up.batch_size, backend="eager")


def levels(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(colour.to_uint8(a).astype(int) - colour.to_uint8(b).astype(int)).max())


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("shape", [(1, 1), (4, 9), (13, 6), (32, 33)])
def test_subpixel_equals_transposed_convolution(scale: int, shape: tuple[int, int]) -> None:
    """Conv2d + pixel_shuffle reproduces ConvTranspose2d, border and output size included."""
    torch.manual_seed(scale)
    deconv = FSRCNN(ModelSpec(scale=scale)).deconv
    torch.nn.init.normal_(deconv.weight, std=0.05)
    torch.nn.init.normal_(deconv.bias, std=0.1)
    weight, bias, pad = subpixel_deconv(deconv)
    x = torch.randn(2, deconv.in_channels, *shape)
    with torch.no_grad():
        want = deconv(x)
        got = F.pixel_shuffle(F.conv2d(x, weight, bias, padding=pad), scale)
    assert got.shape == want.shape == (2, 1, shape[0] * scale, shape[1] * scale)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("dsm", [(56, 12, 4), (32, 5, 1)])
def test_fast_module_equals_fsrcnn(scale: int, dsm: tuple[int, int, int]) -> None:
    d, s, m = dsm
    torch.manual_seed(7)
    model = FSRCNN(ModelSpec(scale=scale, d=d, s=s, m=m)).eval()
    torch.nn.init.normal_(model.deconv.weight, std=0.02)
    x = torch.rand(3, 1, 23, 18)
    with torch.no_grad():
        want, got = model(x), FastFSRCNN(model)(x)
    assert got.shape == want.shape and got.is_contiguous()
    assert torch.allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_eager_whole_image(scale: int, backend: str) -> None:
    up = Upscaler(random_upscaler(scale, seed=scale).model, batch_size=8, backend=backend)
    ref = reference(up)
    for i, (h, w) in enumerate(SIZES):
        plane = np.random.default_rng(i).uniform(0, 255, size=(h, w)).astype(np.float32)
        want = ref.sr_plane(plane)  # whole image, one eager forward
        for tile in (None, 48):
            got = up.sr_plane(plane, tile=tile)
            assert got.shape == want.shape == (h * scale, w * scale)
            assert levels(got, want) <= 1, (h, w, tile)
            assert np.abs(got - want).max() < 1e-2  # float: summation order only


def test_fast_backend_with_the_shipped_weights_on_an_image() -> None:
    """Real weights, a real-looking RGB image with an odd size, the public upscale()."""
    model = load_model(default_weights(2), scale=2)
    fast, eager = Upscaler(model, backend="fast"), Upscaler(model, backend="eager")
    img = smooth_image(227, 301, seed=5)
    a, b = fast.upscale(img), eager.upscale(img)
    assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape == (454, 602, 3)
    assert int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


def test_large_batches_are_split_without_changing_results() -> None:
    up = random_upscaler(2, seed=3)
    windows = np.random.default_rng(0).uniform(0, 1, size=(5, 40, 36)).astype(np.float32)
    small = Upscaler(up.model, backend="fast", max_pixels=40 * 36 * 2)  # 2 windows per forward
    whole = Upscaler(up.model, backend="eager")
    a, b = small.forward_unit(windows), whole.forward_unit(windows)
    assert a.shape == b.shape == (5, 80, 72)
    assert np.abs(a - b).max() < 1e-4


def test_spark_inference_records_match_across_backends() -> None:
    """The Spark stage's function (tile records in, SR core records out) gives the same pixels."""
    plane = np.random.default_rng(4).uniform(0, 1, size=(61, 45)).astype(np.float32)
    _, tiles = tiling.split(plane, "img", 24, halo=8)
    records = [t.to_record() for t in tiles]
    model = random_upscaler(2, seed=9).model
    out = {b: infer_records(records, Upscaler(model, backend=b)) for b in BACKENDS}
    for fast, eager in zip(out["fast"], out["eager"], strict=True):
        assert (fast["row"], fast["col"], fast["sr_h"], fast["sr_w"]) == (
            eager["row"], eager["col"], eager["sr_h"], eager["sr_w"])
        a = tiling.decode_sr_pixels(fast["pixels"], fast["sr_h"], fast["sr_w"])
        b = tiling.decode_sr_pixels(eager["pixels"], eager["sr_h"], eager["sr_w"])
        # Stored as float16: equal to float16's rounding (one step is 2**-11 on [0.5, 1)).
        np.testing.assert_allclose(a, b, rtol=2.0**-10, atol=2.0**-14)
    assert pa.RecordBatch.from_pylist(out["fast"]).num_rows == len(tiles)


def test_sr_tile_stats_are_of_the_values_stored() -> None:
    """A value float16 cannot hold is stored as inf, and the tile says so (the quality gate reads it)."""
    plane = np.random.default_rng(5).uniform(0, 1, size=(20, 20)).astype(np.float32)
    _, tiles = tiling.split(plane, "img", 20, halo=8)
    model = random_upscaler(2, seed=1).model
    with torch.no_grad():
        model.deconv.bias.fill_(1e6)  # far beyond float16's largest finite value, 65504
    (rec,) = infer_records([t.to_record() for t in tiles], Upscaler(model, backend="eager"))
    assert rec["nonfinite"] == rec["sr_h"] * rec["sr_w"] == 40 * 40
    assert np.isnan(rec["min"]) and np.isnan(rec["max"])
    assert np.isinf(tiling.decode_sr_pixels(rec["pixels"], 40, 40)).all()


def test_worker_upscaler_takes_the_backend() -> None:
    import io
    from dataclasses import asdict

    from superres.model import ModelMeta

    model = FSRCNN(ModelSpec(scale=2))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    meta = asdict(ModelMeta.for_spec(model.spec))
    assert worker_upscaler(buf.getvalue(), meta, "cpu", 4, 1, backend="eager").backend == "eager"
    assert worker_upscaler(buf.getvalue(), meta, "cpu", 4, 1).backend == "fast"


def test_backend_selection_and_fallback(monkeypatch) -> None:
    monkeypatch.delenv("SUPERRES_BACKEND", raising=False)
    assert resolve_backend() == resolve_backend("auto") == "fast"
    assert resolve_backend("eager") == "eager"  # plain PyTorch, always available
    monkeypatch.setenv("SUPERRES_BACKEND", "eager")
    assert resolve_backend() == "eager"
    up = Upscaler(FSRCNN(ModelSpec(scale=2)).eval())
    assert up.backend == "eager" and up._net is up.model
    with pytest.raises(ValueError, match="unknown inference backend"):
        resolve_backend("tensorrt")


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_rgb_is_each_channel_upscaled_on_its_own(scale: int) -> None:
    rgb = np.random.default_rng(scale).integers(0, 256, (23, 31, 3), dtype=np.uint8)
    out = bicubic_rgb(rgb, scale)
    assert out.dtype == np.uint8 and out.shape == (23 * scale, 31 * scale, 3)
    for c in range(3):
        assert np.array_equal(out[..., c], upscale_bicubic_plane(rgb[..., c], scale))
