"""Spark job *quality*: Great Expectations gates on the date's staged data (the audit step).

    spark-submit spark_jobs/quality.py --ds 2026-01-05 --scale 2 [--storage-uri ...] [--staging-uri ...]

Write-audit-publish: split, inference and reconstruct wrote staging Parquet; this
job audits it against the fetch manifest and writes ``reports/ds=…/quality.json``
whether the gates pass or not.  A failed gate raises ``QualityGateError`` naming
each failed expectation with sample rows, so the Airflow task fails with that
message in its log and evaluate (which publishes) never runs.  Nothing is
published here.

Spark reads metadata columns only.  The PNG checks are SQL expressions on the
binary column (signature, IHDR size, length, sha256), so neither pixels nor PNG
bytes reach the driver, and the gates run on those small frames (a row per
image or tile) in this process.  A dataset that was never written reads as empty, its
rows then show up as missing in the gates, and it is listed in
``missing_datasets``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from superres import quality
from superres.pipeline import layout
from superres.pipeline.spark import (
    IMAGE_ROWS_PER_BATCH,
    is_remote,
    job_parser,
    parse,
    run_job,
    session,
    stage_summary,
    where,
)
from superres.storage import Storage, open_storage

if TYPE_CHECKING:
    import argparse

    import pandas as pd

log = logging.getLogger("superres.quality")

# The staging datasets the gates read, with the metadata columns taken from each.
DATASETS: dict[str, tuple[str, ...]] = {
    "images": quality.IMAGE_COLUMNS,
    "tiles": quality.TILE_COLUMNS,
    "sr_tiles": quality.SR_TILE_COLUMNS,
    "outputs": quality.OUTPUT_COLUMNS,
}
# Spark's error conditions for "nothing was written there" (a race with _exists, or an empty directory).
_ABSENT = ("PATH_NOT_FOUND", "UNABLE_TO_INFER_SCHEMA")


def _exists(spark, path: str) -> bool:
    """Ask Hadoop's FileSystem (local, hdfs://, s3a://), instead of provoking a logged stack trace."""
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    return bool(hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).exists(hadoop_path))


def read_metadata(spark, path: str, columns: Sequence[str],
                  expressions: Mapping[str, str] | None = None) -> pd.DataFrame | None:
    """The chosen columns (plus SQL expressions) of a Parquet dataset as pandas; None if absent."""
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    remote = is_remote(spark)
    if not remote and not _exists(spark, path):
        return None
    extra = [F.expr(sql).alias(name) for name, sql in (expressions or {}).items()]
    try:
        # A Connect client has no Hadoop FileSystem to ask, and analyses lazily: absence shows here.
        return spark.read.parquet(path).select(*[F.col(c) for c in columns], *extra).toPandas()
    except AnalysisException as exc:  # a directory without any Parquet file in it
        if (exc.getCondition() or "") in _ABSENT:
            return None
        raise


def read_frames(spark, staging_uri: str, ds: str) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The date's staging datasets as small metadata frames, and the names of those never written."""
    import pandas as pd

    frames: dict[str, pd.DataFrame] = {}
    missing: list[str] = []
    for name, columns in DATASETS.items():
        expressions = quality.png_sql("png") if name == "outputs" else {}
        frame = read_metadata(spark, layout.staging_path(staging_uri, name, ds), columns, expressions)
        if frame is None:
            log.warning("staging dataset %s for ds=%s does not exist; auditing it as empty", name, ds)
            missing.append(name)
            frame = pd.DataFrame(columns=[*columns, *expressions])
        frames[name] = frame
    return frames, missing


def audit(storage: Storage, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """Read the manifest and the staged metadata, and run the gates (:func:`quality.run_suites`).

    The gates run here, on frames of a row per image or tile, not in a Spark worker:
    a worker would import Great Expectations afresh for every run anyway (a Spark
    Connect server starts new Python workers for each client session, and every run
    has its own, ``services.ensure_spark_connect``) and add its own start.  At 64 photos
    the job takes 15.5 s with the gates in a worker and 11.7 s like this.
    (Importing it on a thread during the reads saved another 0.6 s; not done, because
    Great Expectations imports ``pyspark.sql`` too, and two threads importing pyspark's
    interdependent modules at once risk Python's import deadlock error.)

    Returns the quality report and where the Spark reads ran (for the stage summary).
    """
    manifest = storage.read_json(layout.manifest_key(args.ds))
    spark = session(f"superres-quality-{args.ds}", args.spark_remote, IMAGE_ROWS_PER_BATCH,
                    session_id=args.spark_session_id,
                    connect_timeout_s=args.spark_connect_timeout_s)
    try:
        ran_on = where(spark)
        frames, missing = read_frames(spark, args.staging_uri, args.ds)
    finally:
        spark.stop()
    frames["manifest"] = quality.manifest_records(manifest)
    report = quality.run_suites(frames, args.scale)
    return {"ds": args.ds, **report, "missing_datasets": missing}, ran_on


def error_report(ds: str, scale: int, exc: BaseException) -> dict[str, Any]:
    """quality.json for a run whose gates could not even be evaluated (it still says why)."""
    return {"success": False, "ds": ds, "scale": scale, "error": f"{type(exc).__name__}: {exc}",
            "suites": []}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(job_parser(__doc__), argv)
    storage = open_storage(args.storage_uri)
    key = layout.report_key(args.ds, "quality.json")
    with stage_summary(storage, args.ds, "quality", {"scale": args.scale}) as summary:
        try:
            result, ran_on = audit(storage, args)
        except Exception as exc:
            storage.write_json(key, error_report(args.ds, args.scale, exc))
            raise
        storage.write_json(key, result)
        log.info("quality report written to %s (success=%s)", storage.uri(key), result["success"])
        quality.enforce(result)  # a failed gate fails the task here, before the stage summary
        summary.update(spark=ran_on, success=True, suites={s["name"]: s["success"] for s in result["suites"]},
                       inputs=result["inputs"], missing_datasets=result["missing_datasets"])
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
