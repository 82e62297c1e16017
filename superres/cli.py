"""``python -m superres``: upscale, evaluate and train without Airflow.

Bad input files are reported by name, the rest are still processed, and the
exit status is non-zero if any input failed.  Every failure is an ``error:``
line on stderr, never a traceback: bad numbers are refused by the argument
parser (exit 2), paths that cannot work (an ``--out`` that is a file, a missing
folder to evaluate, a ``--json`` that cannot be written) before any work (exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from itertools import chain, count
from pathlib import Path

from superres import images
from superres.model import SCALES, DeviceError, WeightsError


def _error(message: object) -> None:
    """One ``error:`` line on stderr, whatever line breaks the message holds."""
    print("error: " + " ".join(str(message).splitlines()), file=sys.stderr)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _bounded(parse, minimum: float, what: str):
    """An argparse type: ``parse(text)``, refused (exit 2 with the usage) below ``minimum`` or infinite."""
    def check(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not minimum <= value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text if parse is float else value}")
        return value
    return check


positive_int = _bounded(int, 1, "a positive integer")
_non_negative = _bounded(int, 0, "an integer >= 0")
_ratio = _bounded(float, 1.0, "a finite number >= 1")


def _progress(i: int, n: int, name: str, t0: float) -> None:
    print(f"[{i}/{n}] {name} ({time.time() - t0:.1f}s)", file=sys.stderr, flush=True)


def _expand(inputs: Sequence[str]) -> list[Path]:
    """The input files, folders expanded, each file once (the first mention of it)."""
    paths: dict[Path, Path] = {}
    for item in inputs:
        p = Path(item)
        for path in images.list_images(p) if p.is_dir() else [p]:
            paths.setdefault(path.resolve(), path)
    return list(paths.values())


def unique_names(paths: Sequence[Path], taken: Sequence[str] = ()) -> list[str]:
    """One name per path, never two alike (ignoring case) nor one in ``taken``.

    Each path gets its stem if it is free, else its whole file name (``x.jpg`` after
    an ``x.png``), else the file name and a counter (``x.jpg.2``): the inputs alone
    decide the names, in their order.
    """
    used = {t.casefold() for t in taken}
    names = []
    for p in paths:
        candidates = chain([p.stem, p.name], (f"{p.name}.{k}" for k in count(2)))
        name = next(c for c in candidates if c.casefold() not in used)
        used.add(name.casefold())
        names.append(name)
    return names


def output_names(paths: Sequence[Path], out: Path) -> list[str]:
    """The PNG each input is written to in ``out``: ``<stem>.png``, unless an earlier input
    took it (then ``<name>.png``, e.g. ``x.jpg.png``, see :func:`unique_names`).  An input
    that lies in ``out`` itself is never overwritten."""
    here = out.resolve()
    inside = [p.name[: -len(".png")] for p in paths
              if p.parent.resolve() == here and p.name.lower().endswith(".png")]
    return [f"{name}.png" for name in unique_names(paths, inside)]


def cmd_upscale(args: argparse.Namespace) -> int:
    from superres.engine import Upscaler, configure_threads

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        _error(f"--out {out} exists and is not a folder")
        return 2
    try:
        paths = _expand(args.inputs)
    except OSError as exc:
        _error(f"cannot list {exc.filename}: {_reason(exc)}")
        return 2
    if not paths:
        _error(f"no images in {' '.join(args.inputs)}")
        return 1
    configure_threads(args.threads)
    upscaler = Upscaler.load(args.scale, args.model, device=args.device)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _error(f"--out {out}: cannot create the folder ({_reason(exc)})")
        return 2
    names, failed, t0 = output_names(paths, out), 0, time.time()
    for i, (path, name) in enumerate(zip(paths, names, strict=True), 1):
        try:
            dec = images.read(path, max_pixels=args.max_pixels, max_aspect_ratio=args.max_aspect_ratio)
            sr = upscaler.upscale(dec.pixels, tile=args.tile)
            (out / name).write_bytes(images.encode_png(sr))
            _progress(i, len(paths), f"{path.name} {dec.width}x{dec.height} -> "
                      f"{name} {sr.shape[1]}x{sr.shape[0]}", t0)
        except (ValueError, OSError) as exc:
            failed += 1
            _error(f"{path}: {exc}")
    print(f"upscaled {len(paths) - failed}/{len(paths)} images x{args.scale} into {out}")
    return 1 if failed else 0


def _cell(value: float | None, width: int, digits: int, missing: str) -> str:
    return f"{missing:>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def format_table(report: dict) -> str:
    """The report of :func:`superres.evaluate.json_report` as a table: an exact match's
    PSNR shows as ``exact``, a mean of no finite values as ``-``."""
    lines = [f"{'image':<16} {'PSNR':>8} {'SSIM':>7} {'bic PSNR':>9} {'bic SSIM':>9}"]
    rows = [(r, "exact") for r in report["images"]] + [({"name": "MEAN", **report["mean"]}, "-")]
    for row, missing in rows:
        lines.append(
            f"{row['name']:<16} {_cell(row.get('psnr'), 8, 3, missing)} "
            f"{_cell(row.get('ssim', float('nan')), 7, 4, '-')} "
            f"{_cell(row.get('psnr_bicubic'), 9, 3, missing)} "
            f"{_cell(row.get('ssim_bicubic', float('nan')), 9, 4, '-')}"
        )
    identical = report.get("identical") or {}
    if any(identical.values()):
        lines.append("exact matches (PSNR infinite, left out of the mean): "
                     + ", ".join(f"{k} {n}" for k, n in identical.items()))
    return "\n".join(lines)


def _json_target(path: Path) -> str | None:
    """Why the ``--json`` report could not be written at ``path`` (its folder is made), or None."""
    if path.is_dir():
        return f"--json {path} is a folder, not a file"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"--json {path}: cannot create its folder {path.parent} ({_reason(exc)})"
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"--json {path} is not writable"
    return None


def cmd_evaluate(args: argparse.Namespace) -> int:
    from superres.engine import Upscaler, configure_threads
    from superres.evaluate import evaluate_pairs, json_report, protocol_pair

    hr_dir = Path(args.hr_dir)
    if not hr_dir.is_dir():
        _error(f"{hr_dir} is not a folder" if hr_dir.exists() else f"folder {hr_dir} does not exist")
        return 2
    report_path = Path(args.json) if args.json else None
    why = _json_target(report_path) if report_path is not None else None
    if why:
        _error(why)
        return 2
    try:
        paths = images.list_images(hr_dir)
    except OSError as exc:
        _error(f"cannot list {hr_dir}: {_reason(exc)}")
        return 2
    configure_threads(args.threads)
    upscaler = Upscaler.load(args.scale, args.model, device=args.device)
    failed: list[str] = []
    scoring: list[Path] = []  # the image evaluate_pairs is scoring (it scores each as it is yielded)
    t0 = time.time()

    def pairs():
        for i, (path, name) in enumerate(zip(paths, unique_names(paths), strict=True), 1):
            try:
                lr, hr = protocol_pair(images.read(path).rgb(), args.scale)
            except (ValueError, OSError) as exc:
                failed.append(path.name)
                _error(f"{path}: {exc}")
                continue
            _progress(i, len(paths), path.name, t0)
            scoring[:] = [path]
            yield name, lr, hr

    def score_failed(_name: str, exc: ValueError) -> None:
        failed.append(scoring[0].name)
        _error(f"{scoring[0]}: cannot be scored at x{args.scale}: {exc}")

    report = json_report(evaluate_pairs(upscaler, pairs(), tile=args.tile, on_error=score_failed))
    report["failed"] = failed
    print(f"x{args.scale} on {hr_dir} ({len(report['images'])} images, Y channel, shave {args.scale})")
    if report["images"]:
        print(format_table(report))
    elif not paths:
        _error(f"no images in {hr_dir}")
    code = 1 if failed or not report["images"] else 0
    if report_path is not None:
        try:
            report_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        except OSError as exc:
            _error(f"--json {report_path}: cannot write the report ({_reason(exc)})")
            code = 1
    return code


def cmd_train(args: argparse.Namespace) -> int:
    from superres.train import Source, TrainConfig, train

    try:
        for spec in args.data:
            Source.parse(spec)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = TrainConfig(
        data=args.data, scale=args.scale, out=args.out, val=args.val or [], steps=args.steps,
        batch=args.batch, patch=args.patch, context=args.context, lr=args.lr, lr_min=args.lr_min,
        deconv_lr=args.deconv_lr, hold=args.hold, loss=args.loss, downscales=tuple(args.downscales),
        holdout_seed=args.holdout_seed, subpixel=not args.no_subpixel, init=args.init,
        freeze_body=args.freeze_body, val_every=args.val_every, ckpt_every=args.ckpt_every,
        time_limit_s=args.time_limit, seed=args.seed, threads=args.threads, device=args.device,
        workdir=args.workdir, d=args.arch[0], s=args.arch[1], m=args.arch[2],
    )
    summary = train(cfg, log=lambda msg: print(msg, flush=True))
    print(json.dumps(summary))
    return 0


def cmd_refit(args: argparse.Namespace) -> int:
    from superres.refit import RefitConfig, refit

    cfg = RefitConfig(
        data=args.data, scale=args.scale, init=args.init, out=args.out, val=args.val or [],
        holdout_seed=args.holdout_seed, lams=tuple(args.lam), fraction=args.fraction,
        downscales=tuple(args.downscales),
        weighted=not args.unweighted, seed=args.seed, threads=args.threads,
    )
    summary = refit(cfg, log=lambda msg: print(msg, flush=True))
    print(json.dumps(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m superres", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, count_type=int) -> None:
        sp.add_argument("--scale", type=int, choices=SCALES, required=True)
        sp.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
        sp.add_argument("--threads", type=count_type, default=0, help="torch threads (0: all cores)")

    up = sub.add_parser("upscale", help="super-resolve images into PNGs")
    up.add_argument("inputs", nargs="+", help="image files or folders")
    common(up, _non_negative)
    up.add_argument("--out", required=True,
                    help="folder for the PNGs: <stem>.png, or <name>.png for a later input of the same stem")
    up.add_argument("--tile", type=positive_int, default=None, help="LR tile size in pixels")
    up.add_argument("--model", default=None, help="weights .pt (default: include/models)")
    up.add_argument("--max-pixels", type=positive_int, default=images.DEFAULT_MAX_PIXELS)
    up.add_argument("--max-aspect-ratio", type=_ratio, default=images.DEFAULT_MAX_ASPECT_RATIO,
                    help="refuse images whose longest side exceeds this many times the shortest")
    up.set_defaults(func=cmd_upscale)

    ev = sub.add_parser("evaluate", help="PSNR/SSIM of SR and bicubic under the paper protocol")
    ev.add_argument("hr_dir")
    common(ev, _non_negative)
    ev.add_argument("--json", default=None, help="report file (its folder is created)")
    ev.add_argument("--tile", type=positive_int, default=None)
    ev.add_argument("--model", default=None)
    ev.set_defaults(func=cmd_evaluate)

    tr = sub.add_parser("train", help="train FSRCNN weights")
    tr.add_argument("--data", nargs="+", required=True, metavar="DIR[:key=value...]",
                    help="training folders, each optionally with :weight=W (share of patches, times its "
                         "pixels), :downscales=a,b (its augmentation) and :holdout=N (images kept out "
                         "of training to validate it)")
    common(tr)
    tr.add_argument("--out", required=True, help="weights path, e.g. include/models/fsrcnn_x2.pt")
    tr.add_argument("--val", nargs="*", default=None,
                    help="extra validation folders (keep the reported test sets out of them)")
    tr.add_argument("--arch", type=int, nargs=3, default=(56, 12, 4), metavar=("D", "S", "M"))
    tr.add_argument("--steps", type=int, default=1_000_000)
    tr.add_argument("--batch", type=int, default=16)
    tr.add_argument("--patch", type=int, default=0,
                    help="LR patch side the loss covers (0: 10 / 7 / 6 at x2 / x3 / x4)")
    tr.add_argument("--context", type=int, default=None,
                    help="LR pixels of real image around each patch, outside the loss "
                         "(default: the model's halo, 8 / 8 / 7 at x2 / x3 / x4)")
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--lr-min", type=float, default=1e-5, help="the rate at the end of the decay")
    tr.add_argument("--deconv-lr", type=float, default=0.1,
                    help="the deconvolution's rate as a multiple of --lr")
    tr.add_argument("--hold", type=float, default=0.8,
                    help="share of the steps at the constant rate before its one decay")
    tr.add_argument("--downscales", type=float, nargs="+", default=[1.0, 0.9, 0.8, 0.7, 0.6],
                    help="downscaled copies of each image (a source's :downscales= overrides)")
    tr.add_argument("--holdout-seed", type=int, default=0, help="fixes which images are held out")
    tr.add_argument("--no-subpixel", action="store_true",
                    help="train the deconvolution as ConvTranspose2d rather than its sub-pixel form")
    tr.add_argument("--loss", choices=("l1", "mse"), default="l1")
    tr.add_argument("--init", default=None, help="weights to fine-tune from")
    tr.add_argument("--freeze-body", action="store_true")
    tr.add_argument("--val-every", type=int, default=5000)
    tr.add_argument("--ckpt-every", type=int, default=5000)
    tr.add_argument("--time-limit", type=float, default=0.0,
                    help="seconds of wall time after which the run validates, checkpoints and stops "
                         "(resume continues it); 0: none")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--workdir", default=".train", help="where checkpoints go (resume reads them)")
    tr.set_defaults(func=cmd_train)

    rf = sub.add_parser("refit", help="solve trained weights' deconvolution for mean PSNR (closed form)")
    rf.add_argument("--data", nargs="+", required=True, metavar="DIR[:key=value...]",
                    help="training folders as for train; their :holdout= images choose lam")
    rf.add_argument("--scale", type=int, choices=SCALES, required=True)
    rf.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores); runs on CPU")
    rf.add_argument("--init", required=True, help="trained weights whose deconvolution is refitted")
    rf.add_argument("--out", required=True, help="weights path to write (.pt + .json)")
    rf.add_argument("--val", nargs="*", default=None, help="extra validation folders for choosing lam")
    rf.add_argument("--holdout-seed", type=int, default=0, help="fixes which images are held out")
    rf.add_argument("--lam", type=float, nargs="+", default=[1e-5, 1e-4, 1e-3],
                    help="proximal weights to try, relative to the normal matrix's mean diagonal")
    rf.add_argument("--fraction", type=float, default=0.25, help="share of each image's LR pixels fitted")
    rf.add_argument("--downscales", type=float, nargs="+", default=[1.0])
    rf.add_argument("--unweighted", action="store_true", help="plain least squares (no 1/MSE image weights)")
    rf.add_argument("--seed", type=int, default=0)
    rf.set_defaults(func=cmd_refit)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (WeightsError, DeviceError) as exc:
        _error(exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
