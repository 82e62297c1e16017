"""The closed-form deconvolution refit: its algebra, its solve, and the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from superres.cli import main
from superres.engine import Upscaler
from superres.evaluate import evaluate_pairs, protocol_pair
from superres.model import ModelMeta, load_model, save_model
from superres.refit import accumulate, image_rows, phase_index, phase_weights, set_theta, solve, theta_of
from tests.helpers import random_upscaler, smooth_image


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_unfolded_features_times_the_deconvolution_is_the_whole_image_sr(scale: int) -> None:
    """U @ theta per phase reproduces inference's output, borders (reflect halo) included."""
    up = random_upscaler(scale, seed=scale)
    lr = smooth_image(13, 17, seed=1, channels=1).astype(np.float32)
    sr = up.sr_plane(lr) / 255.0  # eager reference path: reflect-pad by the halo, run, crop
    u, _ = image_rows(up.model, lr, np.zeros((13 * scale, 17 * scale)))
    theta = theta_of(up.model)
    _, index = phase_index(up.model)
    pred = u.double().numpy() @ phase_weights(theta, index, scale)
    for ry in range(scale):
        for rx in range(scale):
            got = pred[:, ry * scale + rx].reshape(13, 17)
            np.testing.assert_allclose(got, sr[ry::scale, rx::scale], atol=2e-5)
    # every weight and the bias is used by some phase, none twice within one phase
    used = np.concatenate([idx[idx >= 0] for idx in index.values()])
    assert set(used) == set(range(theta.size))
    assert all(len(set(idx[idx >= 0])) == (idx >= 0).sum() for idx in index.values())


def test_targets_are_split_by_phase() -> None:
    up = random_upscaler(3, seed=0)
    lr = np.zeros((4, 5), np.float32)
    hr = np.arange(12 * 15, dtype=np.float32).reshape(12, 15)
    _, t = image_rows(up.model, lr, hr, np.array([0, 7]))  # (0, 0) and (1, 2)
    assert t.shape == (2, 9)
    np.testing.assert_allclose(t[0].numpy() * 255, hr[0:3, 0:3].reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(t[1].numpy() * 255, hr[3:6, 6:9].reshape(-1), rtol=1e-6)


@pytest.mark.parametrize(("scale", "weighted"), [(2, True), (4, True), (4, False)])
def test_solve_recovers_a_deconvolution_that_made_the_targets(scale: int, weighted: bool) -> None:
    """Targets from a teacher deconvolution on the same body: the refit finds its outputs."""
    up = random_upscaler(scale, seed=11)
    teacher = theta_of(up.model)
    lrs = [smooth_image(40, 44, seed=i, channels=1).astype(np.float32) for i in range(4)]
    pairs = [(lr, up.sr_plane(lr)) for lr in lrs]  # unrounded SR as the HR target
    start = teacher + np.random.default_rng(0).normal(0, 0.02, teacher.size)
    set_theta(up.model, start)
    eq = accumulate(up.model, pairs, fraction=1.0, weighted=weighted)
    assert eq.rows == 4 * 40 * 44
    assert (eq.weight == eq.rows * scale**2) != weighted  # 1/MSE weights, or one per pixel
    assert eq.mse(start) > 1e-4
    theta = solve(eq, start, lam=1e-12)
    assert eq.mse(theta) < 1e-9
    held_out = smooth_image(21, 19, seed=99, channels=1).astype(np.float32)
    set_theta(up.model, theta)
    got = up.sr_plane(held_out)
    set_theta(up.model, teacher)
    np.testing.assert_allclose(got, up.sr_plane(held_out), atol=0.02)  # 0..255 units


def test_a_large_proximal_weight_stays_at_the_start() -> None:
    up = random_upscaler(4, seed=3)
    lr = smooth_image(24, 24, seed=2, channels=1).astype(np.float32)
    eq = accumulate(up.model, [(lr, np.clip(up.sr_plane(lr) + 5, 0, 255))], fraction=1.0)
    start = theta_of(up.model)
    far = solve(eq, start, lam=1e6)
    near = solve(eq, start, lam=1e-9)
    assert eq.mse(near) < 0.5 * eq.mse(start)  # the +5 offset is fitted
    assert np.abs(far - start).max() < 1e-3 * np.abs(near - start).max()


def test_bad_arguments_are_refused() -> None:
    up = random_upscaler(2)
    lr = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="fraction"):
        accumulate(up.model, [(lr, np.zeros((16, 16)))], fraction=0.0)
    with pytest.raises(ValueError, match="not x2"):
        accumulate(up.model, [(lr, np.zeros((15, 16)))], fraction=1.0)


def _write_images(folder, n: int, size: int, seed: int) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(smooth_image(size, size + 8, seed=seed + i)).save(folder / f"{i}.png")


def test_refit_command_writes_the_best_weights_by_validation(tmp_path, capsys) -> None:
    up = random_upscaler(4, seed=7)
    init = tmp_path / "init" / "x4.pt"
    save_model(up.model, init, ModelMeta.for_spec(up.model.spec, training_data=["gen"],
                                                  recipe={"loss": "l1", "steps": 1}))
    _write_images(tmp_path / "train", 3, 96, seed=0)
    _write_images(tmp_path / "val", 2, 64, seed=50)
    out = tmp_path / "out" / "x4.pt"
    code = main(["refit", "--data", str(tmp_path / "train"), "--scale", "4", "--init", str(init),
                 "--out", str(out), "--val", str(tmp_path / "val"), "--lam", "1e-6", "1e-2",
                 "--fraction", "0.5", "--threads", "1"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    meta = json.loads(out.with_suffix(".json").read_text())
    refit = meta["recipe"]["refit"]
    assert meta["recipe"]["loss"] == "l1" and meta["training_data"] == ["gen"]  # the body's history kept
    assert [c["lam"] for c in refit["candidates"]] == [None, 1e-6, 1e-2]
    assert refit["init"] == str(init) and refit["data"] == ["train"] and refit["fraction"] == 0.5
    best = max(refit["candidates"], key=lambda c: c["val_psnr"])
    assert refit["chosen_lam"] == best["lam"] == summary["chosen_lam"]
    assert meta["validation"]["psnr_y"] == best["val_psnr"] and meta["validation"]["set"] == ["val"]
    # a random deconvolution is far from the least-squares one: the refit must win clearly
    assert best["lam"] is not None and best["val_psnr"] > refit["candidates"][0]["val_psnr"] + 1.0
    # what was written scores what the metadata says, and only the deconvolution changed
    model = load_model(out, 4)
    pairs = [(p.stem, *protocol_pair(np.asarray(Image.open(p).convert("RGB")), 4))
             for p in sorted((tmp_path / "val").iterdir())]
    psnr = evaluate_pairs(Upscaler(model), pairs, with_ssim=False)["mean"]["psnr"]
    assert psnr == pytest.approx(best["val_psnr"], abs=1e-3)
    for name, tensor in model.state_dict().items():
        if not name.startswith("deconv."):
            assert torch.equal(tensor, up.model.state_dict()[name]), name


def test_refit_without_validation_takes_the_smallest_lam(tmp_path, capsys) -> None:
    up = random_upscaler(4, seed=8)
    init = tmp_path / "x4.pt"
    save_model(up.model, init, ModelMeta.for_spec(up.model.spec, validation={"psnr_y": 1.0, "step": 3}))
    _write_images(tmp_path / "train", 2, 64, seed=0)
    out = tmp_path / "out.pt"
    assert main(["refit", "--data", str(tmp_path / "train"), "--scale", "4", "--init", str(init),
                 "--out", str(out), "--lam", "1e-2", "1e-7", "--threads", "1"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["recipe"]["refit"]["chosen_lam"] == 1e-7
    assert meta["validation"] == {"psnr_y": 1.0, "step": 3}  # nothing new to claim
    assert "chose lam=1e-07" in capsys.readouterr().out
