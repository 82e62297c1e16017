"""Closed-form refit of FSRCNN's last layer for mean PSNR.

FSRCNN ends in a transposed convolution of the body's feature maps, so for a
fixed body the output is linear in the deconvolution's weights and bias
(``d * 81 + 1`` numbers).  The deconvolution that minimises the squared error
over a training set is then the solution of a least-squares problem, which
needs no learning rate and no steps: accumulate its normal equations over the
training images and solve them.

Why bother after SGD: training minimises L1 on random patches, while the score
is mean PSNR over images, i.e. the mean of ``-log(MSE)`` per image.  Weighting
each image's equations by ``1 / MSE`` of the current weights makes the
quadratic's gradient at the current weights that of mean PSNR, so one solve
takes the last layer a Newton step toward what the score asks for.  A proximal
term ``lam * ||theta - theta0||^2`` (``lam`` relative to the mean diagonal of
the normal matrix) keeps the solution near the trained weights; :func:`refit`
tries several ``lam`` and keeps the best on the validation set, including the
weights it started from, as training keeps its best checkpoint.

Features are computed as inference computes them (the LR plane reflect-padded
by the halo, :mod:`superres.engine`), so border pixels are fitted as they are
scored.  The weights keep FSRCNN's architecture and file format.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from superres.model import FSRCNN, deconv_taps, load_model, save_model
from superres.tiling import reflect_pad
from superres.weights import ModelMeta, read_meta


@dataclass(frozen=True)
class RefitConfig:
    data: list[str]  # Source specs, as for train: their held-out images choose lam
    scale: int
    init: str
    out: str
    val: list[str] = field(default_factory=list)  # extra validation folders
    holdout_seed: int = 0
    lams: tuple[float, ...] = (1e-5, 1e-4, 1e-3)
    fraction: float = 0.25  # of each image's LR pixels, drawn at random
    downscales: tuple[float, ...] = (1.0,)
    weighted: bool = True
    seed: int = 0
    threads: int = 0


@dataclass
class NormalEquations:
    """``gram @ theta = rhs`` minimises ``sum_i w_i ||X_i theta - t_i||^2``; ``tt`` = ``sum w_i t_i.t_i``."""

    gram: np.ndarray
    rhs: np.ndarray
    tt: float
    weight: float  # sum over fitted pixels of their image's weight
    rows: int  # LR locations fitted (each gives scale^2 HR pixels)

    def mse(self, theta: np.ndarray) -> float:
        """Weighted mean squared error of ``theta`` over the fitted pixels (units of [0, 1])."""
        return float(theta @ self.gram @ theta - 2 * theta @ self.rhs + self.tt) / self.weight


# --------------------------------------------------------------------------- parameters


def theta_of(model: FSRCNN) -> np.ndarray:
    """The deconvolution's weights (``d x 9 x 9``, flattened) and bias, as one float64 vector."""
    w = model.deconv.weight.detach().cpu().double().numpy()[:, 0].reshape(-1)
    return np.concatenate([w, model.deconv.bias.detach().cpu().double().numpy()])


def set_theta(model: FSRCNN, theta: np.ndarray) -> None:
    dc = model.deconv
    with torch.no_grad():
        dc.weight.copy_(torch.from_numpy(theta[:-1].reshape(dc.weight.shape)).to(dc.weight))
        dc.bias.copy_(torch.from_numpy(theta[-1:]).to(dc.bias))


def _deconv_geometry(model: FSRCNN) -> tuple[int, int, int, int]:
    """(input channels, kernel, stride, padding) of the model's last layer."""
    dc = model.deconv
    return dc.weight.shape[0], dc.weight.shape[2], dc.stride[0], dc.padding[0]


def phase_index(model: FSRCNN) -> tuple[int, dict[tuple[int, int], np.ndarray]]:
    """``(reach, {(ry, rx): idx})``: how the deconvolution acts on unfolded features.

    Output pixel ``(s*qy + ry, s*qx + rx)`` is ``bias + sum_j U[q, j] * theta[idx[j]]``
    over the ``j`` with ``idx[j] >= 0``, where ``U[q]`` is ``F.unfold(features, K)`` at
    LR location ``q`` (``K = 2*reach + 1``, channel-major) followed by a 1 for the
    bias.  This is the sub-pixel form of :func:`superres.model.subpixel_deconv`.
    """
    d, k, s, p = _deconv_geometry(model)
    taps, reach = deconv_taps(k, s, p)
    size = 2 * reach + 1
    out = {}
    for ry in range(s):
        for rx in range(s):
            idx = np.full(d * size * size + 1, -1)
            for u in range(size):
                for v in range(size):
                    jy, jx = reach - u, reach - v
                    if jy in taps[ry] and jx in taps[rx]:
                        tap = (s * jy + ry + p) * k + (s * jx + rx + p)
                        idx[np.arange(d) * size * size + u * size + v] = np.arange(d) * k * k + tap
            idx[-1] = d * k * k  # the bias
            out[(ry, rx)] = idx
    return reach, out


def phase_weights(theta: np.ndarray, index: dict[tuple[int, int], np.ndarray], scale: int) -> np.ndarray:
    """``(d*K*K + 1) x scale^2``: column ``ry*scale + rx`` maps a row of U to that phase's output."""
    cols = [index[(ry, rx)] for ry in range(scale) for rx in range(scale)]
    return np.stack([np.where(idx >= 0, theta[np.maximum(idx, 0)], 0.0) for idx in cols], axis=1)


# --------------------------------------------------------------------------- equations


def image_rows(model: FSRCNN, lr: np.ndarray, hr: np.ndarray, locations: np.ndarray | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, T) for one LR/HR Y pair (0..255): unfolded features + 1, and the s*s HR targets.

    ``U`` is ``n x (d*K*K + 1)`` and ``T`` is ``n x s*s`` (phase ``ry*s + rx``), both
    in the network's [0, 1] units, for the LR ``locations`` (flat indices; all if None).
    """
    s, halo = model.spec.scale, model.spec.halo
    _, reach = deconv_taps(*_deconv_geometry(model)[1:])
    h, w = lr.shape
    padded = reflect_pad(lr, halo) / 255.0
    with torch.inference_mode():
        feat = model.body(torch.from_numpy(padded)[None, None])
        off = halo - reach  # features this far from the padded edge are exact
        feat = feat[..., off:off + h + 2 * reach, off:off + w + 2 * reach]
        u = F.unfold(feat, 2 * reach + 1)[0]  # (d*K*K) x (h*w)
    if locations is None:
        locations = np.arange(h * w)
    loc = torch.from_numpy(np.asarray(locations, dtype=np.int64))
    u = torch.cat([u[:, loc].T, torch.ones(len(loc), 1)], dim=1)
    hr_units = torch.from_numpy(np.asarray(hr, dtype=np.float32) / 255.0)
    phases = hr_units.reshape(h, s, w, s).permute(0, 2, 1, 3).reshape(h * w, s * s)
    return u, phases[loc]


def accumulate(model: FSRCNN, pairs: Sequence[tuple[np.ndarray, np.ndarray]], fraction: float = 0.25,
               weighted: bool = True, seed: int = 0, pair_weights: Sequence[float] | None = None,
               ) -> NormalEquations:
    """Normal equations of the deconvolution over LR/HR Y pairs (HR = LR x scale, 0..255),
    each pair's equations times its ``pair_weights`` entry (its source's weight)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    model = model.eval()
    s = model.spec.scale
    _, index = phase_index(model)
    theta0 = theta_of(model)
    dim = len(next(iter(index.values())))
    a = np.zeros((dim, dim))
    c = np.zeros((dim, s * s))
    tt, total, rows = 0.0, 0.0, 0
    rng = np.random.default_rng(seed)
    w0 = torch.from_numpy(phase_weights(theta0, index, s))  # to score each image before weighting it
    for n, (lr, hr) in enumerate(pairs):
        h, w = lr.shape
        if hr.shape != (h * s, w * s):
            raise ValueError(f"HR {hr.shape} is not x{s} of LR {lr.shape}")
        keep = np.flatnonzero(rng.random(h * w) < fraction)
        if keep.size == 0:
            continue
        u, t = image_rows(model, lr, hr, keep)
        u64, t64 = u.double(), t.double()
        wi = 1.0 if pair_weights is None else float(pair_weights[n])
        if weighted:
            mse = float(torch.mean(torch.square(u64 @ w0 - t64)))
            wi /= max(mse, 1e-10)
        a += wi * (u64.T @ u64).numpy()
        c += wi * (u64.T @ t64).numpy()
        tt += wi * float(torch.sum(t64 * t64))
        total += wi * t64.numel()
        rows += keep.size
    if rows == 0:
        raise ValueError("no training pixels to fit")
    n = theta0.size
    gram, rhs = np.zeros((n, n)), np.zeros(n)
    for phase, idx in enumerate(index[(ry, rx)] for ry in range(s) for rx in range(s)):
        valid = idx >= 0
        cols = idx[valid]
        gram[np.ix_(cols, cols)] += a[np.ix_(valid, valid)]
        rhs[cols] += c[valid, phase]
    return NormalEquations(gram, rhs, tt, total, rows)


def solve(eq: NormalEquations, theta0: np.ndarray, lam: float) -> np.ndarray:
    """argmin of the fitted error + ``lam * mean(diag) * ||theta - theta0||^2``."""
    r = lam * float(np.trace(eq.gram)) / len(theta0)
    return np.linalg.solve(eq.gram + r * np.eye(len(theta0)), eq.rhs + r * theta0)


# --------------------------------------------------------------------------- command


def refit(cfg: RefitConfig, log: Callable[[str], None] = print) -> dict:
    """Refit ``cfg.init``'s deconvolution on ``cfg.data``; write the best by validation to ``cfg.out``."""
    from superres.engine import configure_threads
    from superres.train import Source, load_val_pairs, protocol_pairs, training_pairs, validate

    threads = configure_threads(cfg.threads)
    t0 = time.time()
    init = Path(cfg.init)
    meta = read_meta(init)
    model = load_model(init, cfg.scale).eval()
    log(f"config {json.dumps(asdict(cfg), sort_keys=True)} threads={threads}")
    sources = [Source.parse(d) for d in cfg.data]
    pairs, weights, held = training_pairs(sources, cfg.scale, cfg.downscales, cfg.holdout_seed, log)
    val_pairs = protocol_pairs(held, cfg.scale, log) + load_val_pairs(cfg.val, cfg.scale, log)
    eq = accumulate(model, pairs, cfg.fraction, cfg.weighted, cfg.seed, weights)
    log(f"data: {len(pairs)} pairs, {eq.rows} LR locations; equations {time.time() - t0:.1f}s")

    theta0 = theta_of(model)
    candidates: list[tuple[float | None, np.ndarray]] = [(None, theta0)]
    candidates += [(lam, solve(eq, theta0, lam)) for lam in cfg.lams]
    results = []
    for lam, theta in candidates:
        set_theta(model, theta)
        psnr = validate(model, val_pairs) if val_pairs else float("nan")
        mse = eq.mse(theta)  # a difference of large sums: can come out <= 0 when ill-conditioned
        fit = round(float(10 * np.log10(1.0 / mse)), 4) if mse > 0 else None
        results.append({"lam": lam, "val_psnr": round(psnr, 4), "fit_psnr": fit})
        log(json.dumps(results[-1]))
    if val_pairs:
        best = max(range(len(results)), key=lambda i: results[i]["val_psnr"])
    else:  # nothing to choose by: the smallest lam tried
        best = 1 + int(np.argmin(cfg.lams)) if cfg.lams else 0
    lam, theta = candidates[best]
    set_theta(model, theta)
    seconds = round(time.time() - t0)
    record = {"init": cfg.init, "data": [Path(src.path).name for src in sources],
              "sources": list(cfg.data), "held_out": [p.name for p in held], "lams": list(cfg.lams),
              "chosen_lam": lam, "fraction": cfg.fraction, "downscales": list(cfg.downscales),
              "weighted": cfg.weighted, "seed": cfg.seed, "rows": eq.rows, "seconds": seconds,
              "candidates": results}
    validation = dict(meta.validation)
    if val_pairs:
        validation |= {"set": [f"{len(held)} held-out training images"] * bool(held)
                       + [Path(v).name for v in cfg.val],
                       "held_out": [p.name for p in held], "psnr_y": results[best]["val_psnr"]}
    out_meta = ModelMeta(arch=meta.arch, d=meta.d, s=meta.s, m=meta.m, scale=meta.scale,
                         training_data=meta.training_data, validation=validation,
                         recipe=meta.recipe | {"refit": record})
    save_model(model, Path(cfg.out), out_meta)
    log(f"chose lam={lam} (val {results[best]['val_psnr']} dB, start {results[0]['val_psnr']} dB); "
        f"wrote {cfg.out} in {seconds}s")
    return {"weights": cfg.out, "chosen_lam": lam, "candidates": results, "seconds": seconds}
