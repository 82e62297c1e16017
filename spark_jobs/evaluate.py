"""Spark job *evaluate*: audit the staged SR outputs, then publish them (write-audit-publish).

    spark-submit spark_jobs/evaluate.py --ds 2026-01-05 --scale 2 --mode evaluate

The driver reads the manifest and the HR photos of the date's ``ok`` images
from storage (through Python: the JVM has no s3a here) and hands them to the
executors as rows, joined with the staged ``images`` (LR PNG) and ``outputs``
(SR PNG).  Executors score SR and bicubic against HR (evaluate mode) and
render the bicubic and comparison PNGs, all in one parallel job that writes
them to the ``evaluated`` staging Parquet, partitioned into chunks of
``PUBLISH_CHUNK`` images.  The driver then fetches one chunk at a time and
streams its files into staged partitions (``Storage.partition_writer``), so
neither it nor a Spark Connect server ever holds more than one chunk of PNGs,
however many images the date has.

Evaluate mode applies the regression gate before anything is published: if
SR does not beat bicubic, ``reports/ds=…/metrics.json`` is still written for
diagnosis, the job fails, and ``sr/ds=…`` is left exactly as it was.
Otherwise it publishes, each as a whole partition that a rerun replaces:

    sr/ds=…/<image_id>.png               the staged outputs, byte for byte
    reports/ds=…/compare/<image_id>.png  HR | bicubic | SR crop (upscale mode: bicubic | SR)
    reports/ds=…/bicubic/<image_id>.png  the bicubic baseline
    reports/ds=…/metrics.json            scores, per-image flags and means

Both modes apply the per-image gate (``superres.pipeline.evaluate.image_flags``,
thresholds ``--sr-below-bicubic-db`` and ``--near-constant-std``): a flagged
image is published but listed with its flags in metrics.json and left out of
its ``mean``.  Upscale mode has no ground truth, so its metrics.json has no
scores, only each image's ``output_std`` and flags.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from functools import partial
from typing import Any

from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F

from superres.evaluate import KEYS
from superres.pipeline import layout
from superres.pipeline.evaluate import (
    EVAL_SCHEMA,
    ModelRegressionError,
    evaluate_batches,
    metrics_report,
    publish_chunks,
    regression_gate,
)
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
from superres.storage import Storage, open_storage

log = logging.getLogger("superres.evaluate")


def compare_prefix(ds: str) -> str:
    return layout.report_key(ds, "compare")


def bicubic_prefix(ds: str) -> str:
    return layout.report_key(ds, "bicubic")


def staged_checksums(ids: Sequence[str], outputs: Sequence[Any]) -> dict[str, str]:
    """image_id -> staged sha256, after checking there is exactly one output per ok image."""
    counts = Counter(r["image_id"] for r in outputs)
    missing = sorted(set(ids) - counts.keys())
    unexpected = sorted(counts.keys() - set(ids))
    duplicated = sorted(i for i, n in counts.items() if n > 1)
    if missing or unexpected or duplicated:
        raise RuntimeError(f"staged outputs do not match the ok images: missing {missing}, "
                           f"unexpected {unexpected}, duplicated {duplicated}")
    return {r["image_id"]: r["sha256"] for r in outputs}


def hr_rows(storage: Storage, manifest: dict[str, Any], ids: Sequence[str]) -> list[tuple[str, bytes]]:
    """(image_id, HR photo bytes) for the given ids, from the keys the raw manifest lists."""
    keys = {img["image_id"]: img["key"] for img in manifest["images"]}
    unknown = sorted(set(ids) - keys.keys())
    if unknown:
        raise RuntimeError(f"staged images {unknown} are not in the raw manifest; rerun split")
    return [(i, storage.read_bytes(keys[i])) for i in ids]


def chunk_rows(evaluated: DataFrame, n_chunks: int) -> Iterator[Row]:
    """The evaluated rows, one chunk (a partition directory) per fetch.

    The next chunk is fetched on a thread while the caller writes this one's files,
    so Spark's side of the fetch and the driver's writes overlap; the driver holds
    at most two chunks, however many images the date has.
    """
    def fetch(chunk: int) -> list[Row]:
        return evaluated.filter(F.col("chunk") == chunk).collect()

    if n_chunks < 1:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluate-fetch") as pool:
        pending = pool.submit(fetch, 0)
        for chunk in range(n_chunks):
            rows = pending.result()
            if chunk + 1 < n_chunks:
                pending = pool.submit(fetch, chunk + 1)
            yield from rows


def audited_png(row: Row, expected_sha: dict[str, str], ds: str) -> bytes:
    """The row's SR PNG, after checking it is the output staged for that image, byte for byte."""
    image_id, png = row["image_id"], bytes(row["png"])
    if image_id not in expected_sha:
        raise RuntimeError(f"evaluated {image_id!r}, which is not staged for ds={ds}")
    if hashlib.sha256(png).hexdigest() != expected_sha[image_id]:
        raise RuntimeError(f"SR PNG of {image_id} does not match its staged sha256")
    return png


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(job_parser(__doc__), argv)
    ds, scale, mode = args.ds, args.scale, args.mode
    storage = open_storage(args.storage_uri)
    metrics_key = layout.report_key(ds, "metrics.json")
    spark = session(f"superres-evaluate-{ds}", args.spark_remote, IMAGE_ROWS_PER_BATCH,
                    session_id=args.spark_session_id,
                    connect_timeout_s=args.spark_connect_timeout_s)
    try:
        with stage_summary(storage, ds, "evaluate", {"mode": mode, "scale": scale}) as summary:
            summary.update(spark=where(spark))
            imgs = spark.read.parquet(layout.staging_path(args.staging_uri, "images", ds)) \
                .filter("status = 'ok'").select("image_id", "lr_png")
            outs = spark.read.parquet(layout.staging_path(args.staging_uri, "outputs", ds)) \
                .select("image_id", "png", "sha256")
            ids = sorted(r["image_id"] for r in imgs.select("image_id").collect())
            if not ids:
                raise RuntimeError(f"ds={ds} has no ok images in staging: nothing to evaluate or publish")
            expected_sha = staged_checksums(ids, outs.select("image_id", "sha256").collect())

            joined = imgs.join(outs.drop("sha256"), "image_id")
            if mode == "evaluate":
                manifest = storage.read_json(layout.manifest_key(ds))
                hr = spark.createDataFrame(hr_rows(storage, manifest, ids), "image_id string, hr binary")
                joined = joined.join(hr, "image_id")
            parts = args.partitions or parallelism(spark)

            body = partial(evaluate_batches, mode=mode, scale=scale, max_pixels=args.max_pixels)
            result = map_in_arrow(joined.repartition(max(1, min(parts, len(ids)))), body, EVAL_SCHEMA)
            chunk_of = publish_chunks(ids)
            chunks = spark.createDataFrame(chunk_of, "image_id string, chunk int")
            evaluated_path = layout.staging_path(args.staging_uri, "evaluated", ds)
            staging_writer(result.join(F.broadcast(chunks), "image_id"), "evaluated") \
                .partitionBy("chunk").parquet(evaluated_path)
            evaluated = spark.read.parquet(evaluated_path)

            scores: list[dict[str, Any]] = []
            with ExitStack() as stack:
                sr_files, compare_files, bicubic_files = (
                    stack.enter_context(storage.partition_writer(prefix))
                    for prefix in (layout.sr_prefix(ds), compare_prefix(ds), bicubic_prefix(ds)))
                for row in chunk_rows(evaluated, chunk_of[-1][1] + 1):
                    name = f"{row['image_id']}.png"
                    sr_files.put(name, audited_png(row, expected_sha, ds))
                    compare_files.put(name, bytes(row["compare_png"]))
                    bicubic_files.put(name, bytes(row["bicubic_png"]))
                    scores.append({"image_id": row["image_id"], **{k: row[k] for k in KEYS},
                                   "output_std": row["output_std"]})
                if len(sr_files.entries) != len(ids):
                    raise RuntimeError(f"evaluated {len(sr_files.entries)} of {len(ids)} ok images")

                report = metrics_report(ds, scale, scores, mode=mode,
                                        sr_below_bicubic_db=args.sr_below_bicubic_db,
                                        near_constant_std=args.near_constant_std)
                for flagged in report["flagged"]:
                    log.warning("ds=%s image %s flagged %s; left out of the mean", ds, flagged["image_id"],
                                ", ".join(flagged["flags"]))
                if mode == "evaluate":
                    try:
                        regression_gate(report)
                    except ModelRegressionError:
                        storage.write_json(metrics_key, report)  # for diagnosis; nothing is published
                        log.error("regression gate failed for ds=%s; see %s", ds, storage.uri(metrics_key))
                        raise

                # Publish only what was audited; each partition is replaced whole, _SUCCESS last.
                marker = sr_files.commit()
                compare_files.commit()
                bicubic_files.commit()
            published = {"sr": layout.sr_prefix(ds), "compare": compare_prefix(ds),
                         "bicubic": bicubic_prefix(ds)}
            storage.write_json(metrics_key, report)
            published["metrics"] = metrics_key
            summary.update(mean=report["mean"], flagged=report["flagged_count"])
            summary.update(images=len(sr_files.entries), sr_bytes=marker["total_bytes"],
                           compare=len(compare_files.entries), bicubic=len(bicubic_files.entries),
                           outputs={k: storage.uri(v) for k, v in published.items()}, published=True)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
