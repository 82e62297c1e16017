"""Training pilot: which (batch, patch, context) gains validation PSNR fastest per second.

Each setting is a real ``python -m superres train`` run on one thread, all started at
once so a load change hits them alike, each warm-started from the same weights with
the same data, the same held-out validation images and a full schedule (hold, then
the one decay) sized to ``--seconds`` of its own measured speed.  The figure of
merit is the held-out PSNR at the end, against the start: what the setting bought
in the same wall time.

    python -m benchmarks.train_pilot --scale 4 [--init include/models/fsrcnn_x4.pt --lr 1e-4] \\
        --data ../shared/datasets/T91:holdout=6 ../shared/datasets/BSD200:holdout=14:downscales=0.8,0.7,0.6
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (batch, LR patch side, context): 0 patch = the scale's default, -1 context = the halo.
SETTINGS = ((16, 0, -1), (16, 12, -1), (64, 24, -1))


def steps_per_s(args: argparse.Namespace, batch: int, patch: int, context: int, work: Path) -> float:
    """This setting's speed alone on one thread, from a short run without validation."""
    log = run(args, batch, patch, context, work / "speed", steps=10**6, seconds=args.probe_s, val=False)
    recs = [r for r in log if "steps_per_s" in r]
    return recs[-1]["step"] / max(recs[-1]["elapsed_s"], 1)


def command(args: argparse.Namespace, batch: int, patch: int, context: int, work: Path, steps: int,
            seconds: float, val: bool) -> list[str]:
    cmd = [sys.executable, "-m", "superres", "train", "--scale", str(args.scale), "--data", *args.data,
           *(["--init", args.init] if args.init else []), "--out", str(work / "w.pt"),
           "--workdir", str(work), "--threads", "1",
           "--batch", str(batch), "--patch", str(patch), "--steps", str(steps), "--lr", str(args.lr),
           "--hold", str(args.hold), "--time-limit", str(seconds), "--seed", str(args.seed),
           "--val-every", str(steps if val else 10**9), "--ckpt-every", str(10**9)]
    return cmd + (["--context", str(context)] if context >= 0 else [])


def run(args, batch, patch, context, work, steps, seconds, val) -> list[dict]:
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(command(args, batch, patch, context, work, steps, seconds, val), check=True,
                   stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in (work / "w.train.jsonl").read_text().splitlines()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, required=True)
    p.add_argument("--init", default=None, help="weights to start every setting from (default: scratch)")
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hold", type=float, default=0.5)
    p.add_argument("--seconds", type=float, default=180.0, help="wall time of each setting's run")
    p.add_argument("--probe-s", type=float, default=15.0, help="wall time of each speed probe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pilot-") as tmp:
        work = Path(tmp)
        speeds = {s: steps_per_s(args, *s, work / f"{i}") for i, s in enumerate(SETTINGS)}
        t0 = time.time()
        procs = {}
        for i, s in enumerate(SETTINGS):
            steps = max(1, int(speeds[s] * args.seconds * 0.55))  # all run at once: about half speed each
            d = work / f"{i}" / "run"
            d.mkdir(parents=True)
            procs[s] = (d, subprocess.Popen(command(args, *s, d, steps, args.seconds * 1.5, val=True),
                                            stdout=subprocess.DEVNULL))
        rows = []
        for s, (d, proc) in procs.items():
            if proc.wait() != 0:
                raise SystemExit(f"setting {s} failed with exit {proc.returncode}")
            log = [json.loads(line) for line in (d / "w.train.jsonl").read_text().splitlines()]
            start, end = log[0]["val_psnr"], log[-1]["val_psnr"]
            rows.append({"batch": s[0], "patch": s[1] or "default", "context": "halo" if s[2] < 0 else s[2],
                         "solo_steps_per_s": round(speeds[s], 2), "steps": log[-1]["step"],
                         "wall_s": log[-1]["elapsed_s"], "val_start": start, "val_end": end,
                         "gain_db": round(end - start, 4)})
    for r in rows:
        print(json.dumps(r))
    print(f"pilot wall {time.time() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"scale": args.scale, "lr": args.lr, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
