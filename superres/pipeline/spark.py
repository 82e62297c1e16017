"""Spark plumbing shared by the jobs in ``spark_jobs/``: session, arguments, summaries.

The master is never set here: spark-submit passes it from Airflow's
``spark_default`` connection (``local[*]`` embedded, ``spark://...`` or
``k8s://...`` in production).  Only a job started without spark-submit falls
back to ``local[*]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

from superres.config import Settings
from superres.pipeline import layout

log = logging.getLogger("superres.spark")


def session(app: str):
    """A SparkSession with Arrow on and quiet console progress."""
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app)
    if not SparkConf().contains("spark.master"):
        builder = builder.master("local[*]")
    spark = (
        builder.config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.parquet.compression.codec", "zstd")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    return spark


def spark_schema(schema):
    """A pyarrow schema as the Spark StructType that mapInArrow wants."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def job_parser(description: str) -> argparse.ArgumentParser:
    """Arguments every job takes; defaults come from :class:`Settings` (env overrides)."""
    s = Settings.from_env()
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--ds", required=True, type=layout.check_ds)
    p.add_argument("--storage-uri", default=s.storage_uri)
    p.add_argument("--staging-uri", default=s.staging_uri)
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=s.scale)
    p.add_argument("--mode", choices=("evaluate", "upscale"), default=s.mode)
    p.add_argument("--tile-size", type=int, default=s.tile_size)
    p.add_argument("--max-pixels", type=int, default=s.max_pixels)
    p.add_argument("--models-dir", default=s.models_dir)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=s.device)
    p.add_argument("--batch-size", type=int, default=s.batch_size)
    p.add_argument("--partitions", type=int, default=0, help="0: Spark's default parallelism")
    return p


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return parser.parse_args(argv)


@contextmanager
def stage_summary(storage, ds: str, stage: str, extra: dict[str, Any]):
    """Time a stage and write ``reports/ds=…/stages/<stage>.json`` when it succeeds."""
    t0 = time.time()
    summary: dict[str, Any] = {"stage": stage, "ds": ds, **extra}
    yield summary
    summary["seconds"] = round(time.time() - t0, 3)
    storage.write_json(layout.report_key(ds, f"stages/{stage}.json"), summary)
    log.info("%s summary: %s", stage, json.dumps(summary, sort_keys=True))
