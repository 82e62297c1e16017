"""Spark plumbing shared by the jobs in ``spark_jobs/``: session, arguments, summaries.

The master is never set here: spark-submit passes it from Airflow's
``spark_default`` connection (``local[*]`` embedded, ``spark://...`` or
``k8s://...`` in production).  Only a job started without spark-submit falls
back to ``local[*]``.  With ``--spark-remote sc://host:port`` a job is instead a
client of a long-lived Spark Connect server (``Settings.spark_remote``), which
saves every task the start of a Spark application.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from superres.config import Settings
from superres.pipeline import layout

log = logging.getLogger("superres.spark")


# Defaults for every job's session; a value already given (spark-submit --conf,
# spark-defaults.conf) wins.  They cut fixed cost and bound memory:
SESSION_DEFAULTS = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.parquet.compression.codec": "zstd",
    # Nobody looks at a batch job's web UI here; not starting Jetty saves start-up time.
    "spark.ui.enabled": "false",
    # Rows per Arrow batch handed to mapInArrow/applyInPandas.  Rows here are large (a
    # tile is 83 KB, a photo several hundred KB), so Spark's 10,000 would put a whole
    # partition in one batch and a worker's memory would grow with the number of images.
    "spark.sql.execution.arrow.maxRecordsPerBatch": "32",
    # The same on the JVM side: rows per vectorized Parquet read batch (default 4,096, i.e.
    # 1 GB of 256 KB SR tiles, which exhausts a local driver's 1 GB heap at N = 64) ...
    "spark.sql.parquet.columnarReaderBatchSize": "64",
    # ... and the Parquet row group a writer buffers per open file (default 128 MB).
    "spark.hadoop.parquet.block.size": str(16 * 2**20),
    # Keep Python workers (and the model each one has built) for the next task.
    "spark.python.worker.reuse": "true",
    # pyspark's daemon, minus a per-task re-read of Spark's own zip archives (worker_daemon).
    "spark.python.daemon.module": "superres.pipeline.worker_daemon",
}


# Jobs whose rows are whole images (a photo, an LR PNG, a 4x SR PNG: 0.3-3 MB each) use
# this many rows per Arrow and Parquet batch instead: 32 rows would be a whole partition
# at N = 64 on two cores, so a task's memory would grow with the batch of the day.
IMAGE_ROWS_PER_BATCH = 4
BATCH_ROW_KEYS = ("spark.sql.execution.arrow.maxRecordsPerBatch", "spark.sql.parquet.columnarReaderBatchSize")


def _local_cores(master: str) -> int | None:
    """Cores of a ``local[N]`` / ``local[*]`` master; None for a cluster."""
    import os
    import re

    m = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\d+)?\])?", master.strip())
    if not m:
        return None
    n = m.group(1)
    return len(os.sched_getaffinity(0)) if n in (None, "*") else int(n)


# Session-level (runtime SQL) settings a Spark Connect client may set on its own session;
# the rest of SESSION_DEFAULTS are static and belong on the server (see server_conf).
RUNTIME_KEYS = (
    "spark.sql.execution.arrow.pyspark.enabled",
    "spark.sql.session.timeZone",
    "spark.sql.parquet.compression.codec",
    "spark.sql.execution.arrow.maxRecordsPerBatch",
    "spark.sql.parquet.columnarReaderBatchSize",
)


def _local_defaults(master: str) -> dict[str, str]:
    """Extra defaults for a local master: 200 shuffle partitions are 200 tiny tasks on a few cores.

    ``spark.default.parallelism`` is what a local SparkContext uses anyway; it is set so
    that a Spark Connect client, which cannot ask the SparkContext, can read it (parallelism()).
    A local master's shuffle files never cross a network, and what the jobs shuffle (PNGs,
    float16 SR tiles) barely compresses, so compressing them only costs CPU: the evaluate
    job's join and repartition of 64 photos took 4.1-4.7 JVM CPU-s with LZ4, 3.3-3.6 without
    (benchmarks/README.md, *Spark session defaults*).  A cluster keeps Spark's default.
    """
    cores = _local_cores(master)
    if not cores:
        return {}
    return {"spark.sql.shuffle.partitions": str(max(2, 2 * cores)), "spark.default.parallelism": str(cores),
            "spark.shuffle.compress": "false", "spark.shuffle.spill.compress": "false"}


# On a local master the JVM shares the machine's few cores with the Python workers, and
# C2, the optimising JIT, kept compiling through every run of the inference stage (about
# 1 CPU-s a run, still in the fourth).  C1 alone: the JVM's CPU per run fell from 2.3-3.0
# to 1.6-2.1 s and the stage ran about 10 % faster (benchmarks/README.md, *Spark session defaults*).  A
# cluster's long-lived executors on their own cores keep the default, tiered C2.
LOCAL_JVM_OPTIONS = "-XX:TieredStopAtLevel=1"


def local_jvm_options(master: str) -> str:
    """Extra JVM options for a driver on ``master``: :data:`LOCAL_JVM_OPTIONS` when it is local."""
    return LOCAL_JVM_OPTIONS if _local_cores(master) else ""


def server_conf(master: str) -> dict[str, str]:
    """--conf values for a Spark Connect server that serves these jobs (see ``services``)."""
    return {**SESSION_DEFAULTS, **_local_defaults(master)}


def prefer_installed_pyspark() -> list[str]:
    """Import pyspark from the installed package, not the copy spark-submit puts on sys.path.

    spark-submit prepends ``$SPARK_HOME/python/lib/pyspark.zip`` to the driver's
    PYTHONPATH.  With a pip-installed pyspark, SPARK_HOME *is* that package, so the zip
    holds the same sources, but a zip has no compiled bytecode: every job recompiled
    pyspark's modules, about 3 s per Spark task here.  Only zips inside the installed
    package are dropped (a separate Spark distribution's are kept); returns what was removed.
    """
    import importlib.util
    import sys
    from pathlib import Path

    if "pyspark" in sys.modules:
        return []
    zips = [p for p in sys.path if p.endswith(".zip") and Path(p).name.startswith(("pyspark", "py4j"))]
    if not zips:
        return []
    kept = [p for p in sys.path if p not in zips]
    saved, sys.path[:] = list(sys.path), kept
    spec = importlib.util.find_spec("pyspark")
    package = Path(spec.origin).parent if spec and spec.origin else None
    dropped = [z for z in zips if package is not None and Path(z).resolve().is_relative_to(package.resolve())]
    sys.path[:] = [p for p in saved if p not in dropped]
    return dropped


def session(app: str, remote: str = "", rows_per_batch: int | None = None, session_id: str = "",
            connect_timeout_s: float = 120.0):
    """A SparkSession with Arrow on, quiet console progress and the defaults above.

    ``rows_per_batch`` overrides both batch sizes of :data:`BATCH_ROW_KEYS` for this
    session (jobs over whole images pass :data:`IMAGE_ROWS_PER_BATCH`).

    With ``remote`` (``sc://host:port``) the job is a client of a long-lived Spark
    Connect server instead of starting its own application: no SparkContext is
    created here and spark-submit's JVM stays idle.  A SIGTERM (Airflow killing the
    task) then interrupts the session's running operations on the server before the
    client exits, so a killed task never leaves a job writing on the server.
    ``session_id`` joins that server-side session (see :func:`_remote_session`).  A server
    that does not answer fails the job within about ``connect_timeout_s``, with a
    :class:`SparkConnectUnavailable` naming it (see :func:`bounded_retries`).
    """
    prefer_installed_pyspark()
    spark = (_remote_session(app, remote, session_id, connect_timeout_s) if remote
             else _classic_session(app))
    if rows_per_batch:
        for key in BATCH_ROW_KEYS:
            spark.conf.set(key, str(rows_per_batch))
    return spark


def _classic_session(app: str):
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    # Connect to spark-submit's JVM first: a SparkConf() made before the gateway exists is a
    # plain, empty Python conf that sees neither spark-submit's --master (every job would run
    # on local[*] whatever spark_default says) nor its --conf values.
    SparkContext._ensure_initialized()
    given = SparkConf()
    builder = SparkSession.builder.appName(app)
    if not given.contains("spark.master"):
        builder = builder.master("local[*]")
    conf = {**SESSION_DEFAULTS, **_local_defaults(given.get("spark.master", "local[*]"))}
    for key, value in conf.items():
        if not given.contains(key):
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


# What a Spark Connect server answers for a session id it has released or timed out.
SESSION_CLOSED = "INVALID_HANDLE.SESSION_CLOSED"


def connect_url(remote: str, session_id: str = "") -> str:
    """``remote`` with Spark Connect's ``session_id`` parameter, unless it already names one."""
    if not session_id or "session_id=" in remote:
        return remote
    uuid.UUID(session_id)  # the server only takes a UUID; fail here, with the value, if it is not
    base = remote if "/;" in remote else remote.rstrip("/") + "/"
    return f"{base};session_id={session_id}"


class SparkConnectUnavailable(RuntimeError):
    """The Spark Connect server a job runs on does not answer."""


def check_reachable(remote: str, timeout_s: float) -> None:
    """Fail at once, naming the server, when nothing accepts connections at ``remote``.

    Spark Connect's client would otherwise retry the first call for about ten minutes.
    """
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(remote.split(";", 1)[0].replace("sc://", "http://", 1))
    host, port = parts.hostname or "127.0.0.1", parts.port or 15002
    try:
        socket.create_connection((host, port), timeout=min(timeout_s, 10.0)).close()
    except OSError as exc:
        raise SparkConnectUnavailable(f"the Spark Connect server at {remote} does not answer "
                                      f"({exc.strerror or exc})") from None


def bounded_retries(timeout_s: float) -> dict[str, Any]:
    """Spark Connect client retry settings whose backoffs add up to about ``timeout_s``.

    The client's default retries one call for at least ten minutes when the server has gone;
    this keeps its exponential backoff (50 ms, x4, at most 60 s a wait) but stops it once the
    waits reach ``timeout_s``.
    """
    waits, backoff, total = 0, 50.0, 0.0
    while total < timeout_s * 1000.0:
        total += min(backoff, 60_000.0)
        backoff *= 4
        waits += 1
    return {"max_retries": waits, "initial_backoff": 50, "backoff_multiplier": 4.0, "max_backoff": 60_000,
            "max_server_retry_delay": int(timeout_s * 1000)}


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the Spark Connect server stopped answering (retries ran out)."""
    text = f"{type(exc).__name__}: {exc}"
    lost = ("RETRIES_EXCEEDED", "RetriesExceeded", "UNAVAILABLE", "Connection refused")
    return any(s in text for s in lost)


def _connect(app: str, url: str, fresh: bool = False, timeout_s: float = 120.0):
    from pyspark.sql import SparkSession
    from pyspark.sql.connect.client.retries import DefaultPolicy

    builder = SparkSession.builder.remote(url).appName(app)
    spark = builder.create() if fresh else builder.getOrCreate()
    spark.client.set_retry_policies([DefaultPolicy(**bounded_retries(timeout_s))])
    for key in RUNTIME_KEYS:  # every time: a joined session keeps what the last job set
        spark.conf.set(key, SESSION_DEFAULTS[key])
    return spark


def _remote_session(app: str, remote: str, session_id: str = "", timeout_s: float = 120.0):
    """A Spark Connect client session; with ``session_id``, the DAG run's shared one.

    A Spark Connect server starts a Python daemon, and so fresh Python workers with
    their imports, for every session: 2.2-2.5 s for a job in a fresh session against
    0.16-0.23 s in a joined one (benchmarks/README.md, *What limits each figure*).  The
    Spark tasks of one DAG run therefore join one session (the
    operator passes an id made from the run), so each job after the first finds
    the workers the last one left warm.  Such a session is not released when the
    job ends (the run's next task joins it); the server drops it after its idle
    timeout.  If it already has, the server refuses the id and the job starts a
    session of its own.  The jobs of a run run one after another, and each sets
    every session-level setting it depends on, so one job's settings never leak
    into the next.
    """
    import os
    import signal

    # spark-submit exports MASTER (spark_default's master) to the Python driver; a client
    # refuses to start with both a master and a remote, and the master is the server's.
    os.environ.pop("MASTER", None)
    check_reachable(remote, timeout_s)
    try:
        spark = _connect(app, connect_url(remote, session_id), timeout_s=timeout_s)
    except Exception as exc:
        if connection_lost(exc):
            raise SparkConnectUnavailable(f"the Spark Connect server at {remote} stopped answering "
                                          f"while the job connected: {str(exc).splitlines()[0]}") from exc
        if not session_id or SESSION_CLOSED not in str(exc):
            raise
        log.warning("the run's Spark Connect session %s is closed on the server (idle past its "
                    "timeout); this job starts a session of its own", session_id)
        spark = _connect(app, remote, fresh=True, timeout_s=timeout_s)
    else:
        if session_id:
            # stop() then closes the connection without releasing the run's session.
            spark.release_session_on_close = False
    _connected.append(remote)
    spark.addTag(app)
    previous = signal.getsignal(signal.SIGTERM)

    def interrupt(signum, frame):
        log.warning("SIGTERM: interrupting this job's operations on %s", remote)
        try:
            spark.interruptTag(app)
        finally:
            signal.signal(signal.SIGTERM, previous if callable(previous) else signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, interrupt)
    log.info("running on the Spark Connect server at %s (session %s)", remote, spark.session_id)
    return spark


def is_remote(spark) -> bool:
    """Whether ``spark`` is a Spark Connect client session."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def where(spark) -> dict[str, str]:
    """Where a job ran, for its stage summary: its own application, or a Spark Connect server."""
    if is_remote(spark):
        return {"via": "spark-connect", "master": spark.conf.get("spark.master"), "session": spark.session_id}
    return {"via": "spark-submit", "master": spark.sparkContext.master}


def parallelism(spark) -> int:
    """The default number of partitions: the SparkContext's, or the Connect server's setting."""
    if not is_remote(spark):
        return spark.sparkContext.defaultParallelism
    given = spark.conf.get("spark.default.parallelism", None)
    if given:
        return int(given)
    cores = _local_cores(spark.conf.get("spark.master", ""))
    return cores or int(spark.conf.get("spark.sql.shuffle.partitions"))


def num_partitions(df) -> int:
    """Partitions of a DataFrame as read: exact classically, the number of input files over Connect."""
    if is_remote(df.sparkSession):
        return len(df.inputFiles())
    return df.rdd.getNumPartitions()


# Parquet codec of each staging dataset.  Photos and PNGs (images, outputs, evaluated) are
# compressed already and the network's output (sr_tiles, stored as float16) barely
# compresses: at N = 64, zstd left outputs at 82 MB and took the float32 sr_tiles from 259
# to 218 MB, for 40-60 % more JVM CPU per write than none (benchmarks/README.md,
# *Spark session defaults*).
# The input tiles, Y values derived from 8-bit pixels, halve with zstd, so they keep it.
STAGING_CODECS = {"images": "none", "tiles": "zstd", "sr_tiles": "none", "outputs": "none",
                  "evaluated": "none", "metrics": "zstd"}


# A Parquet writer buffers its row group in the JVM heap until it reaches parquet.block.size
# (16 MB here), but parquet-java first measures it after parquet.page.size.row.check.min
# rows, 100 by default.  Rows here are whole PNGs (1.4 MB at x2 of 512 px, 5.5 MB at x4):
# a task writing 60 of them buffered one 69 MB row group, and 100 x4 outputs would be
# 550 MB, so a task's memory grew with the images it wrote.  Measuring from the 4th row
# keeps row groups near 16 MB whatever the row size (benchmarks/README.md, *Spark session
# defaults*).
ROW_GROUP_CHECK_ROWS = 4


def staging_writer(df, dataset: str):
    """``df.write`` that overwrites (a rerun replaces the date's partition) with the dataset's codec.

    Row groups stay near ``parquet.block.size`` however large the rows (:data:`ROW_GROUP_CHECK_ROWS`).
    """
    if dataset not in STAGING_CODECS:
        raise ValueError(f"unknown staging dataset {dataset!r}")
    return (df.write.mode("overwrite").option("compression", STAGING_CODECS[dataset])
            .option("parquet.page.size.row.check.min", str(ROW_GROUP_CHECK_ROWS)))


def spark_schema(schema):
    """A pyarrow schema as the Spark StructType that mapInArrow wants."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def map_in_arrow(df, body: Callable[[Iterator[Any]], Iterator[Any]], schema):
    """``df.mapInArrow(body)`` to a pyarrow ``schema``, every worker trimming its heap after a partition.

    The stages of a run share their Python workers, so what one stage's partition freed
    goes back to the OS before the next (:func:`superres.pipeline.worker_memory.trimming`).
    ``body`` goes to the workers by cloudpickle: a function, a ``functools.partial`` or a closure.
    """
    def trimmed(batches: Iterator[Any]) -> Iterator[Any]:
        # Imported in the worker: the DAG file imports this module at parse time (operators).
        from superres.pipeline.worker_memory import trimming

        return trimming(body(batches))

    return df.mapInArrow(trimmed, spark_schema(schema))


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
    p.add_argument("--sr-below-bicubic-db", type=float, default=s.sr_below_bicubic_db,
                   help="evaluate's per-image gate: flag SR this far below its own bicubic (dB)")
    p.add_argument("--near-constant-std", type=float, default=s.near_constant_std,
                   help="evaluate's per-image gate: flag an output whose std (0..255) is below this")
    p.add_argument("--models-dir", default=s.models_dir)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=s.device)
    p.add_argument("--batch-size", type=int, default=s.batch_size)
    p.add_argument("--backend", default=s.backend,
                   help="inference backend (superres.engine.BACKENDS; auto: fast)")
    p.add_argument("--partitions", type=int, default=0, help="0: Spark's default parallelism")
    p.add_argument("--spark-remote", default=s.spark_remote,
                   help="sc://host:port of a Spark Connect server; empty: start a Spark application")
    p.add_argument("--spark-connect-timeout-s", type=float, default=s.spark_connect_timeout_s,
                   help="fail when the Spark Connect server has not answered for this long")
    p.add_argument("--spark-session-id", default="",
                   help="UUID of the Connect session to join (a DAG run's tasks share one); empty: a new one")
    return p


_connected: list[str] = []  # the Spark Connect server this job is a client of, once connected


def run_job(main: Callable[[], int]) -> int:
    """A Spark job's entry point: a Spark Connect server that stopped answering ends the job
    with one line naming it (exit 1), not a gRPC traceback after ten minutes of retries."""
    try:
        return main()
    except SparkConnectUnavailable as exc:
        message = str(exc)
    except Exception as exc:
        if not (_connected and connection_lost(exc)):
            raise
        message = (f"the Spark Connect server at {_connected[-1]} stopped answering: "
                   f"{str(exc).strip().splitlines()[0]}")
    log.error("%s", message)
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 1


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
