"""Training FSRCNN: data, patches, loop, validation and checkpoints in one file.

Recipe (see include/models/README.md): Y-channel LR/HR patch pairs cut from
augmented copies of the training images, the LR made by the evaluation
protocol's antialiased bicubic; random 90-degree rotations and flips; Adam with
cosine decay; L1 loss; PSNR on a validation set every ``val_every`` steps,
keeping the best weights.  With ``context`` > 0 each patch is cut with that many
LR pixels of real image around it and the loss covers only the patch itself,
so no output pixel in the loss saw the convolutions' zero padding, exactly as
at inference, where every tile carries a reflect-padded or real halo.  A run
checkpoints every ``ckpt_every`` steps and resumes from its checkpoint, so it
can stop and continue across sessions.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from superres import colour, images
from superres.engine import Upscaler, configure_threads
from superres.evaluate import evaluate_pairs, protocol_pair
from superres.model import FSRCNN, ModelMeta, ModelSpec, pick_device, read_meta, save_model
from superres.resize import resize


@dataclass
class TrainConfig:
    data: list[str]
    scale: int
    out: str
    val: list[str] = field(default_factory=list)
    d: int = 56
    s: int = 12
    m: int = 4
    steps: int = 100_000
    batch: int = 64
    patch: int = 24  # LR patch side
    context: int = 0  # LR pixels of real context around each patch, cropped from the loss
    lr: float = 1e-3
    lr_min: float = 1e-6
    loss: str = "l1"
    downscales: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6)
    init: str | None = None  # weights to fine-tune from (e.g. the x2 model for x3/x4)
    freeze_body: bool = False  # paper variant: retrain only the deconvolution
    val_every: int = 2000
    ckpt_every: int = 1000
    seed: int = 0
    threads: int = 0
    device: str = "auto"
    workdir: str = ".train"  # checkpoints (not committed)


def read_images(paths: list[Path], log: Callable[[str], None] = print) -> list[tuple[Path, np.ndarray]]:
    """(path, RGB) of every decodable image.  One that cannot be read is logged with the
    reason and skipped, so a single corrupt file does not end hours of training; none
    readable at all is an error."""
    out, skipped = [], 0
    for path in paths:
        try:
            out.append((path, images.read(path).rgb()))
        except (images.ImageError, OSError) as exc:
            skipped += 1
            log(f"skipped unreadable image {path}: {exc}")
    if skipped:
        log(f"skipped {skipped} of {len(paths)} images (see above)")
    if not out:
        raise ValueError(f"none of the {len(paths)} images could be read")
    return out


def build_pairs(
    rgbs: list[np.ndarray], scale: int, downscales: tuple[float, ...]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(LR Y, HR Y) planes on 0..255 for each RGB image and each downscaled copy."""
    pairs = []
    for rgb in rgbs:
        for f in downscales:
            hr = rgb
            if f != 1.0:
                h, w = rgb.shape[:2]
                hr = colour.to_uint8(resize(rgb.astype(np.float32), round(w * f), round(h * f)))
            lr_rgb, hr_rgb = protocol_pair(hr, scale)
            if min(lr_rgb.shape[:2]) < 8:
                continue
            pairs.append((colour.rgb_to_y(lr_rgb), colour.rgb_to_y(hr_rgb)))
    return pairs


class PatchSampler:
    """Random aligned LR/HR patches with random rotations/flips, area-weighted."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]], scale: int, patch: int, seed: int,
                 context: int = 0):
        patch += 2 * context  # the window cut from the image; the loss sees its centre only
        self.pairs = [p for p in pairs if min(p[0].shape) >= patch]
        if not self.pairs:
            raise ValueError(f"no training image is at least {patch} LR pixels on each side")
        areas = np.array([lr.size for lr, _ in self.pairs], dtype=np.float64)
        self.weights = areas / areas.sum()
        self.scale, self.patch = scale, patch
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        p, s = self.patch, self.scale
        idx = self.rng.choice(len(self.pairs), size=n, p=self.weights)
        lrs, hrs = [], []
        for i in idx:
            lr, hr = self.pairs[i]
            y = int(self.rng.integers(0, lr.shape[0] - p + 1))
            x = int(self.rng.integers(0, lr.shape[1] - p + 1))
            a = lr[y : y + p, x : x + p]
            b = hr[y * s : (y + p) * s, x * s : (x + p) * s]
            k = int(self.rng.integers(0, 4))
            a, b = np.rot90(a, k), np.rot90(b, k)
            if self.rng.integers(0, 2):
                a, b = a[:, ::-1], b[:, ::-1]
            lrs.append(a)
            hrs.append(b)
        lr_t = torch.from_numpy(np.ascontiguousarray(np.stack(lrs)) / 255.0).float().unsqueeze(1)
        hr_t = torch.from_numpy(np.ascontiguousarray(np.stack(hrs)) / 255.0).float().unsqueeze(1)
        return lr_t, hr_t


def _gather(dirs: list[str]) -> list[Path]:
    paths: list[Path] = []
    for d in dirs:
        paths.extend(images.list_images(d))
    if not paths:
        raise ValueError(f"no images found in {dirs}")
    return paths


def load_val_pairs(dirs: list[str], scale: int, log: Callable[[str], None] = print,
                   ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, LR, HR)`` RGB pairs of every readable image in ``dirs`` under the paper protocol
    (none if no dirs)."""
    if not dirs:
        return []
    return [(p.stem, *protocol_pair(rgb, scale)) for p, rgb in read_images(_gather(dirs), log)]


def validate(model: FSRCNN, val_pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> float:
    model.eval()
    report = evaluate_pairs(Upscaler(model), val_pairs, with_ssim=False)
    model.train()
    return report["mean"]["psnr"]


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) training; returns a summary. Writes ``cfg.out`` (.pt + .json)."""
    out = Path(cfg.out).with_suffix(".pt")
    ckpt_path = Path(cfg.workdir) / f"{out.stem}.ckpt"
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix(".train.jsonl")
    threads = configure_threads(cfg.threads)
    device = pick_device(cfg.device)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    spec = ModelSpec(scale=cfg.scale, d=cfg.d, s=cfg.s, m=cfg.m)
    # channels-last (NHWC), the layout oneDNN's convolution kernels want: about 20 % faster
    # steps on CPU than NCHW; saved weights are made contiguous again (save_model).
    model = FSRCNN(spec).to(device, memory_format=torch.channels_last)
    if cfg.init:
        meta = read_meta(Path(cfg.init))
        if (meta.d, meta.s, meta.m) != (spec.d, spec.s, spec.m):
            raise ValueError(f"--init {cfg.init} is {meta.spec.arch}, not {spec.arch}")
        state = torch.load(cfg.init, map_location="cpu", weights_only=True)
        model.load_state_dict(state)  # the deconv kernel has the same shape at every scale
    params = model.deconv.parameters() if cfg.freeze_body else model.parameters()
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.lr_min)
    loss_fn = nn.L1Loss() if cfg.loss == "l1" else nn.MSELoss()

    t0 = time.time()
    log(f"config {json.dumps(asdict(cfg), sort_keys=True)} threads={threads} device={device}")
    paths = _gather(cfg.data)
    rgbs = [rgb for _, rgb in read_images(paths, log)]
    sampler = PatchSampler(build_pairs(rgbs, cfg.scale, cfg.downscales), cfg.scale, cfg.patch, cfg.seed,
                           cfg.context)
    core = slice(cfg.context * cfg.scale, (cfg.context + cfg.patch) * cfg.scale)  # HR pixels in the loss
    val_pairs = load_val_pairs(cfg.val, cfg.scale, log)
    log(f"data: {len(rgbs)} images -> {len(sampler.pairs)} pairs; val {len(val_pairs)} images; "
        f"prep {time.time() - t0:.1f}s")

    step, best, elapsed = 0, -math.inf, 0.0
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        sampler.rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        step, best, elapsed = ck["step"], ck["best"], ck.get("elapsed", 0.0)
        sched.T_max = cfg.steps  # a resumed run may be lengthened or shortened
        log(f"resumed from {ckpt_path} at step {step} (best {best:.3f} dB)")

    def checkpoint() -> None:
        tmp = ckpt_path.with_suffix(".ckpt.tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "rng": sampler.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                    "step": step, "best": best, "elapsed": elapsed, "config": asdict(cfg)}, tmp)
        tmp.replace(ckpt_path)

    def save_best(psnr: float) -> None:
        meta = ModelMeta.for_spec(
            spec,
            training_data=[Path(d).name for d in cfg.data],
            validation={"set": [Path(v).name for v in cfg.val], "psnr_y": round(psnr, 4), "step": step},
            recipe={k: v for k, v in asdict(cfg).items() if k not in ("data", "val", "out")}
            | {"train_seconds": round(elapsed)},
        )
        save_model(model, out, meta)

    model.train()
    seg_start, seg_loss, seg_n = time.time(), 0.0, 0
    with log_path.open("a") as jl:
        while step < cfg.steps:
            lr_t, hr_t = sampler.batch(cfg.batch)
            sr_t = model(lr_t.to(device, memory_format=torch.channels_last))
            loss = loss_fn(sr_t[..., core, core], hr_t.to(device)[..., core, core])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            seg_loss += loss.item()
            seg_n += 1
            if step % cfg.ckpt_every == 0 or step % cfg.val_every == 0 or step == cfg.steps:
                now = time.time()
                elapsed += now - seg_start
                rate = seg_n / max(now - seg_start, 1e-9)
                rec = {"step": step, "loss": seg_loss / seg_n, "lr": sched.get_last_lr()[0],
                       "steps_per_s": round(rate, 2), "elapsed_s": round(elapsed)}
                if val_pairs and (step % cfg.val_every == 0 or step == cfg.steps):
                    psnr = validate(model, val_pairs)
                    rec["val_psnr"] = round(psnr, 4)
                    if psnr > best:
                        best = psnr
                        save_best(psnr)
                        rec["best"] = True
                elif not val_pairs and step == cfg.steps:
                    save_best(float("nan"))
                checkpoint()
                jl.write(json.dumps(rec) + "\n")
                jl.flush()
                log(json.dumps(rec))
                seg_start, seg_loss, seg_n = time.time(), 0.0, 0
    return {"steps": step, "best_val_psnr": best, "weights": str(out), "train_seconds": elapsed}
