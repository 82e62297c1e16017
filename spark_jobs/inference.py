"""Spark job *inference*: tiles Parquet -> batched FSRCNN -> SR tiles Parquet (staging).

    spark-submit spark_jobs/inference.py --ds 2026-01-05 --scale 2 [--batch-size 16] [--device auto]
        [--backend auto|fast|eager] [--threads N]

The driver checks the weights (``state_dict`` + metadata: scale, architecture,
tensor shapes, without importing torch) and ships the raw bytes; each Python worker rebuilds the
model once and reuses it for every Arrow batch (``mapInArrow``), so there is no
per-row UDF and no pickled module.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict

from superres.engine import resolve_backend
from superres.pipeline import layout
from superres.pipeline.inference import run_stage
from superres.pipeline.spark import job_parser, parse, run_job, session, stage_summary, where
from superres.storage import open_storage
from superres.weights import check_weights, default_weights


def main(argv: Sequence[str] | None = None) -> int:
    parser = job_parser(__doc__)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per Python worker (0: spark.task.cpus)")
    args = parse(parser, argv)
    resolve_backend(args.backend)  # an unknown backend fails here, not in every Spark worker
    weights = default_weights(args.scale, args.models_dir)
    # Refuse a wrong file here, before any Spark work; the driver never imports torch.
    meta = asdict(check_weights(weights, scale=args.scale))
    storage = open_storage(args.storage_uri)
    spark = session(f"superres-inference-{args.ds}", args.spark_remote, session_id=args.spark_session_id,
                    connect_timeout_s=args.spark_connect_timeout_s)
    try:
        with stage_summary(storage, args.ds, "inference", {"scale": args.scale, "weights": weights.name,
                                                            "device": args.device,
                                                            "backend": args.backend}) as summary:
            summary.update(spark=where(spark))
            summary.update(run_stage(
                spark, layout.staging_path(args.staging_uri, "tiles", args.ds),
                layout.staging_path(args.staging_uri, "sr_tiles", args.ds), weights.read_bytes(), meta,
                device=args.device, batch_size=args.batch_size, threads=args.threads,
                backend=args.backend, partitions=args.partitions))
            summary.update(tiles=spark.read.parquet(
                layout.staging_path(args.staging_uri, "sr_tiles", args.ds)).count())
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
