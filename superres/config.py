"""The one place configuration lives: typed, with defaults for the embedded setup.

Precedence, lowest first: the defaults below, environment variables
(``SUPERRES_<FIELD>``, upper case), then per-run overrides such as DAG params
(:meth:`Settings.override`).  Production switches storage, Spark, Picsum and
the notifier by changing values here, never code.

Secrets (the callback HMAC key) are held as :class:`Secret`, whose ``repr``
is masked so they cannot leak through logs or ``run.json``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "SUPERRES_"
MODES = ("evaluate", "upscale")


class Secret(str):
    """A string that never shows itself in repr/str formatting of containers or logs."""

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"

    def reveal(self) -> str:
        return str.__str__(self)


@dataclass(frozen=True)
class Settings:
    # Storage: a local directory or s3://bucket/prefix (via the aws connection).
    storage_uri: str = str(PROJECT_ROOT / "data")
    # Where Spark writes intermediate Parquet: any path every Spark node can reach
    # (a local dir for local[*]; hdfs://, s3a:// or a shared mount on a cluster).
    staging_uri: str = str(PROJECT_ROOT / "data" / "_staging")
    models_dir: str = str(PROJECT_ROOT / "include" / "models")

    # Source photos: the offline Picsum-compatible server by default.
    picsum_url: str = "http://127.0.0.1:8899"
    fetch_timeout_s: float = 10.0  # connect and read timeout per request
    fetch_retries: int = 4  # attempts after the first one
    fetch_backoff_s: float = 0.5  # base of the exponential backoff
    fetch_concurrency: int = 4
    min_success_ratio: float = 0.5  # below this the fetch task fails the run
    max_pixels: int = 40_000_000  # decompression-bomb limit
    # Longest side over shortest side (superres.images.DEFAULT_MAX_ASPECT_RATIO): a thin strip
    # costs up to ~15x a photo's work per pixel (FSRCNN's halo), so the pixel limit alone does
    # not bound the work.  Checked with max_pixels, from the header, by the fetch check.
    max_aspect_ratio: float = 100.0
    # Hosts (comma-separated, "*.example.com" allowed) that photo requests may be redirected to,
    # besides picsum_url's own host: Picsum redirects every image to its CDN.
    picsum_allowed_hosts: str = "fastly.picsum.photos"

    # The run.
    num_images: int = 8
    scale: int = 2
    tile_size: int = 192  # largest LR tile side; images are cut into even tiles (512 -> 3 x 171)
    image_width: int = 512
    image_height: int = 512
    mode: str = "evaluate"
    batch_size: int = 16
    device: str = "auto"
    # The per-image gate of the evaluate stage (superres.pipeline.evaluate.image_flags): an image
    # whose SR PSNR is more than sr_below_bicubic_db below its own bicubic's is flagged
    # sr_below_bicubic; one whose output's standard deviation (0..255, the largest over its
    # colour channels) is below near_constant_std is flagged near_constant_output.  Flagged
    # images are listed in metrics.json and on the gallery, and left out of its "mean".
    sr_below_bicubic_db: float = 3.0
    near_constant_std: float = 1.0
    backend: str = "auto"  # inference backend (superres.engine.BACKENDS); auto: fast

    # One run writes a date at a time (superres.orchestration.lease): how long a lease lives
    # without renewal, and how long a second run of the same date waits for it.  Each task
    # renews the lease when it starts, so it must outlive the longest task (task_timeout_s):
    # a lease that expired under a running task would let a second run write the same date.
    lease_ttl_s: int = 14400
    lease_wait_s: int = 3600
    lease_poll_s: float = 10.0
    # True only where every task of a run runs in one process (`make run`'s `airflow dags
    # test`): the lease then names that process, and a killed run's date is free at once.
    lease_process_scoped: bool = False
    # Longest any one task may run (Airflow's execution_timeout): a hung Spark job or an
    # unreachable Spark Connect server fails the task, which is retried, and notify still
    # reports the run.  It includes waiting for the date's lease, so it must exceed lease_wait_s.
    # Read when the DAG file is parsed (an environment variable, not a DAG param).
    task_timeout_s: int = 10800

    # Pid files and logs of the local services `make up` / `make run` start, and the
    # spark-submit JVM's class-data-sharing archive (jvm/).
    run_dir: str = str(PROJECT_ROOT / ".run")
    # AppCDS for every Spark task's spark-submit JVM in client deploy mode (0.6-0.9 s less
    # start-up a task; superres.orchestration.class_sharing). False: plain JVM start.
    jvm_class_sharing: bool = True

    # Airflow connection ids.
    aws_conn_id: str = "aws_default"
    spark_conn_id: str = "spark_default"
    # Spark Connect.  Empty: each Spark task starts its own application on spark_default's
    # master (a JVM, a SparkContext and fresh Python workers per task).  "sc://host:port": the
    # jobs are clients of a long-lived Spark Connect server, so one JVM serves every task of
    # every run, and the tasks of a run share one session, whose Python workers (torch
    # imported, model built) stay warm from task to task.  `make run` / `make up`
    # start a local server at spark_connect_local_url and use it unless this is set.
    spark_remote: str = ""
    # The longest a Spark job waits on a Spark Connect server that does not answer (the first
    # connection, then the client's retries of any one call) before it fails, naming the server.
    spark_connect_timeout_s: int = 120
    spark_connect_local_url: str = "sc://127.0.0.1:15002"
    # A Spark Python worker daemon with no worker alive for this long ends itself, and Spark
    # starts another when it needs one (superres.pipeline.worker_daemon): Spark 4.1 never
    # stops the daemon of a Connect session, so a long-lived server would keep one per run.
    # Past the JVM's own minute for idle workers.  0: never.
    worker_daemon_idle_s: float = 300.0
    notifier_conn_id: str = "notifier_default"
    # Base URL of the notifier, for re-delivery outside Airflow and for `make run`'s
    # notifier_default connection; in Airflow the connection is what the callback uses.
    notifier_url: str = "http://127.0.0.1:8090"
    # How `python -m notifier` serves it (notifier.serve: waitress, for `make up`, `make run`
    # and compose alike).  Every connection is bounded: one with no byte in either direction
    # for notifier_idle_timeout_s is closed (a silent client, an idle keep-alive); a request
    # whose line, headers and body have not all arrived notifier_request_timeout_s after its
    # first byte is dropped (a slow-header client trickling bytes); headers past
    # notifier_max_header_bytes are refused with 431; past notifier_connection_limit open
    # connections, new ones wait in the listen backlog until one closes.  notifier_threads
    # run the app; requests are buffered whole before the app sees them.
    notifier_threads: int = 4
    notifier_connection_limit: int = 100
    notifier_idle_timeout_s: int = 30
    notifier_request_timeout_s: int = 60
    notifier_max_header_bytes: int = 65536

    # Notifier callback signing.
    callback_secret: Secret = field(default_factory=lambda: Secret(""))
    callback_max_skew_s: int = 300

    def __post_init__(self) -> None:
        if self.scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4, got {self.scale}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("num_images", "tile_size", "image_width", "image_height", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("spark_remote", "spark_connect_local_url"):
            value = getattr(self, name)
            if value and not value.startswith("sc://"):
                raise ValueError(f"{name} must be empty or a Spark Connect URL sc://host:port, got {value!r}")
        if self.task_timeout_s <= self.lease_wait_s:
            raise ValueError(f"task_timeout_s ({self.task_timeout_s}) must exceed lease_wait_s "
                             f"({self.lease_wait_s}): a task waiting for its date's lease would time out")
        if self.lease_ttl_s <= self.task_timeout_s:
            raise ValueError(f"lease_ttl_s ({self.lease_ttl_s}) must exceed task_timeout_s "
                             f"({self.task_timeout_s}): each task renews its date's lease when it starts, "
                             "so a shorter lease could expire under a running task")
        if self.worker_daemon_idle_s < 0:
            raise ValueError(f"worker_daemon_idle_s must be >= 0 (0: never), got {self.worker_daemon_idle_s}")
        for name in ("notifier_threads", "notifier_connection_limit", "notifier_idle_timeout_s",
                     "notifier_request_timeout_s", "notifier_max_header_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.spark_connect_timeout_s < 1:
            raise ValueError(f"spark_connect_timeout_s must be >= 1, got {self.spark_connect_timeout_s}")
        if not 0.0 <= self.min_success_ratio <= 1.0:
            raise ValueError("min_success_ratio must be within [0, 1]")
        if not self.max_aspect_ratio >= 1.0:  # NaN fails too
            raise ValueError(f"max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}")
        for name in ("sr_below_bicubic_db", "near_constant_std"):
            value = getattr(self, name)
            if not 0.0 <= value < float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not isinstance(self.callback_secret, Secret):
            object.__setattr__(self, "callback_secret", Secret(self.callback_secret))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _coerce(f, raw)
        # The README's short form: PICSUM_URL=https://picsum.photos make run
        if "picsum_url" not in values and env.get("PICSUM_URL"):
            values["picsum_url"] = env["PICSUM_URL"]
        return cls(**values)

    def override(self, params: Mapping[str, Any] | None) -> Settings:
        """A copy with the known, non-None keys of ``params`` (e.g. DAG params) applied."""
        if not params:
            return self
        names = {f.name: f for f in fields(self)}
        changes = {k: _coerce(names[k], v) for k, v in params.items() if k in names and v is not None}
        return dataclasses.replace(self, **changes)

    def public(self) -> dict[str, Any]:
        """A JSON-able view for reports and logs, with secrets masked.

        Secrets become ``***``, and so does a password inside a URL
        (``http://user:***@host``); :func:`superres.orchestration.run.settings_of`
        takes masked fields back from the environment.
        """
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Secret):
                out[f.name] = "***" if v else ""
            elif isinstance(v, str):
                out[f.name] = mask_url_password(v)
            else:
                out[f.name] = v
        return out


MASK = "***"


def mask_url_password(value: str) -> str:
    """``scheme://user:***@host/...`` for a URL that carries a password; anything else as is."""
    parts = urlsplit(value)
    if not parts.scheme or parts.password is None:
        return value
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{parts.username or ''}:{MASK}@{host}", parts.path, parts.query,
                       parts.fragment))


def is_masked(value: Any) -> bool:
    return isinstance(value, str) and (value == MASK or f":{MASK}@" in value)


def _coerce(f: dataclasses.Field, raw: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind == "Secret":
        return Secret(str(raw))
    if kind == "bool":
        return str(raw).lower() in ("1", "true", "yes", "on")
    return str(raw)


def load(params: Mapping[str, Any] | None = None) -> Settings:
    """Settings from the environment, with per-run ``params`` on top."""
    return Settings.from_env().override(params)
