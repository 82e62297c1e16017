"""Spark job *inference*: tiles Parquet -> batched FSRCNN -> SR tiles Parquet (staging).

    spark-submit spark_jobs/inference.py --ds 2026-01-05 --scale 2 [--batch-size 16] [--device auto]

The driver reads the weights (``state_dict`` + metadata, checked for scale and
architecture) and broadcasts the raw bytes; each Python worker rebuilds the
model once and reuses it for every Arrow batch (``mapInArrow``), so there is no
per-row UDF and no pickled module.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict

import pyarrow as pa

from superres.model import default_weights, load_model, read_meta
from superres.pipeline import layout
from superres.pipeline.inference import SR_TILE_SCHEMA, infer_arrow, worker_upscaler
from superres.pipeline.spark import job_parser, parse, session, spark_schema, stage_summary
from superres.storage import open_storage


def main(argv: Sequence[str] | None = None) -> int:
    parser = job_parser(__doc__)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per Python worker (0: spark.task.cpus)")
    args = parse(parser, argv)
    weights = default_weights(args.scale, args.models_dir)
    load_model(weights, scale=args.scale)  # refuse a wrong file here, before any Spark work
    meta = asdict(read_meta(weights))
    storage = open_storage(args.storage_uri)
    spark = session(f"superres-inference-{args.ds}")
    try:
        with stage_summary(storage, args.ds, "inference", {"scale": args.scale, "weights": weights.name,
                                                            "device": args.device}) as summary:
            sc = spark.sparkContext
            threads = args.threads or int(sc.getConf().get("spark.task.cpus", "1"))
            state = sc.broadcast(weights.read_bytes())
            device, batch_size = args.device, args.batch_size

            def infer(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
                up = worker_upscaler(state.value, meta, device, batch_size, threads)
                return infer_arrow(batches, up)

            tiles = spark.read.parquet(layout.staging_path(args.staging_uri, "tiles", args.ds))
            parts = args.partitions or sc.defaultParallelism
            sr = tiles.repartition(parts).mapInArrow(infer, spark_schema(SR_TILE_SCHEMA))
            sr.write.mode("overwrite").parquet(layout.staging_path(args.staging_uri, "sr_tiles", args.ds))
            summary.update(tiles=spark.read.parquet(
                layout.staging_path(args.staging_uri, "sr_tiles", args.ds)).count(), threads=threads,
                partitions=parts)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
