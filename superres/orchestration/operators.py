"""SparkSubmitOperator for the project's jobs, configured from the run description.

It builds the job's arguments from the ``resolve`` task's XCom at run time,
points spark-submit at this environment's Python and Spark when nothing else
is configured, and hands S3 credentials from the Airflow AWS connection to the
job through its process environment (never on the command line or in logs; on
YARN and Kubernetes, where the hook would put them on the command line, they are
held back and the cluster's own identity applies: ``env_for_cluster``).

In client deploy mode spark-submit's JVM maps a class-data-sharing archive that
the first task wrote (``class_sharing``), which takes 0.6-0.9 s off every task.

Before submitting it restarts the embedded Spark Connect server if it died
(``restart_embedded_spark_connect``), and renews the date's lease (one run writes a date at a time),
and when Airflow kills the task (SIGTERM -> ``on_kill``) it stops the whole
spark-submit process tree, JVM and Python workers included, so nothing is left
running or writing after the task is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

from superres.config import Settings
from superres.orchestration.class_sharing import class_sharing
from superres.orchestration.run import settings_of, spark_session_id
from superres.orchestration.services import spark_env, spark_submit_binary
from superres.pipeline.spark import LOCAL_JVM_OPTIONS

log = logging.getLogger(__name__)

# How long the JVM gets to run its shutdown hooks (stop the SparkContext, remove
# temp dirs, stop Python workers) after SIGTERM before the tree is SIGKILLed.
KILL_GRACE_S = 20.0

JOBS_DIR = Path(__file__).resolve().parents[2] / "spark_jobs"

DRIVER_JAVA_OPTIONS = "spark.driver.extraJavaOptions"
# spark-submit's own JVM when the job runs on a Spark Connect server (about 1 s less start-up).
CLIENT_JVM_CONF = {
    "spark.driver.memory": "256m",
    DRIVER_JAVA_OPTIONS: f"{LOCAL_JVM_OPTIONS} -XX:+UseSerialGC",
}


def s3_env(aws_conn_id: str) -> dict[str, str]:
    """Credentials, region and endpoint of an Airflow AWS connection, as AWS_* variables."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    hook = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="s3")
    creds = hook.get_credentials()
    env = {"AWS_ACCESS_KEY_ID": creds.access_key, "AWS_SECRET_ACCESS_KEY": creds.secret_key}
    if creds.token:
        env["AWS_SESSION_TOKEN"] = creds.token
    region = hook.conn_config.region_name
    if region:
        env["AWS_DEFAULT_REGION"] = region
    endpoint = hook.conn_config.get_service_endpoint_url("s3")
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


AWS_ENV_PREFIX = "AWS_"


def env_for_cluster(master: str, deploy_mode: str | None,
                    env: dict[str, str] | None) -> tuple[dict[str, str] | None, list[str]]:
    """The environment spark-submit may be given for this master, and the variables held back.

    spark-submit's hook passes ``env_vars`` in the process environment only for a
    client-mode driver.  On YARN and Kubernetes it writes each one as a ``--conf``
    argument (into the command line, the process table and the task log), so the
    AWS credentials are held back there: the driver uses the cluster's own identity
    (instance profile, IRSA, a Kubernetes secret).  A standalone master in cluster
    deploy mode takes no environment at all (the hook refuses it).
    """
    if not env:
        return env, []
    on_command_line = "yarn" in master or "k8s" in master
    if on_command_line:
        held = sorted(k for k in env if k.startswith(AWS_ENV_PREFIX))
        return {k: v for k, v in env.items() if k not in held}, held
    if deploy_mode == "cluster":
        return None, sorted(env)
    return env, []


def job_arguments(run: dict[str, Any], s: Settings) -> list[str]:
    """The job's command-line arguments (``superres.pipeline.spark.job_parser``) for this run."""
    args = [
        "--ds", run["ds"], "--storage-uri", s.storage_uri, "--staging-uri", s.staging_uri,
        "--scale", str(s.scale), "--mode", s.mode, "--tile-size", str(s.tile_size),
        "--max-pixels", str(s.max_pixels), "--models-dir", s.models_dir, "--device", s.device,
        "--batch-size", str(s.batch_size), "--backend", s.backend,
        "--sr-below-bicubic-db", str(s.sr_below_bicubic_db), "--near-constant-std", str(s.near_constant_std),
    ]
    if s.spark_remote:
        # The run's Spark tasks share one session on the server, so its Python workers stay warm.
        args += ["--spark-remote", s.spark_remote, "--spark-session-id", spark_session_id(run),
                 "--spark-connect-timeout-s", str(s.spark_connect_timeout_s)]
    return args


def restart_embedded_spark_connect(s: Settings, env: dict[str, str] | None = None) -> str | None:
    """Start the embedded Spark Connect server again if it died: a retry then finds it.

    Only the server this checkout's embedded setup runs (``make run`` / ``make up`` at
    ``spark_connect_local_url``, with its pid file in ``run_dir``) is restarted; anyone
    else's server is left alone.  Returns the start status, or None when nothing was done.
    """
    from superres.orchestration import services

    url = s.spark_remote
    if not url or url != s.spark_connect_local_url or services.listening(url):
        return None
    if not services.pid_file("spark-connect").exists():  # not ours to start
        return None
    status = services.ensure_spark_connect(url, dict(os.environ if env is None else env))
    log.warning("the embedded Spark Connect server at %s was not answering: %s", url, status)
    return status


class SparkJobOperator(SparkSubmitOperator):
    """Runs ``spark_jobs/<job>.py`` for the run's date through ``spark_default``."""

    def __init__(self, *, job: str, run_task_id: str = "resolve", **kwargs: Any) -> None:
        kwargs.setdefault("application", str(JOBS_DIR / f"{job}.py"))
        kwargs.setdefault("name", f"superres-{job}")
        super().__init__(**kwargs)
        self.job = job
        self.run_task_id = run_task_id
        self._killed = False

    def execute(self, context: Any) -> None:
        run = context["ti"].xcom_pull(task_ids=self.run_task_id)
        s = settings_of(run)
        self.application_args = job_arguments(run, s)
        restart_embedded_spark_connect(s)
        conf = dict(self.conf or {})
        if s.spark_remote:
            # The job is a client of a long-lived Spark Connect server: spark-submit's JVM only
            # launches the Python driver and then idles, so give it a small, quick-starting heap.
            conf = {**CLIENT_JVM_CONF, **conf}
        env = {**spark_env(), **(self.env_vars or {})}
        sharing = None
        spark_home = env.get("SPARK_HOME") or os.environ.get("SPARK_HOME")
        if s.jvm_class_sharing and spark_home and self._client_deploy_mode(s.spark_conn_id):
            sharing = class_sharing(Path(s.run_dir) / "jvm", Path(spark_home),
                                    "connect-client" if s.spark_remote else "driver", env)
            conf[DRIVER_JAVA_OPTIONS] = f"{conf.get(DRIVER_JAVA_OPTIONS, '')} {sharing.options}".strip()
        self.conf = conf
        if s.storage_uri.startswith("s3://"):
            env.update(s3_env(s.aws_conn_id))
        self.env_vars = env
        if not self._spark_binary:
            self._spark_binary = spark_submit_binary()
        self._conn_id = s.spark_conn_id
        from superres.orchestration.tasks import hold_date

        hold_date(run)
        self._killed = False
        ok = False
        try:
            super().execute(context)
            ok = not self._killed
        finally:
            if sharing is not None:
                sharing.finish(ok)
        if self._killed:
            # The JVM may exit 0 on SIGTERM; a job we stopped must never count as done.
            raise RuntimeError(f"spark job {self.job!r} was stopped by a kill signal before it finished")

    def _get_hook(self) -> Any:
        hook = super()._get_hook()
        conn = hook._connection  # the master and deploy mode the hook resolved from spark_default
        hook._env_vars, held = env_for_cluster(conn["master"], conn["deploy_mode"], hook._env_vars)
        if held:
            self.log.warning("spark-submit to %s (deploy mode %s) gets no %s from this task: the "
                             "cluster's own environment and identity apply there",
                             conn["master"], conn["deploy_mode"] or "client", ", ".join(held))
        return hook

    def _client_deploy_mode(self, conn_id: str) -> bool:
        """Whether spark-submit's JVM is the driver here (client mode), not a remote one."""
        mode = self._deploy_mode
        if mode is None:
            from airflow.sdk import BaseHook

            with contextlib.suppress(Exception):  # a missing connection fails in the hook, clearly
                mode = BaseHook.get_connection(conn_id).extra_dejson.get("deploy-mode")
        return (mode or "client") == "client"

    def on_kill(self) -> None:
        self._killed = True
        proc = getattr(self._hook, "_submit_sp", None) if self._hook is not None else None
        if proc is not None and proc.poll() is None:
            self.log.info("stopping spark-submit (pid %s) and its process tree", proc.pid)
            stop_process_tree(proc.pid, KILL_GRACE_S)
        super().on_kill()  # cluster-side kills (standalone driver, YARN, K8s)


def stop_process_tree(pid: int, grace_s: float) -> list[int]:
    """SIGTERM ``pid`` and every descendant, then SIGKILL what is left after ``grace_s``.

    Descendants are collected first: once the JVM exits its Python workers are
    re-parented and could no longer be found from ``pid``.  Returns the pids signalled.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in procs]
