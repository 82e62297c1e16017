"""Spark job *split*: raw photos of one date -> images + halo tiles Parquet (staging).

    spark-submit spark_jobs/split.py --ds 2026-01-05 [--mode evaluate] [--scale 2] [--tile-size 128]

The driver reads the date's manifest and photo bytes from storage (local or S3,
through Python: the JVM has no s3a here) and hands them to the executors as
rows, so executors need no storage credentials and no driver-local files.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from functools import partial

from superres.pipeline import layout
from superres.pipeline.spark import (
    IMAGE_ROWS_PER_BATCH,
    job_parser,
    map_in_arrow,
    parallelism,
    parse,
    run_job,
    session,
    stage_summary,
    staging_writer,
    where,
)
from superres.pipeline.split import IMAGE_SCHEMA, TILE_SCHEMA, cut_tiles, split_images
from superres.storage import open_storage
from superres.weights import ModelSpec


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(job_parser(__doc__), argv)
    storage = open_storage(args.storage_uri)
    manifest = storage.read_json(layout.manifest_key(args.ds))
    halo = ModelSpec(scale=args.scale).halo

    def staging(dataset: str) -> str:
        return layout.staging_path(args.staging_uri, dataset, args.ds)

    spark = session(f"superres-split-{args.ds}", args.spark_remote, IMAGE_ROWS_PER_BATCH,
                    session_id=args.spark_session_id,
                    connect_timeout_s=args.spark_connect_timeout_s)
    try:
        with stage_summary(storage, args.ds, "split", {"mode": args.mode, "scale": args.scale,
                                                        "tile_size": args.tile_size}) as summary:
            summary.update(spark=where(spark))
            rows = [(img["image_id"], storage.read_bytes(img["key"])) for img in manifest["images"]]
            parts = args.partitions or parallelism(spark)
            raw = spark.createDataFrame(rows, "image_id string, data binary").repartition(
                max(1, min(parts, len(rows))))
            opts = dict(mode=args.mode, scale=args.scale, tile=args.tile_size, halo=halo,
                        max_pixels=args.max_pixels)

            imgs = map_in_arrow(raw, partial(split_images, **opts), IMAGE_SCHEMA).cache()
            try:
                staging_writer(imgs, "images").parquet(staging("images"))
                tiles = map_in_arrow(imgs.filter("status = 'ok'"),
                                     partial(cut_tiles, max_pixels=args.max_pixels), TILE_SCHEMA)
                staging_writer(tiles, "tiles").parquet(staging("tiles"))
                # One small collect (no pixels) for the whole summary: every Spark action is a round trip.
                meta = imgs.select("image_id", "status", "reason", "message", "tiles").collect()
            finally:
                # A Connect session can outlive the job (the run's next task joins it).
                imgs.unpersist()
            ok = [r for r in meta if r["status"] == "ok"]
            quarantine = [{k: r[k] for k in ("image_id", "reason", "message")}
                          for r in meta if r["status"] != "ok"]
            summary.update(images=len(rows), ok=len(ok), quarantine=quarantine,
                           quarantined=sum(r["status"] == "quarantined" for r in meta),
                           tiles=sum(int(r["tiles"] or 0) for r in ok))
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
