"""``make bench``: every performance measurement in one process tree, back to back.

    python -m benchmarks.run [--images 8] [--size 512] [--seed-images 2] [--rounds 3]
                             [--dag-n 16 64] [--skip-dag] [--parts engine spark_stage dag]
                             [--inputs photos|random] [--out FILE]

engine       benchmarks.engine: whole-image FSRCNN x2, PyTorch eager vs the project's backend
             (this process, all cores)
spark_stage  benchmarks.spark_stage: the Spark inference stage (tiles Parquet -> mapInArrow
             FSRCNN -> Parquet) vs the engine's backend, at 16 and 64 images
seed_udf     benchmarks.spark_stage: the seed design (per-row UDF on 16x16 patches, model
             rebuilt per call) vs the Spark stage
dag          benchmarks.dag: superres_daily end to end at two N (upscale, 512x512): fixed
             overhead and marginal cost, with benchmarks.floor's floor under the latter
dag_memory   benchmarks.dag: peak RSS of the Spark driver (JVM + Python) and the Python
             workers during the dag runs

``--parts`` names modules: ``spark_stage`` measures the stage and the seed design, ``dag``
the DAG runs and their memory.  Prints a table and writes ``benchmarks/results/latest.json``
(the raw figures under the keys above).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import common
from superres.config import Settings

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("engine", "spark_stage", "dag")  # --parts: the measurement modules, run in this order
TARGETS = {  # headline key -> (comparison, threshold): the project's performance targets
    "engine_speedup_vs_eager": (">=", 1.3),
    "spark_vs_single_process": (">=", 0.85),
    "speedup_vs_seed_per_row": (">=", 5.0),
    "marginal_cost_ratio": ("<=", 1.25),
    "fixed_overhead_s": ("<=", 60.0),
    "rss_ratio_64_vs_16": ("<=", 1.15),
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=16, help="images for the engine (default 16)")
    p.add_argument("--spark-images", type=int, nargs="+", default=(16, 64), metavar="N",
                   help="the Spark stage at each of these batch sizes; the largest is the headline "
                        "(default 16 64, the dag's two N)")
    p.add_argument("--ablation-images", type=int, default=4, help="images for the engine's per-idea rows")
    p.add_argument("--size", type=int, default=512, help="LR image side in pixels (default 512)")
    p.add_argument("--seed-images", type=int, default=2, help="images for seed_udf, the slow seed design")
    p.add_argument("--rounds", type=int, default=3,
                   help="timed rounds for the engine and the Spark stage (median)")
    p.add_argument("--tile", type=int, default=Settings().tile_size,
                   help="largest Spark tile side for the Spark stage (the DAG's default); "
                        "cut evenly as split does")
    p.add_argument("--inputs", choices=("photos", "random"), default="photos")
    p.add_argument("--threads", type=int, default=0, help="torch threads for the engine (0: all cores)")
    p.add_argument("--dag-n", type=int, nargs=2, default=(16, 64), metavar=("SMALL", "LARGE"))
    p.add_argument("--dag-repeats", type=int, default=2,
                   help="dag: runs of each N, interleaved; the fit takes each N's least wall (default 2)")
    p.add_argument("--skip-dag", action="store_true", help="skip the dag part (the long one)")
    p.add_argument("--dag-spark", choices=("connect", "submit"), default="connect",
                   help="dag: jobs on one Spark Connect server (make run's default) or a Spark "
                        "application per task")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), metavar="PART",
                   help=f"which measurement modules to run: {', '.join(PARTS)} (default all)")
    p.add_argument("--no-ablation", action="store_true", help="skip the engine's per-idea rows")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "superres-bench"),
                   help="scratch space: Parquet, the bench's own Airflow home and storage")
    p.add_argument("--out", default=str(RESULTS / "latest.json"))
    return p.parse_args(argv)


def headline(results: dict[str, Any]) -> dict[str, float | None]:
    a, b, c = results.get("engine"), results.get("spark_stage"), results.get("seed_udf")
    d, e = results.get("dag"), results.get("dag_memory")
    return {
        "engine_speedup_vs_eager": a["speedup"] if a else None,
        # The stage's own single-process rounds, taken between its Spark rounds; the engine's
        # when there are none.
        "spark_vs_single_process": (b["spark_mp_s"] / (b.get("backend_mp_s") or a["fast_mp_s"])
                                    if a and b else None),
        "speedup_vs_seed_per_row": b["spark_mp_s"] / c["seed_mp_s"] if b and c else None,
        "marginal_cost_ratio": d["fit"]["marginal_cost_ratio"] if d else None,
        "fixed_overhead_s": d["fit"]["fixed_overhead_s"] if d else None,
        "rss_ratio_64_vs_16": e["ratio"] if e else None,
    }


def verdicts(head: dict[str, float | None]) -> dict[str, bool | None]:
    out = {}
    for key, (op, limit) in TARGETS.items():
        v = head.get(key)
        out[key] = None if v is None else (v >= limit if op == ">=" else v <= limit)
    return out


def table(results: dict[str, Any], head: dict[str, Any], ok: dict[str, Any]) -> str:
    a, b, c, d, e = (results.get(k) for k in ("engine", "spark_stage", "seed_udf", "dag", "dag_memory"))
    lines = ["", f"superres benchmarks {results['date']} on {results['machine']['cpu_model']} "
             f"({results['machine']['cores']} cores), commit {results['git']['commit'][:10]}"
             f"{' +local changes' if results['git']['dirty'] else ''}", ""]
    row = "{:<11} {:<58} {:>12} {:>9}  {}"
    lines.append(row.format("", "measurement", "value", "target", ""))

    def section(tag: str) -> Callable[..., None]:
        """The row writer of one measurement, its rows labelled ``tag``."""

        def add(what: str, key: str | None, value: float | None, fmt: str = "{:.2f}") -> None:
            target = ""
            status = ""
            if key:
                op, limit = TARGETS[key]
                target = f"{op} {limit:g}"
                status = {True: "ok", False: "SHORT", None: "-"}[ok[key]]
            lines.append(row.format(tag, what, "-" if value is None else fmt.format(value), target, status))

        return add

    if a:
        add = section("engine")
        add("PyTorch eager, whole image (MP/s)", None, a["eager_mp_s"], "{:.3f}")
        add("project backend `fast` (MP/s)", None, a["fast_mp_s"], "{:.3f}")
        add("speed-up vs eager", "engine_speedup_vs_eager", head["engine_speedup_vs_eager"])
    if b:
        add = section("spark_stage")
        for n, sub in b.get("by_images", {}).items():
            if int(n) != b["images"]:
                add(f"{n} images: Spark {sub['spark_mp_s']:.3f} MP/s, single process "
                    f"{sub['backend_mp_s']:.3f}; ratio", None, sub["ratio"])
        add(f"Spark inference stage, {b['images']} images, warm (MP/s; cold {b['spark_cold_mp_s']:.3f})",
            None, b["spark_mp_s"], "{:.3f}")
        if b.get("backend_mp_s"):
            add("single-process backend, rounds between Spark's (MP/s)", None, b["backend_mp_s"], "{:.3f}")
        add("Spark / single-process backend", "spark_vs_single_process", head["spark_vs_single_process"])
        if b.get("cpu_s_per_mp"):
            add(f"core-s per LR MP: Python workers {b['cpu_s_per_mp']['python_workers']:.2f}, JVM",
                None, b["cpu_s_per_mp"]["jvm"])
        if b.get("stage_fit"):
            sf = b["stage_fit"]
            add("Spark job's fixed cost, intercept over batch sizes (s)", None, sf["fixed_s"], "{:.2f}")
            add("marginal Spark throughput / single process", None, sf["marginal_vs_single_process"])
    if c:
        add = section("seed_udf")
        add("seed per-row UDF, 16x16 patches (MP/s)", None, c["seed_mp_s"], "{:.4f}")
        add("Spark stage / seed design", "speedup_vs_seed_per_row", head["speedup_vs_seed_per_row"])
    if d:
        add = section("dag")
        f = d["fit"]
        for run in d["runs"]:
            fitted = " (fitted)" if run["ds"] in f.get("fitted_ds", ()) and len(d["runs"]) > 2 else ""
            add(f"superres_daily N={run['n']} wall (s){'' if run['ok'] else ' FAILED'}{fitted}", None,
                run["wall_s"], "{:.1f}")
        add("fixed overhead, intercept (s)", "fixed_overhead_s", f["fixed_overhead_s"], "{:.1f}")
        add("marginal cost (s per LR MP)", None, f["marginal_s_per_mp"], "{:.2f}")
        add("pure inference, best round between runs (s per LR MP)", None,
            f["pure_inference_s_per_mp"], "{:.2f}")
        add("marginal / pure inference", "marginal_cost_ratio", head["marginal_cost_ratio"])
        if d.get("floor"):
            fl = d["floor"]
            add("floor: published work besides the model (core-s/MP)", None, fl["total_cpu_s_per_mp"])
            add(f"lowest reachable ratio ({fl['lowest_marginal_ratio_without_gallery']:.2f} "
                "without gallery PNGs)", None, fl["lowest_marginal_ratio"])
        lines.append("")
        lines.append("     per task (s)    " + "".join(f"{st:>12}" for st in f["stages"]))
        for run in d["runs"]:
            lines.append(f"     N={run['n']:<13}" + "".join(f"{run['task_s'].get(st, 0):>12.1f}"
                                                         for st in f["stages"]))
        lines.append("     fixed (s)       " + "".join(f"{v['fixed_s']:>12.1f}"
                                                     for v in f["stages"].values()))
        lines.append("     s per MP        " + "".join(f"{v['marginal_s_per_mp']:>12.2f}"
                                                     for v in f["stages"].values()))
        lines.append("")
        lines += cpu_lines(f.get("cpu_profile"))
    if e:
        add = section("dag_memory")
        for run in d["runs"]:
            m = run["memory"]
            add(f"N={run['n']} peak RSS MB: driver {m['driver_peak_mb']}, workers "
                f"{m['workers_peak_mb']}, together", None, m["spark_peak_mb"], "{:.0f}")
        add("peak RSS N=64 / N=16 (driver + workers)", "rss_ratio_64_vs_16", head["rss_ratio_64_vs_16"])
    return "\n".join(lines)


def cpu_lines(prof: dict[str, Any] | None) -> list[str]:
    """The dag's marginal core-seconds per LR MP: by Spark job, who used them, and what went unused."""
    if not prof:
        return []
    cpu, mach = prof["cpu_s_per_mp"], prof["machine_s_per_mp"]
    from benchmarks.dag import ROLES

    cols = ("busy", "idle", "steal")
    head = "{:<13}" + "{:>11}" * (len(ROLES) + len(cols))
    out = [f"     marginal core-seconds per LR MP ({prof['cores']} cores; the model alone, "
           f"the engine's backend: {prof['model_cpu_s_per_mp']:.2f})",
           "     " + head.format("job", *(r.replace("python_", "py ") for r in ROLES), *cols)]
    jobs = [j for j in cpu if j != "total"] + ["total"]
    for job in jobs:
        c, m = cpu.get(job, {}), mach.get(job, {})
        out.append("     " + head.format(job, *(f"{c.get(r, 0.0):.2f}" for r in ROLES),
                                         *(f"{m.get(k, 0.0):.2f}" for k in cols)))
    out.append("")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    results: dict[str, Any] = {
        "date": common.now_iso(), "machine": common.machine(), "git": common.git_commit(),
        "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
        "loadavg_start": common.loadavg(),
    }
    print(f"inputs: {args.images} x {args.size}x{args.size} {args.inputs}; workdir {workdir}", flush=True)
    images = common.make_images(args.images, args.size, args.inputs)

    from benchmarks import engine
    from superres.model import default_weights, load_model

    weights = default_weights(2)
    model = load_model(weights, scale=2)

    parts = set(args.parts) - ({"dag"} if args.skip_dag else set())
    if "engine" in parts:
        print("engine", flush=True)
        results["engine"] = engine.run(model, images, rounds=args.rounds, ablation=not args.no_ablation,
                                  threads=args.threads, ablation_images=args.ablation_images)
    if "spark_stage" in parts:
        run_spark(args, results, images, model, weights, workdir)
    if "dag" in parts:
        print("dag: superres_daily end to end", flush=True)
        from benchmarks import dag

        small, large = sorted(args.dag_n)
        # One round of the engine's backend, timed again beside each run (the machine's speed drifts).
        inference = engine.probe(model, images, args.threads)
        with dag.DagBench(workdir / "dag", photos=large, size=args.size, spark=args.dag_spark) as bench:
            # A long-lived server is measured warm, as it runs day to day: one small run first
            # starts its Python workers and their imports (reported, not fitted).
            warmup = bench.run(2, "2030-12-31") if args.dag_spark == "connect" else None
            # Small and large alternate, so that drift in the machine's speed reaches both alike;
            # pure inference is timed again before each run, and its best round is the reference.
            plan = [n for _ in range(max(1, args.dag_repeats)) for n in (small, large)]
            first = dt.date(2031, 1, 1)
            runs, rates = [], []
            for i, n in enumerate(plan):
                rates.append(inference())
                print(f"  dag pure inference (engine's backend) {rates[-1]:.3f} MP/s", flush=True)
                runs.append(bench.run(n, (first + dt.timedelta(days=i)).isoformat()))
        # The least any design adds to the model for what a run publishes (one thread, no Spark).
        from benchmarks import floor
        from superres.engine import Upscaler

        cores = results["machine"]["cores"]
        lowest = floor.run(Upscaler(model, backend="fast"), images, cores / max(rates))
        print(f"  dag floor: {lowest['total_cpu_s_per_mp']:.2f} core-s per LR MP besides the model, "
              f"lowest reachable ratio {lowest['lowest_marginal_ratio']:.2f}", flush=True)
        results["dag"] = {"runs": runs, "migrate_s": bench.migrate_s, "spark": args.dag_spark,
                        "server_start_s": bench.server_start_s, "warmup_run": warmup,
                        "inference_mp_s_rounds": rates, "floor": lowest,
                        "fit": dag.fit(runs, max(rates), cores)}
        results["dag_memory"] = dag.memory_ratio(runs)
    return finish(args, results, t_start)


def run_spark(args: argparse.Namespace, results: dict[str, Any], images, model, weights: Path,
              workdir: Path) -> None:
    print("spark_stage: the Spark inference stage and the seed design", flush=True)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers run this venv's Python
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from dataclasses import asdict

    from benchmarks import spark_stage
    from superres.model import read_meta
    from superres.pipeline.spark import LOCAL_JVM_OPTIONS, session

    # The gateway's JVM is a "pyspark-shell", which turns the console progress bar on; it runs
    # local[*], so it gets the JVM options every local driver of the pipeline gets.
    os.environ.setdefault("PYSPARK_SUBMIT_ARGS", "--conf spark.ui.showConsoleProgress=false "
                          f"--driver-java-options {LOCAL_JVM_OPTIONS} pyspark-shell")

    spark = session("superres-bench")
    try:
        state, meta = weights.read_bytes(), asdict(read_meta(weights))
        if "engine" not in results:
            raise SystemExit("spark_stage compares with the engine: run it too (--parts engine spark_stage)")
        results["spark_stage"] = run_stage_sizes(args, spark, model, state, meta, workdir / "spark")
        results["seed_udf"] = spark_stage.run_seed(spark, state, meta, images[: args.seed_images],
                                                   workdir / "spark",
                                                   partitions=results["spark_stage"]["partitions"])
    finally:
        spark.stop()


def run_stage_sizes(args: argparse.Namespace, spark, model, state: bytes, meta: dict[str, Any],
                    workdir: Path) -> dict[str, Any]:
    """The Spark stage at each ``--spark-images`` batch size, each against the engine's backend
    on the same images.

    A Spark job has a fixed cost (planning, task launch, the commit) that a batch of 16
    images does not hide on a machine fast at the model; the dag's N are 16 and 64, so the
    stage is taken at both and the two give its fixed cost and its marginal throughput.
    The headline is the largest batch, the size the daily run is measured at in the dag part.
    """
    from benchmarks import engine, spark_stage

    sizes = sorted(set(args.spark_images))
    pool = common.make_images(sizes[-1], args.size, args.inputs)
    by_n: dict[int, dict[str, Any]] = {}
    for n in sizes:
        print(f"  spark_stage at {n} images", flush=True)
        images = pool[:n]
        by_n[n] = spark_stage.run(spark, model, state, meta, images, workdir, args.tile, rounds=args.rounds,
                                  backend=engine.probe(model, images, args.threads))
    out = {**by_n[sizes[-1]], "by_images": {str(n): spark_stage.summary(b) for n, b in by_n.items()}}
    if len(sizes) > 1:
        out["stage_fit"] = spark_stage.stage_fit(by_n[sizes[0]], by_n[sizes[-1]])
    return out


def finish(args: argparse.Namespace, results: dict[str, Any], t_start: float) -> int:
    head = headline(results)
    ok = verdicts(head)
    results["loadavg_end"] = common.loadavg()
    results["bench_seconds"] = round(time.time() - t_start, 1)
    out = {**head, "targets": {k: f"{op} {v:g}" for k, (op, v) in TARGETS.items()}, "met": ok, **results}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(table(results, head, ok))
    print(f"\nwrote {path} in {results['bench_seconds']:.0f}s (load average {results['loadavg_start']} "
          f"-> {results['loadavg_end']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
