"""The DAG's Spark jobs as clients of a long-lived Spark Connect server (``make run``'s default).

``SUPERRES_SPARK_REMOTE=sc://…`` is the only change from the classic run, where each Spark task
starts its own application through spark-submit.  The same date is run both ways on the same
data; every output must be byte-identical, and each job's stage summary must say it ran on the
server.  Then: a SIGTERMed client stops its operation on the server (Airflow's on_kill path),
and the server is reused while the code is unchanged and restarted when it changed (its Python
workers keep the modules they imported).  Same small shape as the standalone-cluster test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_dag_e2e import PER_RUN, run_dag
from tests.e2e.test_standalone_cluster import CONF, JOBS, local_files

pytestmark = [pytest.mark.e2e, pytest.mark.spark]

DS = "2026-01-14"
OUTPUT_PREFIXES = (f"raw/ds={DS}/", f"quarantine/ds={DS}/", f"sr/ds={DS}/", f"reports/ds={DS}/")


def deterministic(files: dict[str, bytes]) -> dict[str, bytes]:
    """The date's outputs, without the per-run reports (timings, run ids)."""
    return {k: v for k, v in files.items()
            if k.startswith(OUTPUT_PREFIXES) and not any(p in k for p in PER_RUN)}


def stage_summaries(storage: Path, ds: str) -> dict[str, dict[str, Any]]:
    folder = storage / "reports" / f"ds={ds}" / "stages"
    return {job: json.loads((folder / f"{job}.json").read_text()) for job in JOBS}


def test_connect_run_is_byte_identical_to_spark_submit_run(
        pipeline_env: dict[str, Any], spark_connect: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    storage = pipeline_env["storage"]
    run_dag(DS, **CONF.copy())
    classic = deterministic(local_files(storage))
    assert {s["spark"]["via"] for s in stage_summaries(storage, DS).values()} == {"spark-submit"}
    assert any(k.startswith(f"sr/ds={DS}/") and k.endswith(".png") for k in classic)

    monkeypatch.setenv("SUPERRES_SPARK_REMOTE", spark_connect["url"])
    run_dag(DS, **CONF.copy())  # the same date again: every partition is replaced
    connect = deterministic(local_files(storage))

    assert sorted(connect) == sorted(classic)
    differ = sorted(k for k in classic if classic[k] != connect[k])
    assert differ == [], f"the Spark Connect run differs from the spark-submit run in {differ}"
    where = {job: s["spark"] for job, s in stage_summaries(storage, DS).items()}
    sessions = {w.pop("session") for w in where.values()}
    assert where == {job: {"via": "spark-connect", "master": "local[2]"} for job in JOBS}
    assert len(sessions) == 1, f"the run's Spark tasks did not share one Connect session: {sessions}"


JOINER = textwrap.dedent("""
    import json, os, sys
    import pyarrow as pa
    from superres.pipeline.spark import session

    url, sid, rows, then = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    spark = session("superres-test-joiner", url, rows or None, session_id=sid)

    def pids(batches):
        for b in batches:
            yield pa.RecordBatch.from_pylist([{"pid": os.getpid(), "daemon": os.getppid()}])

    got = spark.range(0, 4, 1, 2).mapInArrow(pids, "pid long, daemon long").collect()
    rows_now = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    print("JOINED " + json.dumps({"session": spark.session_id, "pids": sorted({r.pid for r in got}),
                                  "daemons": sorted({r.daemon for r in got}), "rows": rows_now}))
    if then == "release":
        spark.client.release_session()
    spark.stop()
""")


def _joiner(spark_connect: dict[str, Any], sid: str):
    """A job (a client process) on session ``sid``: what it saw, and its output."""
    env = {**spark_connect["env"]}
    env.pop("MASTER", None)

    def job(rows: int, then: str = "keep") -> tuple[dict[str, Any], str]:
        done = subprocess.run([sys.executable, "-c", JOINER, spark_connect["url"], sid, str(rows), then],
                              env=env, capture_output=True, text=True, timeout=180)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        line = next(x for x in done.stdout.splitlines() if x.startswith("JOINED "))
        return json.loads(line[len("JOINED "):]), out

    return job


def test_jobs_given_one_session_id_share_the_servers_warm_python_workers(
        spark_connect: dict[str, Any]) -> None:
    """What the run's Spark tasks do (operators.job_arguments): join one session, keep it, and
    start their own once the server has closed it."""
    import uuid

    sid = str(uuid.uuid4())
    job = _joiner(spark_connect, sid)

    first, _ = job(4)
    assert first["session"] == sid and first["rows"] == "4"
    second, _ = job(0)
    # the session outlived the first job; its Python workers served the second without a new start,
    # and the first job's batch setting did not leak into a job that asked for the default
    assert second["session"] == sid and set(second["pids"]) <= set(first["pids"])
    assert second["rows"] == "32"
    job(0, then="release")  # as the server does when a session idles past its timeout
    fourth, out = job(0)
    assert fourth["session"] != sid and "is closed on the server" in out
    assert not set(fourth["pids"]) & set(first["pids"] + second["pids"])


CLIENT = textwrap.dedent("""
    import os, sys, time
    import pyarrow as pa
    from superres.pipeline.spark import session

    marker = sys.argv[2]
    spark = session("superres-test-sleeper", sys.argv[1])

    def sleeper(batches):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(600)
        for b in batches:
            yield b

    spark.range(1).mapInArrow(sleeper, "id long").collect()
""")


def test_sigterm_of_a_client_interrupts_its_operation_on_the_server(
        spark_connect: dict[str, Any], tmp_path: Path) -> None:
    marker = tmp_path / "worker.pid"
    env = {**spark_connect["env"]}
    env.pop("MASTER", None)
    client = subprocess.Popen([sys.executable, "-c", CLIENT, spark_connect["url"], str(marker)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 180
        while not (marker.exists() and marker.read_text()) and time.time() < deadline:
            assert client.poll() is None, client.communicate()[0]
            time.sleep(0.2)
        worker = int(marker.read_text())
        os.kill(worker, 0)  # the server's Python worker is running the sleeper

        client.send_signal(signal.SIGTERM)
        out = client.communicate(timeout=60)[0]
        assert client.returncode != 0
        assert "interrupting this job's operations" in out
        # The task was cancelled on the server: its Python worker is stopped, long before 600 s.
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the server's worker {worker} still runs the killed client's task")
    finally:
        if client.poll() is None:
            client.kill()


def test_server_is_reused_for_the_same_code_and_restarted_for_new_code(spark_connect: dict[str, Any]) -> None:
    from superres.orchestration import services

    url, env = spark_connect["url"], spark_connect["env"]
    first = int(services.pid_file("spark-connect").read_text())
    assert services.ensure_spark_connect(url, env, master="local[2]") == "reused"
    assert int(services.pid_file("spark-connect").read_text()) == first

    (spark_connect["run_dir"] / "spark-connect.code").write_text("code of an older checkout")
    assert services.ensure_spark_connect(url, env, master="local[2]") == "restarted (code changed)"
    second = int(services.pid_file("spark-connect").read_text())
    assert second != first and services.alive(second) and not services.alive(first)
    assert (spark_connect["run_dir"] / "spark-connect.code").read_text() == services.code_fingerprint()


def test_a_session_whose_worker_daemon_ended_idle_gets_a_new_one(spark_connect: dict[str, Any]) -> None:
    """superres.pipeline.worker_daemon ends itself with no worker left (after 2 s here: the
    fixture's SUPERRES_WORKER_DAEMON_IDLE_S) once the JVM has closed its idle workers (after a
    minute); the session's next job then runs on a daemon the JVM starts again."""
    import uuid

    from superres.orchestration import services

    sid = str(uuid.uuid4())
    job = _joiner(spark_connect, sid)
    first, _ = job(0)
    [daemon] = first["daemons"]
    deadline = time.time() + 150
    while services.alive(daemon) and time.time() < deadline:
        time.sleep(1)
    assert not services.alive(daemon), "the idle worker daemon did not end"

    second, _ = job(0)
    assert second["session"] == sid
    assert second["daemons"] != [daemon] and not set(second["pids"]) & set(first["pids"])
    log = "\n".join(p.read_text(errors="replace") for p in spark_connect["run_dir"].rglob("*.log"))
    assert "no Python workers for 2 s" in log
