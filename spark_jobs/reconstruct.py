"""Spark job *reconstruct*: SR tiles + images -> stitched colour PNGs (``outputs`` staging).

    spark-submit spark_jobs/reconstruct.py --ds 2026-01-05 --scale 2

Executors group each image's SR tiles, stitch them, add bicubic chroma (and
alpha), clamp and encode PNG.  The PNGs go to the date's ``outputs`` Parquet
in staging, not to ``sr/``: they are published only after the quality gates
pass (write-audit-publish), by the evaluate job.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pandas as pd

from superres import tiling
from superres.pipeline import layout
from superres.pipeline.reconstruct import OUTPUT_SCHEMA, reconstruct_image
from superres.pipeline.spark import (
    IMAGE_ROWS_PER_BATCH,
    job_parser,
    parse,
    run_job,
    session,
    stage_summary,
    staging_writer,
    where,
)
from superres.storage import open_storage


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(job_parser(__doc__), argv)
    storage = open_storage(args.storage_uri)
    scale, max_pixels = args.scale, args.max_pixels
    spark = session(f"superres-reconstruct-{args.ds}", args.spark_remote, IMAGE_ROWS_PER_BATCH,
                    session_id=args.spark_session_id,
                    connect_timeout_s=args.spark_connect_timeout_s)
    try:
        with stage_summary(storage, args.ds, "reconstruct", {"scale": scale}) as summary:
            summary.update(spark=where(spark))
            sr = spark.read.parquet(layout.staging_path(args.staging_uri, "sr_tiles", args.ds))
            imgs = spark.read.parquet(layout.staging_path(args.staging_uri, "images", args.ds)) \
                .filter("status = 'ok'")

            def stitch_group(tiles: pd.DataFrame, image: pd.DataFrame) -> pd.DataFrame:
                if image.empty:
                    raise ValueError(f"SR tiles for unknown image {tiles['image_id'].iloc[0]!r}")
                row = image.iloc[0].to_dict()
                cores = [(int(t.y), int(t.x), tiling.decode_sr_pixels(t.pixels, int(t.sr_h), int(t.sr_w)))
                         for t in tiles.itertuples()]
                return pd.DataFrame([reconstruct_image(row, cores, scale, max_pixels)])

            out = sr.groupBy("image_id").cogroup(imgs.groupBy("image_id")) \
                .applyInPandas(stitch_group, OUTPUT_SCHEMA)
            staging_writer(out, "outputs").parquet(layout.staging_path(args.staging_uri, "outputs", args.ds))
            written = spark.read.parquet(layout.staging_path(args.staging_uri, "outputs", args.ds))
            got = {r["image_id"] for r in written.select("image_id").collect()}
            expected = {r["image_id"] for r in imgs.select("image_id").collect()}
            missing = sorted(expected - got)
            if missing:
                raise RuntimeError(f"no SR output for images {missing}: their tiles are missing")
            summary.update(images=len(got))
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
