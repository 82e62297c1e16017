"""The training recipe's parts: sources, held-out validation, rates, schedule, sub-pixel form."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from superres.cli import main
from superres.model import FSRCNN, ModelSpec, SubpixelForward
from superres.train import (
    PATCH_BY_SCALE,
    PatchSampler,
    Source,
    TrainConfig,
    lr_factor,
    make_optimizer,
    split_holdout,
    training_pairs,
)
from tests.helpers import smooth_image


def _folder(path, n: int, size: int = 48):
    path.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(smooth_image(size, size, seed=i)).save(path / f"img{i:02d}.png")
    return path


def test_a_source_spec_reads_its_options_and_refuses_bad_ones() -> None:
    assert Source.parse("/d/T91") == Source("/d/T91")
    src = Source.parse("/d/BSD200:downscales=0.8,0.6:holdout=14:weight=0.5")
    assert src == Source("/d/BSD200", weight=0.5, downscales=(0.8, 0.6), holdout=14)
    for bad in ("/d:weight=0", "/d:weight=nan", "/d:holdout=-1", "/d:downscales=1.5", "/d:colour=1",
                "/d:weight", "/d:holdout=x"):
        with pytest.raises(ValueError, match="data source"):
            Source.parse(bad)


def test_holdout_is_fixed_by_its_seed_disjoint_from_training_and_independent_of_the_run_seed(tmp_path):
    a, b = _folder(tmp_path / "a", 10), _folder(tmp_path / "b", 6)
    sources = [Source(str(a), holdout=3), Source(str(b), holdout=1)]
    sets, held = split_holdout(sources, seed=0)
    again, held_again = split_holdout(sources, seed=0)
    assert held == held_again and [p for _, p in sets] == [p for _, p in again]
    assert len(held) == 4 and [len(p) for _, p in sets] == [7, 5]
    for (_, train), folder in zip(sets, (a, b), strict=True):
        mine = {h for h in held if h.parent == folder}
        assert set(train).isdisjoint(held) and len(set(train) | mine) == len(list(folder.iterdir()))
    assert split_holdout(sources, seed=1)[1] != held  # another seed draws other images
    with pytest.raises(ValueError, match="leaves no image"):
        split_holdout([Source(str(b), holdout=6)], seed=0)


def test_per_source_downscales_and_weights_shape_the_patch_draw(tmp_path) -> None:
    a, b = _folder(tmp_path / "a", 2, 64), _folder(tmp_path / "b", 2, 64)
    pairs, weights, held = training_pairs(
        [Source(str(a)), Source(str(b), weight=3.0, downscales=(0.5,))], 2, (1.0, 0.75), seed=0)
    assert held == [] and len(pairs) == 2 * 2 + 2 * 1
    assert [lr.shape for lr, _ in pairs[4:]] == [(16, 16), (16, 16)]  # b only at half size
    assert weights == [1.0] * 4 + [3.0] * 2
    sampler = PatchSampler(pairs, 2, 8, seed=0, weights=weights)
    areas = np.array([lr.size * w for (lr, _), w in zip(pairs, weights, strict=True)])
    assert np.allclose(sampler.weights, areas / areas.sum())


def test_the_rate_holds_then_decays_once_to_the_floor() -> None:
    steps, floor = 1000, 0.01
    f = [lr_factor(s, steps, 0.8, floor) for s in range(steps + 1)]
    assert all(v == 1.0 for v in f[:801])
    assert all(x >= y for x, y in zip(f[800:], f[801:], strict=False))  # one monotone decay, no restarts
    assert math.isclose(f[-1], floor) and floor < f[900] < 1.0
    assert lr_factor(5000, steps, 0.8, floor) == pytest.approx(floor)  # past the end it stays down
    assert lr_factor(10, steps, 1.0, floor) == 1.0  # hold=1: constant throughout


def test_the_deconvolution_has_its_own_fraction_of_the_rate() -> None:
    model = FSRCNN(ModelSpec(scale=3, d=8, s=4, m=1))
    cfg = TrainConfig(data=[], scale=3, out="", lr=2e-3, deconv_lr=0.1)
    opt = make_optimizer(model, cfg)
    body, deconv = opt.param_groups
    assert body["lr"] == 2e-3 and deconv["lr"] == pytest.approx(2e-4)
    assert {id(p) for p in deconv["params"]} == {id(p) for p in model.deconv.parameters()}
    assert len(body["params"]) + len(deconv["params"]) == len(list(model.parameters()))
    frozen = make_optimizer(model, TrainConfig(data=[], scale=3, out="", freeze_body=True))
    assert len(frozen.param_groups) == 1 and len(frozen.param_groups[0]["params"]) == 2


def test_defaults_are_small_patches_batch_16_and_the_halo_as_context() -> None:
    for scale in (2, 3, 4):
        cfg = TrainConfig(data=[], scale=scale, out="")
        assert cfg.batch == 16 and cfg.patch_side == PATCH_BY_SCALE[scale]
        assert cfg.context_px == ModelSpec(scale=scale).halo
    assert TrainConfig(data=[], scale=2, out="", context=0, patch=24).context_px == 0


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_subpixel_training_form_is_the_same_function_and_gradient(scale: int) -> None:
    torch.manual_seed(scale)
    model = FSRCNN(ModelSpec(scale=scale, d=8, s=4, m=1))
    torch.nn.init.normal_(model.deconv.weight, std=0.1)
    x = torch.rand(2, 1, 13, 11)
    fast = SubpixelForward(model)
    assert torch.allclose(model(x), fast(x), atol=1e-5)
    grads = []
    for f in (model, fast):
        model.zero_grad()
        f(x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for g1, g2 in zip(*grads, strict=True):
        assert torch.allclose(g1, g2, atol=1e-6)


def test_train_validates_on_held_out_images_from_the_start_and_stops_at_its_time_limit(tmp_path) -> None:
    data = _folder(tmp_path / "data", 5, 64)
    out = tmp_path / "m" / "x2.pt"
    args = ["train", "--data", f"{data}:holdout=2", "--scale", "2", "--out", str(out),
            "--arch", "8", "4", "1", "--steps", "1000000", "--val-every", "1000000",
            "--ckpt-every", "1000000", "--time-limit", "0.5", "--workdir", str(tmp_path / "ck")]
    assert main(args) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    held = meta["validation"]["held_out"]
    assert len(held) == 2 and meta["validation"]["set"] == ["2 held-out training images"]
    assert meta["recipe"]["batch"] == 16 and meta["recipe"]["patch"] == 10 and meta["recipe"]["context"] == 5
    log = [json.loads(line) for line in out.with_suffix(".train.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 0 and "val_psnr" in log[0]
    assert 0 < log[-1]["step"] < 1000000 and "val_psnr" in log[-1]  # stopped, validated
    assert (tmp_path / "ck" / "x2.ckpt").exists()


def test_train_refuses_a_bad_source_spec_with_one_line(tmp_path, capsys) -> None:
    code = main(["train", "--data", f"{tmp_path}:weight=-1", "--scale", "2", "--out", str(tmp_path / "w.pt")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: data source") and err.count("\n") == 1
