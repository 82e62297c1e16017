"""Training FSRCNN: data, patches, loop, validation and checkpoints in one file.

The recipe (include/models/README.md gives the commands): Y-channel LR/HR patch
pairs cut from augmented copies of the training images, the LR made by the
evaluation protocol's antialiased bicubic; random 90-degree rotations and flips;
many small steps (batch 16 of small patches) with Adam, the deconvolution at a
tenth of the body's learning rate as in the paper; the rate held constant, then
decayed once to ``lr_min``; L1 loss.  Each data source says how much it is
sampled, at which downscales, and how many of its images it holds out: those
held-out images, never trained on, are the validation set that picks the best
checkpoint, so the reported test sets (Set5, Set14) play no part in any choice.
With ``context`` > 0 each patch is cut with that many LR pixels of real image
around it and the loss covers only the patch itself, as at inference, where
every tile carries a halo.  A run checkpoints every ``ckpt_every`` steps and
resumes from its checkpoint, so it can stop and continue across sessions.
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
from superres.model import (
    FSRCNN,
    ModelMeta,
    ModelSpec,
    SubpixelForward,
    pick_device,
    read_meta,
    save_model,
)
from superres.resize import resize

# Paper-style LR patch sides per scale (yjn870/FSRCNN-pytorch's 20 / 21 / 24 HR pixels).
PATCH_BY_SCALE = {2: 10, 3: 7, 4: 6}


@dataclass(frozen=True)
class Source:
    """One training folder and how it is used: ``DIR[:weight=W][:downscales=a,b][:holdout=N]``.

    ``weight`` multiplies the source's share of patches (by default proportional to its
    pixels); ``downscales`` replaces the run's augmentation factors for it (e.g. only
    downscaled copies of JPEG-born images, whose blocking the downscale averages out);
    ``holdout`` images, drawn with a fixed seed, are left out of training and validate it.
    """

    path: str
    weight: float = 1.0
    downscales: tuple[float, ...] | None = None
    holdout: int = 0

    @classmethod
    def parse(cls, text: str) -> Source:
        path, *opts = text.split(":")
        kw: dict = {}
        for opt in opts:
            key, sep, value = opt.partition("=")
            try:
                if not sep:
                    raise ValueError("expected key=value")
                if key == "weight":
                    kw["weight"] = float(value)
                elif key == "downscales":
                    kw["downscales"] = tuple(float(v) for v in value.split(","))
                elif key == "holdout":
                    kw["holdout"] = int(value)
                else:
                    raise ValueError("known keys: weight, downscales, holdout")
            except ValueError as exc:
                raise ValueError(f"bad data source option {opt!r} in {text!r}: {exc}") from None
        src = cls(path, **kw)
        if not (src.weight > 0 and math.isfinite(src.weight)) or src.holdout < 0:
            raise ValueError(f"data source {text!r}: weight must be > 0 and holdout >= 0")
        if src.downscales is not None and not all(0 < f <= 1 for f in src.downscales):
            raise ValueError(f"data source {text!r}: downscales must be in (0, 1]")
        return src


@dataclass
class TrainConfig:
    data: list[str]  # Source specs
    scale: int
    out: str
    val: list[str] = field(default_factory=list)  # extra validation folders (never the test sets)
    d: int = 56
    s: int = 12
    m: int = 4
    steps: int = 1_000_000
    batch: int = 16
    patch: int = 0  # LR patch side the loss covers; 0: PATCH_BY_SCALE
    context: int | None = None  # LR pixels of real image around each patch, outside the loss
    lr: float = 1e-3
    lr_min: float = 1e-5
    deconv_lr: float = 0.1  # the deconvolution's rate as a multiple of lr (paper: 0.1)
    hold: float = 0.8  # share of the steps at the constant rate before the one decay
    loss: str = "l1"
    downscales: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6)
    holdout_seed: int = 0  # fixes the held-out images, independent of the training seed
    subpixel: bool = True  # run the deconvolution as Conv2d + PixelShuffle (same function)
    init: str | None = None  # weights to fine-tune from (e.g. the x2 model for x3/x4)
    freeze_body: bool = False  # paper variant: retrain only the deconvolution
    val_every: int = 5000
    ckpt_every: int = 5000
    time_limit_s: float = 0.0  # stop (validated and checkpointed) after this much wall time; 0: none
    seed: int = 0
    threads: int = 0
    device: str = "auto"
    workdir: str = ".train"  # checkpoints (resume reads them)

    @property
    def patch_side(self) -> int:
        return self.patch or PATCH_BY_SCALE[self.scale]

    @property
    def context_px(self) -> int:
        """The context: by default the model's halo, so no pixel in the loss sees the
        convolutions' zero padding, as at inference, where every tile carries a halo."""
        return ModelSpec(scale=self.scale, d=self.d, s=self.s, m=self.m).halo if self.context is None \
            else self.context

    @property
    def sources(self) -> list[Source]:
        return [Source.parse(d) for d in self.data]


def lr_factor(step: int, steps: int, hold: float, floor: float) -> float:
    """The rate at ``step`` as a multiple of the base: 1 for the first ``hold`` share of
    the steps, then one cosine decay to ``floor``; no restarts, and a function of the
    step alone, so a resumed or lengthened run needs no scheduler state."""
    start = hold * steps
    if step <= start or steps <= start:
        return 1.0
    t = min(1.0, (step - start) / (steps - start))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


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


def split_holdout(sources: list[Source], seed: int) -> tuple[list[tuple[Source, list[Path]]], list[Path]]:
    """Each source's training images, and the held-out validation images of all sources.

    The draw depends on the folder's sorted file names and ``seed`` only, so every run and
    ``refit`` with the same sources validates on the same images."""
    train_sets, held = [], []
    for src in sources:
        paths = images.list_images(src.path)
        if not paths:
            raise ValueError(f"no images found in {src.path}")
        if src.holdout >= len(paths):
            raise ValueError(f"{src.path}: holdout={src.holdout} leaves no image of {len(paths)} to train on")
        pick = set(np.random.default_rng(seed).choice(len(paths), size=src.holdout, replace=False).tolist())
        held += [p for i, p in enumerate(paths) if i in pick]
        train_sets.append((src, [p for i, p in enumerate(paths) if i not in pick]))
    return train_sets, held


def training_pairs(sources: list[Source], scale: int, downscales: tuple[float, ...], seed: int,
                   log: Callable[[str], None] = print,
                   ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[float], list[Path]]:
    """(pairs, per-pair sampling weight, held-out paths) for a list of sources."""
    train_sets, held = split_holdout(sources, seed)
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    weights: list[float] = []
    n_images = 0
    for src, paths in train_sets:
        rgbs = [rgb for _, rgb in read_images(paths, log)]
        got = build_pairs(rgbs, scale, src.downscales or downscales)
        n_images += len(rgbs)
        pairs += got
        weights += [src.weight] * len(got)
    log(f"data: {n_images} images -> {len(pairs)} pairs from {len(sources)} sources; "
        f"held out {len(held)} images ({', '.join(p.stem for p in held) or 'none'})")
    return pairs, weights, held


class PatchSampler:
    """Random aligned LR/HR patches with random rotations/flips, area-weighted (times
    each pair's source weight)."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]], scale: int, patch: int, seed: int,
                 context: int = 0, weights: list[float] | None = None):
        patch += 2 * context  # the window cut from the image; the loss sees its centre only
        weights = weights or [1.0] * len(pairs)
        keep = [i for i, p in enumerate(pairs) if min(p[0].shape) >= patch]
        self.pairs = [pairs[i] for i in keep]
        if not self.pairs:
            raise ValueError(f"no training image is at least {patch} LR pixels on each side")
        areas = np.array([pairs[i][0].size * weights[i] for i in keep], dtype=np.float64)
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


def protocol_pairs(paths: list[Path], scale: int, log: Callable[[str], None] = print,
                   ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, LR, HR)`` RGB pairs of every readable image under the paper protocol."""
    return [(p.stem, *protocol_pair(rgb, scale)) for p, rgb in read_images(paths, log)] if paths else []


def load_val_pairs(dirs: list[str], scale: int, log: Callable[[str], None] = print,
                   ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, LR, HR)`` RGB pairs of every readable image in ``dirs`` (none if no dirs)."""
    return protocol_pairs(_gather(dirs), scale, log) if dirs else []


def validate(model: FSRCNN, val_pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> float:
    model.eval()
    report = evaluate_pairs(Upscaler(model), val_pairs, with_ssim=False)
    model.train()
    return report["mean"]["psnr"]


def make_optimizer(model: FSRCNN, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam with two parameter groups: the body at ``lr``, the deconvolution at
    ``deconv_lr * lr`` (its weights are an order of magnitude smaller than the body's,
    so one shared rate moves it far more relative to its size)."""
    deconv = list(model.deconv.parameters())
    if cfg.freeze_body:
        return torch.optim.Adam([{"params": deconv, "lr": cfg.lr * cfg.deconv_lr}])
    ids = {id(p) for p in deconv}
    body = [p for p in model.parameters() if id(p) not in ids]
    return torch.optim.Adam([{"params": body, "lr": cfg.lr},
                             {"params": deconv, "lr": cfg.lr * cfg.deconv_lr}])


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
    opt = make_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in opt.param_groups]
    forward = SubpixelForward(model) if cfg.subpixel else model
    loss_fn = nn.L1Loss() if cfg.loss == "l1" else nn.MSELoss()

    t0 = time.time()
    log(f"config {json.dumps(asdict(cfg), sort_keys=True)} threads={threads} device={device}")
    pairs, weights, held = training_pairs(cfg.sources, cfg.scale, cfg.downscales, cfg.holdout_seed, log)
    patch, context = cfg.patch_side, cfg.context_px
    sampler = PatchSampler(pairs, cfg.scale, patch, cfg.seed, context, weights)
    core = slice(context * cfg.scale, (context + patch) * cfg.scale)  # HR pixels in the loss
    val_pairs = protocol_pairs(held, cfg.scale, log) + load_val_pairs(cfg.val, cfg.scale, log)
    log(f"validation: {len(val_pairs)} images; prep {time.time() - t0:.1f}s")

    def set_rate() -> float:
        f = lr_factor(step, cfg.steps, cfg.hold, cfg.lr_min / cfg.lr)
        for g, base in zip(opt.param_groups, base_lrs, strict=True):
            g["lr"] = base * f
        return base_lrs[0] * f

    def checkpoint() -> None:
        tmp = ckpt_path.with_suffix(".ckpt.tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                    "rng": sampler.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                    "step": step, "best": best, "elapsed": elapsed, "config": asdict(cfg)}, tmp)
        tmp.replace(ckpt_path)

    def save_best(psnr: float) -> None:
        meta = ModelMeta.for_spec(
            spec,
            training_data=[Path(src.path).name for src in cfg.sources],
            validation={"set": [f"{len(held)} held-out training images"] * bool(held)
                        + [Path(v).name for v in cfg.val],
                        "held_out": [p.name for p in held], "psnr_y": round(psnr, 4), "step": step},
            recipe={k: v for k, v in asdict(cfg).items() if k not in ("val", "out", "workdir")}
            | {"patch": patch, "context": context, "train_seconds": round(elapsed)},
        )
        save_model(model, out, meta)

    step, best, elapsed = 0, -math.inf, 0.0
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sampler.rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        step, best, elapsed = ck["step"], ck["best"], ck.get("elapsed", 0.0)
        log(f"resumed from {ckpt_path} at step {step} (best {best:.3f} dB)")
    elif val_pairs:  # the curve starts at the weights the run starts from, and never ends below them
        best = validate(model, val_pairs)
        save_best(best)
        rec0 = json.dumps({"step": 0, "val_psnr": round(best, 4), "best": True})
        with log_path.open("a") as jl:
            jl.write(rec0 + "\n")
        log(rec0)

    model.train()
    seg_start, seg_loss, seg_n = time.time(), 0.0, 0
    deadline = seg_start + cfg.time_limit_s if cfg.time_limit_s > 0 else math.inf
    with log_path.open("a") as jl:
        while step < cfg.steps:
            rate = set_rate()
            lr_t, hr_t = sampler.batch(cfg.batch)
            sr_t = forward(lr_t.to(device, memory_format=torch.channels_last))
            loss = loss_fn(sr_t[..., core, core], hr_t.to(device)[..., core, core])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seg_loss += loss.item()
            seg_n += 1
            last = step == cfg.steps or time.time() >= deadline
            if step % cfg.ckpt_every == 0 or step % cfg.val_every == 0 or last:
                now = time.time()
                elapsed += now - seg_start
                speed = seg_n / max(now - seg_start, 1e-9)
                rec = {"step": step, "loss": seg_loss / seg_n, "lr": rate,
                       "steps_per_s": round(speed, 2), "elapsed_s": round(elapsed)}
                if val_pairs and (step % cfg.val_every == 0 or last):
                    psnr = validate(model, val_pairs)
                    rec["val_psnr"] = round(psnr, 4)
                    if psnr > best:
                        best = psnr
                        save_best(psnr)
                        rec["best"] = True
                elif not val_pairs and last:
                    save_best(float("nan"))
                checkpoint()
                jl.write(json.dumps(rec) + "\n")
                jl.flush()
                log(json.dumps(rec))
                seg_start, seg_loss, seg_n = time.time(), 0.0, 0
                if last:
                    break
    return {"steps": step, "best_val_psnr": best, "weights": str(out), "train_seconds": elapsed}
