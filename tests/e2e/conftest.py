"""Fixtures for whole-DAG runs: a real notifier on loopback and the pipeline's environment."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

E2E_SECRET = "e2e-callback-secret-7f3a9c"


@pytest.fixture
def notifier_server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The notifier app served by werkzeug on 127.0.0.1 (real HTTP), reading the test's storage."""
    from werkzeug.serving import make_server

    from notifier import create_app

    info: dict[str, Any] = {"storage": tmp_path / "storage"}
    app = create_app({"DATABASE": str(tmp_path / "notifier.sqlite"), "CALLBACK_SECRET": E2E_SECRET,
                      "STORAGE_URI": str(info["storage"]), "REFRESH_S": 0, "MAX_SKEW_S": 300})
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    info.update(url=f"http://127.0.0.1:{httpd.server_port}", port=httpd.server_port, app=app)
    try:
        yield info
    finally:
        httpd.shutdown()
        thread.join(timeout=10)
        httpd.server_close()


@pytest.fixture
def pipeline_env(airflow_db: Path, picsum_url: str, notifier_server: dict[str, Any], tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Environment for a dag.test() run: local storage, local[*] Spark, offline Picsum, notifier."""
    storage = notifier_server["storage"]
    monkeypatch.setenv("SUPERRES_STORAGE_URI", str(storage))
    monkeypatch.setenv("SUPERRES_STAGING_URI", str(tmp_path / "staging"))
    monkeypatch.setenv("SUPERRES_PICSUM_URL", picsum_url)
    monkeypatch.setenv("SUPERRES_CALLBACK_SECRET", E2E_SECRET)
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "local[2]"}))
    monkeypatch.setenv("AIRFLOW_CONN_NOTIFIER_DEFAULT", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": notifier_server["port"], "schema": "http"}))
    return {"storage": storage, "staging": tmp_path / "staging", "notifier": notifier_server}


# =========================================================================== Spark standalone cluster
# A real master and worker on 127.0.0.1 from the pip-installed pyspark (``spark-class``), for the
# cluster end-to-end test (tests/e2e/test_standalone_cluster.py).  Everything lives under one
# temporary directory and stops with the fixture; nothing is left running.

SPARK_WORKER_CORES = 2  # the same parallelism as the local[2] runs, so partitioning matches
SPARK_WORKER_MEMORY = "1g"  # room for exactly one executor of Spark's default 1g


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spark_home() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pyspark")
    assert spec and spec.origin, "pyspark is not installed"
    return Path(spec.origin).parent


def _cluster_processes(marker: str) -> list[int]:
    """Pids of live processes whose command line or working directory mentions ``marker``."""
    import os

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except (OSError, ValueError):
            continue
        if marker in cmdline or marker in cwd:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def spark_standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A Spark standalone master + one worker on loopback; yields ``{"master": "spark://…", ...}``.

    Free ports are picked for the master, the worker and both web UIs; the fixture waits until
    the master's ``/json/`` lists the worker ALIVE.  Teardown terminates each daemon's process
    group (the worker's executors included), waits, and checks that no process of this cluster
    is left.
    """
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    base = tmp_path_factory.mktemp("spark-standalone")
    marker = str(base)
    home = _spark_home()
    env = os.environ.copy()
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(name, None)
    env.update({
        "SPARK_HOME": str(home),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOCAL_HOSTNAME": "127.0.0.1",
        "SPARK_CONF_DIR": str(base / "conf"),  # empty: no user spark-defaults.conf leaks in
        "SPARK_LOG_DIR": str(base / "logs"),
        "SPARK_PID_DIR": str(base / "run"),
        "SPARK_WORKER_DIR": str(base / "work"),
        "SPARK_LOCAL_DIRS": str(base / "local"),
        "SPARK_DAEMON_MEMORY": "512m",
        # The marker in every daemon's command line, so teardown can prove nothing is left.
        "SPARK_DAEMON_JAVA_OPTS": f"-Djava.io.tmpdir={base / 'tmp'}",
        # No REST submission server: it would take the fixed port 6066, and jobs use spark-submit.
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
        "PYSPARK_PYTHON": sys.executable,
        "NO_PROXY": "127.0.0.1,localhost",
    })
    for sub in ("conf", "logs", "run", "work", "local", "tmp"):
        (base / sub).mkdir()
    master_port, master_ui, worker_port, worker_ui = (_free_port() for _ in range(4))
    master_url = f"spark://127.0.0.1:{master_port}"
    spark_class = str(home / "bin" / "spark-class")
    daemons: dict[str, tuple[subprocess.Popen, Path]] = {}

    def launch(name: str, args: list[str]) -> None:
        log = base / "logs" / f"{name}.out"
        with log.open("wb") as out:
            proc = subprocess.Popen([spark_class, *args], env=env, cwd=base, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        daemons[name] = (proc, log)

    def state() -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{master_ui}/json/", timeout=5) as resp:
            return json.loads(resp.read())

    def stop_all() -> None:
        for proc, _log in reversed(list(daemons.values())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _log in daemons.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        # Executors live in the worker's process group; make sure the whole groups are gone.
        for proc, _log in daemons.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    try:
        launch("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                          "--port", str(master_port), "--webui-port", str(master_ui)])
        launch("worker", ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                          "--port", str(worker_port), "--webui-port", str(worker_ui),
                          "--cores", str(SPARK_WORKER_CORES), "--memory", SPARK_WORKER_MEMORY,
                          "--work-dir", str(base / "work"), master_url])
        deadline = time.monotonic() + 180  # a fail-safe for a hung start, not a timing assertion
        alive: list[dict[str, Any]] = []
        while not alive:
            for name, (proc, log) in daemons.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"spark {name} exited with {proc.returncode}:\n"
                                       + log.read_text(errors="replace")[-4000:])
            try:
                alive = [w for w in state().get("workers", []) if w.get("state") == "ALIVE"]
            except OSError:
                alive = []
            if not alive:
                if time.monotonic() > deadline:
                    raise RuntimeError("the Spark worker did not register with the master:\n" + "\n".join(
                        log.read_text(errors="replace")[-2000:] for _p, log in daemons.values()))
                time.sleep(1)
        yield {"master": master_url, "state": state, "web_ui": f"http://127.0.0.1:{master_ui}",
               "workers": alive, "dir": base, "python": sys.executable}
    finally:
        stop_all()
    left = _cluster_processes(marker)
    assert left == [], f"Spark processes of this cluster still running: {left}"


# =========================================================================== Spark Connect server
@pytest.fixture(scope="module")
def spark_connect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The project's own local Spark Connect server (``services.ensure_spark_connect``), local[2].

    Started exactly as ``make run`` starts it, with its pid file and log in a temporary run
    directory; teardown stops it with ``services.stop`` and checks that its process group,
    Python workers included, is gone.
    """
    import os

    from superres.orchestration import services

    run_dir = tmp_path_factory.mktemp("spark-connect-run")
    url = f"sc://127.0.0.1:{_free_port()}"
    saved = os.environ.get("SUPERRES_RUN_DIR")
    os.environ["SUPERRES_RUN_DIR"] = str(run_dir)
    # Worker daemons end after 2 s without a worker (default 5 min), so that a test can see it.
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "SUPERRES_WORKER_DAEMON_IDLE_S": "2"}
    try:
        status = services.ensure_spark_connect(url, env, master="local[2]")
        yield {"url": url, "status": status, "env": env, "run_dir": run_dir}
    finally:
        pid_path = services.pid_file("spark-connect")  # the current server (a test may restart it)
        leader = int(pid_path.read_text()) if pid_path.exists() else 0
        services.stop("spark-connect")
        if leader:
            import time

            deadline = time.time() + 20
            while time.time() < deadline:
                try:
                    os.killpg(leader, 0)
                except ProcessLookupError:
                    break  # the JVM and its Python workers are all gone
                time.sleep(0.2)
            else:
                pytest.fail(f"the Spark Connect server's process group {leader} outlived services.stop")
        if saved is None:
            os.environ.pop("SUPERRES_RUN_DIR", None)
        else:
            os.environ["SUPERRES_RUN_DIR"] = saved
