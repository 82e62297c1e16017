"""worker_daemon ends itself once it has had no Python worker for a while.

Spark 4.1 starts one daemon per Spark Connect session and never stops it (SPARK-54055),
so a long-lived server would keep one idle daemon per run for good.  The JVM restarts a
daemon that has gone (its "Assuming that daemon unexpectedly quit" path), so ending an idle
one is safe: tests/e2e/test_spark_connect.py runs a job on a session whose daemon ended.
Here the real daemon runs as the JVM would start it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from superres.pipeline.worker_daemon import IdleExit


class FakeSelect:
    error = OSError

    def __init__(self) -> None:
        self.ready: list = []

    def select(self, r, w, x, timeout=None):
        return (list(self.ready), [], [])


def test_idle_exit_counts_only_time_with_no_workers_and_no_requests() -> None:
    now = [0.0]
    children = [False]
    fake = FakeSelect()
    idle = IdleExit(fake, 10.0, has_children=lambda: children[0], clock=lambda: now[0])
    assert idle.error is OSError

    now[0] = 9.0
    assert idle.select([0], [], [], 1) == ([], [], [])
    children[0] = True  # a worker is alive (busy, or idle in the JVM's pool): never exit
    now[0] = 100.0
    idle.select([0], [], [], 1)
    children[0] = False
    now[0] = 109.0
    idle.select([0], [], [], 1)  # 9 s since the last worker
    fake.ready = ["listen"]  # a request for a worker resets the clock too
    now[0] = 118.0
    assert idle.select([0], [], [], 1) == (["listen"], [], [])
    fake.ready = []
    now[0] = 127.0
    idle.select([0], [], [], 1)
    now[0] = 128.0
    with pytest.raises(SystemExit):
        idle.select([0], [], [], 1)


def _start_daemon(idle_s: float) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "SUPERRES_WORKER_DAEMON_IDLE_S": str(idle_s),
           "PYTHON_WORKER_FACTORY_SECRET": "test-secret", "SPARK_REUSE_WORKER": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "superres.pipeline.worker_daemon", "pyspark.worker"],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    port = int.from_bytes(proc.stdout.read(4), "big")  # the daemon writes its port first, as to the JVM
    return proc, port


def _wait(proc: subprocess.Popen, timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="pyspark's daemon forks its workers")
def test_the_daemon_ends_when_idle_but_not_while_a_worker_lives() -> None:
    proc, port = _start_daemon(1.5)
    try:
        worker = socket.create_connection(("127.0.0.1", port))  # the daemon forks a worker for it
        pid = int.from_bytes(worker.recv(4), "big")
        os.kill(pid, 0)
        assert _wait(proc, 4.0) is None, "the daemon ended while its worker was alive"

        worker.close()  # as the JVM does with a worker idle for a minute: the worker exits
        code = _wait(proc, 15.0)
        assert code is not None, "the daemon did not end once it had no worker"
        err = proc.stderr.read().decode()
        assert "no Python workers for 1.5 s" in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_idle_exit_can_be_turned_off() -> None:
    proc, _ = _start_daemon(0)
    try:
        assert _wait(proc, 3.0) is None  # with idle exit on, 1.5 s of this would end it (above)
        proc.stdin.close()  # the JVM's way to stop it: its stdin closes
        assert _wait(proc, 15.0) is not None
        assert b"no Python workers" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()

