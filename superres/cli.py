"""``python -m superres``: upscale, evaluate and train without Airflow.

Bad input files are reported by name, the rest are still processed, and the
exit status is non-zero if any input failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from superres import images
from superres.model import SCALES, WeightsError


def _progress(i: int, n: int, name: str, t0: float) -> None:
    print(f"[{i}/{n}] {name} ({time.time() - t0:.1f}s)", file=sys.stderr, flush=True)


def _expand(inputs: Sequence[str]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        paths.extend(images.list_images(p) if p.is_dir() else [p])
    return paths


def cmd_upscale(args: argparse.Namespace) -> int:
    from superres.engine import Upscaler, configure_threads

    configure_threads(args.threads)
    upscaler = Upscaler.load(args.scale, args.model, device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths, failed, t0 = _expand(args.inputs), 0, time.time()
    for i, path in enumerate(paths, 1):
        try:
            dec = images.read(path, max_pixels=args.max_pixels)
            sr = upscaler.upscale(dec.pixels, tile=args.tile)
            (out / f"{path.stem}.png").write_bytes(images.encode_png(sr))
            _progress(i, len(paths), f"{path.name} {dec.width}x{dec.height} -> "
                      f"{sr.shape[1]}x{sr.shape[0]}", t0)
        except (images.ImageError, OSError) as exc:
            failed += 1
            print(f"error: {path}: {exc}", file=sys.stderr)
    print(f"upscaled {len(paths) - failed}/{len(paths)} images x{args.scale} into {out}")
    return 1 if failed or not paths else 0


def format_table(report: dict) -> str:
    lines = [f"{'image':<16} {'PSNR':>8} {'SSIM':>7} {'bic PSNR':>9} {'bic SSIM':>9}"]
    for row in report["images"] + [{"name": "MEAN", **report["mean"]}]:
        lines.append(
            f"{row['name']:<16} {row['psnr']:>8.3f} {row.get('ssim', float('nan')):>7.4f} "
            f"{row['psnr_bicubic']:>9.3f} {row.get('ssim_bicubic', float('nan')):>9.4f}"
        )
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from superres.engine import Upscaler, configure_threads
    from superres.evaluate import evaluate_pairs, protocol_pair

    configure_threads(args.threads)
    upscaler = Upscaler.load(args.scale, args.model, device=args.device)
    paths, failed, t0 = images.list_images(args.hr_dir), [], time.time()

    def pairs():
        for i, path in enumerate(paths, 1):
            try:
                lr, hr = protocol_pair(images.read(path).rgb(), args.scale)
            except (images.ImageError, ValueError, OSError) as exc:
                failed.append(path.name)
                print(f"error: {path}: {exc}", file=sys.stderr)
                continue
            _progress(i, len(paths), path.name, t0)
            yield path.stem, lr, hr

    report = evaluate_pairs(upscaler, pairs(), tile=args.tile)
    report["failed"] = failed
    print(f"x{args.scale} on {args.hr_dir} ({len(report['images'])} images, Y channel, shave {args.scale})")
    if report["images"]:
        print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed or not report["images"] else 0


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

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--scale", type=int, choices=SCALES, required=True)
        sp.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
        sp.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")

    up = sub.add_parser("upscale", help="super-resolve images into PNGs")
    up.add_argument("inputs", nargs="+", help="image files or folders")
    common(up)
    up.add_argument("--out", required=True)
    up.add_argument("--tile", type=int, default=None, help="LR tile size in pixels")
    up.add_argument("--model", default=None, help="weights .pt (default: include/models)")
    up.add_argument("--max-pixels", type=int, default=images.DEFAULT_MAX_PIXELS)
    up.set_defaults(func=cmd_upscale)

    ev = sub.add_parser("evaluate", help="PSNR/SSIM of SR and bicubic under the paper protocol")
    ev.add_argument("hr_dir")
    common(ev)
    ev.add_argument("--json", default=None)
    ev.add_argument("--tile", type=int, default=None)
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
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
