"""Long-running local services for the embedded setup: start once, reuse, stop cleanly.

Each service runs in its own process group with a pid file under ``.run/``
(``SUPERRES_RUN_DIR``); ``stop`` signals exactly the groups this module started
(``make down`` stops what ``make up`` / ``make run`` started, and only that).
A port that answers but was not started from this checkout is never reused: it
may be another checkout's notifier, serving other storage.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from superres.config import PROJECT_ROOT, Settings


def run_dir() -> Path:
    return Path(Settings.from_env().run_dir)


def listening(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((parts.hostname or "127.0.0.1", parts.port or 80)) == 0


def pid_file(name: str) -> Path:
    return run_dir() / f"{name}.pid"


def ours(name: str) -> bool:
    """Whether this checkout started ``name`` and it is still running."""
    path = pid_file(name)
    try:
        pid = int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return False
    return pid > 0 and alive(pid)


def alive(pid: int) -> bool:
    try:
        # A service this process started and that has exited is a zombie until reaped.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child: ask the kernel
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def start(name: str, cmd: list[str], url: str, env: dict[str, str], timeout_s: float = 60.0) -> str:
    """Start ``cmd`` detached unless we already run it at ``url``; returns a status word."""
    if listening(url):
        if ours(name):
            return "reused"
        raise RuntimeError(
            f"{url} is already answering, but not from a {name} this checkout started "
            f"(no live pid in {pid_file(name)}). Stop that process, or point this checkout "
            f"elsewhere (SUPERRES_{name.upper()}_URL / SUPERRES_RUN_DIR).")
    folder = run_dir()
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / f"{name}.log").open("ab")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=PROJECT_ROOT)
    pid_file(name).write_text(str(proc.pid))
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if listening(url):
            return "started"
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {folder / (name + '.log')}")
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer at {url} within {timeout_s:.0f}s")


def stop(name: str, timeout_s: float = 20.0) -> bool:
    """SIGTERM the service's process group, then SIGKILL what is left; True if it was running."""
    path = pid_file(name)
    if not path.exists():
        return False
    pid = int(path.read_text().strip() or 0)
    path.unlink()
    if not pid or not alive(pid):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.time() + timeout_s
    while time.time() < deadline and alive(pid):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        # The leader is gone (or ignored SIGTERM); whatever is left of its group goes too
        # (a Spark Connect server's Python workers, say).
        os.killpg(pid, signal.SIGKILL)
    return True


def callback_secret(home: Path) -> str:
    """The embedded setup's callback secret: generated once, kept private under AIRFLOW_HOME."""
    path = home / "callback_secret"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def notifier_cmd(url: str) -> list[str]:
    parts = urlsplit(url)
    return [sys.executable, "-m", "notifier", "--host", parts.hostname or "127.0.0.1",
            "--port", str(parts.port or 80)]


def picsum_cmd(url: str) -> list[str]:
    parts = urlsplit(url)
    return [sys.executable, "-m", "superres.picsum_server", "--host", parts.hostname or "127.0.0.1",
            "--port", str(parts.port or 80)]


# --------------------------------------------------------------------------- Spark Connect

SPARK_CONNECT_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


def spark_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """SPARK_HOME and the workers' Python for a pip-installed pyspark, unless already set."""
    base = os.environ if base is None else base
    env: dict[str, str] = {}
    if not base.get("SPARK_HOME"):
        import importlib.util

        spec = importlib.util.find_spec("pyspark")
        if spec and spec.origin:
            env["SPARK_HOME"] = str(Path(spec.origin).parent)
    python = base.get("PYSPARK_PYTHON") or sys.executable
    env["PYSPARK_PYTHON"] = python
    env["PYSPARK_DRIVER_PYTHON"] = base.get("PYSPARK_DRIVER_PYTHON") or python
    return env


def spark_submit_binary() -> str:
    import shutil

    return shutil.which("spark-submit") or str(Path(sys.executable).with_name("spark-submit"))


# The serial collector, with the heap shrunk after each full collection to at most 30 %
# free.  On a local master the server's JVM shares the machine's few cores with the Python
# workers, and a long-lived server should hand back heap it no longer needs.  Measured
# with `make bench` (three runs each), against G1 with periodic collections:
# peak RSS N=64 / N=16 1.03-1.11 against 1.14-1.21 and fixed overhead 46-51 s against
# 52-55 s.  Its marginal cost, 2.81-3.55 s per MP against 2.73-2.98, is within the spread
# between runs; it made 34 full collections (7 s) in a bench, and 40/70 % free for fewer
# of them (3 s) gave back the RSS gain (1.17).
SERVER_JVM_OPTIONS = " ".join(("-XX:+UseSerialGC", "-XX:MinHeapFreeRatio=10", "-XX:MaxHeapFreeRatio=30"))


def spark_connect_cmd(url: str, master: str = "local[*]", driver_memory: str = "2g") -> list[str]:
    """spark-submit command line of a Spark Connect server on ``url`` (loopback only)."""
    from superres.pipeline.spark import local_jvm_options, server_conf

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 15002
    conf = {
        **server_conf(master),
        "spark.connect.grpc.binding.address": host,
        "spark.connect.grpc.binding.port": str(port),
        "spark.driver.host": host,
        "spark.driver.bindAddress": host,
        "spark.driver.memory": driver_memory,
        # A long-lived server should hand back heap it no longer needs (SERVER_JVM_OPTIONS),
        # or its RSS ratchets up to whatever the biggest job made it expand to.
        "spark.driver.extraJavaOptions": f"{SERVER_JVM_OPTIONS} {local_jvm_options(master)}".strip(),
    }
    cmd = [spark_submit_binary(), "--class", SPARK_CONNECT_CLASS, "--name", "superres-spark-connect",
           "--master", master]
    for key, value in sorted(conf.items()):
        cmd += ["--conf", f"{key}={value}"]
    return cmd


def code_fingerprint() -> str:
    """Hash of the ``superres`` sources: a server's Python workers keep the code they imported."""
    h = hashlib.sha256()
    package = PROJECT_ROOT / "superres"
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def ensure_spark_connect(url: str, env: dict[str, str], master: str = "local[*]",
                         timeout_s: float = 180.0) -> str:
    """Start the local Spark Connect server, or reuse ours if it runs the current code.

    The server saves every Spark task the start of a Spark application.  Spark 4.1
    starts a Python daemon, and so fresh workers, for each client session (three
    sessions in a row on one server show three daemons), and within a session replaces a
    worker idle for a minute; the Spark tasks of one run share a session
    (``superres.pipeline.spark._remote_session``), so its workers serve the whole run
    and no longer.  A server started from other sources is still restarted, so no
    process of it can serve code from before an edit.
    """
    name = "spark-connect"
    stamp = run_dir() / f"{name}.code"
    current = code_fingerprint()
    if listening(url) and ours(name) and (stamp.read_text() if stamp.exists() else "") != current:
        stop(name)
        deadline = time.time() + 30
        while listening(url) and time.time() < deadline:
            time.sleep(0.2)
        restarted = True
    else:
        restarted = False
    status = start(name, spark_connect_cmd(url, master), url, {**env, **spark_env(env)}, timeout_s)
    stamp.write_text(current)
    return "restarted (code changed)" if restarted and status == "started" else status
