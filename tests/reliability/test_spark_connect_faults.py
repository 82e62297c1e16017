"""A Spark Connect server that is not there, or dies under a running job.

Spark Connect's client retries one call for at least ten minutes by default, and a job
that gives up ends in a gRPC traceback. Here a job fails within about
``spark_connect_timeout_s``, with one line naming the server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from superres.pipeline.spark import bounded_retries
from tests.conftest import ROOT

DS = "2026-01-05"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("timeout_s", [1, 10, 120, 600])
def test_the_retries_stop_near_the_timeout(timeout_s: float) -> None:
    policy = bounded_retries(timeout_s)
    waits, backoff = [], float(policy["initial_backoff"])
    for _ in range(policy["max_retries"]):
        waits.append(min(backoff, policy["max_backoff"]))
        backoff *= policy["backoff_multiplier"]
    assert sum(waits) >= timeout_s * 1000  # it does wait that long for a server to come back
    assert sum(waits) - waits[-1] < timeout_s * 1000  # and stops at the first wait past it
    assert policy["max_server_retry_delay"] == timeout_s * 1000


def test_a_job_whose_server_is_not_there_fails_at_once_naming_it(tmp_path: Path) -> None:
    storage = tmp_path / "data"
    (storage / f"raw/ds={DS}").mkdir(parents=True)
    (storage / f"raw/ds={DS}/_manifest.json").write_text(json.dumps({"images": [], "quarantined": []}))
    url = f"sc://127.0.0.1:{_free_port()}"
    r = subprocess.run([sys.executable, str(ROOT / "spark_jobs" / "split.py"), "--ds", DS,
                        "--storage-uri", str(storage), "--staging-uri", str(tmp_path / "staging"),
                        "--spark-remote", url], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: the Spark Connect server at {url} does not answer (Connection refused)"]
    assert "Traceback" not in r.stderr


# A job's driver as spark-submit would run it: connect, say so, wait for the go, then call.
CLIENT = """
import sys, time
from pathlib import Path
from superres.pipeline.spark import run_job, session

def main():
    spark = session("superres-faults", sys.argv[1], connect_timeout_s=float(sys.argv[3]))
    print("connected", flush=True)
    while not Path(sys.argv[2]).exists():
        time.sleep(0.2)
    spark.range(1000).selectExpr("sum(id)").collect()
    return 0

sys.exit(run_job(main))
"""


@pytest.mark.spark
@pytest.mark.e2e
def test_a_server_killed_under_a_job_fails_it_within_the_timeout(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from superres.orchestration import services

    monkeypatch.setenv("SUPERRES_RUN_DIR", str(tmp_path / "run"))
    url = f"sc://127.0.0.1:{_free_port()}"
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    services.ensure_spark_connect(url, env, master="local[1]")
    leader = int(services.pid_file("spark-connect").read_text())
    go = tmp_path / "go"
    client = subprocess.Popen([sys.executable, "-c", CLIENT, url, str(go), "10"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "connected", client.stderr.read()[-3000:]
        os.killpg(leader, signal.SIGKILL)  # the server dies, as the OOM killer would take it
        go.write_text("")
        # Returned rather than hung: the client's own retries would run for 10+ minutes.
        _, err = client.communicate(timeout=420)
        assert client.returncode == 1, err[-3000:]
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, err[-3000:]
        assert errors[0].startswith(f"error: the Spark Connect server at {url} stopped answering")
        assert "Traceback" not in err

        # Airflow's retry of the task: the operator brings the embedded server back first.
        from superres.config import Settings
        from superres.orchestration.operators import restart_embedded_spark_connect

        settings = Settings(spark_remote=url, spark_connect_local_url=url)
        assert restart_embedded_spark_connect(settings, env) == "started"
        assert services.listening(url)
        assert restart_embedded_spark_connect(settings, env) is None  # answering: left alone
        again = subprocess.run([sys.executable, "-c", CLIENT, url, str(go), "10"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=420)
        assert again.returncode == 0, again.stderr[-3000:]
    finally:
        if client.poll() is None:
            client.kill()
        services.stop("spark-connect")


def test_a_server_that_is_not_ours_is_never_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from superres.config import Settings
    from superres.orchestration.operators import restart_embedded_spark_connect

    monkeypatch.setenv("SUPERRES_RUN_DIR", str(tmp_path / "run"))  # no pid file: never started here
    url = f"sc://127.0.0.1:{_free_port()}"
    assert restart_embedded_spark_connect(Settings(spark_remote=url, spark_connect_local_url=url)) is None
    other = f"sc://127.0.0.1:{_free_port()}"  # someone else's server, down
    assert restart_embedded_spark_connect(Settings(spark_remote=other, spark_connect_local_url=url)) is None
