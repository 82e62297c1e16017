"""Chaos during a real ``make run``: kill a service the run depends on while it runs.

Each test runs ``python -m superres.orchestration.localrun`` in a subprocess, in the
sandbox of ``make_run_env`` (its own Airflow home, storage, run dir and ports; Spark as one
``local[2]`` application per task), kills one service at a chosen point of the console,
and checks three things: the run ends in bounded time, with a clear failure or a
recovery; a rerun completes with no manual step; nothing of the run is left running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.reliability import test_make_run

# The sandbox of test_make_run.py: own AIRFLOW_HOME (a copy of the migrated DB), storage, run
# dir and ports; Spark as one local[2] application per task.
make_run_env = test_make_run.make_run_env

pytestmark = [pytest.mark.e2e, pytest.mark.spark]

RUN_TIMEOUT_S = 900


def _localrun(env: dict, ds: str, n: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "superres.orchestration.localrun", "--date", ds, "--n", str(n),
           "--tile-size", "64"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _read_until(run: subprocess.Popen, marker: str, seen: list[str]) -> None:
    """Read the console until a line containing ``marker`` (or the end)."""
    for line in run.stdout:  # type: ignore[union-attr]
        seen.append(line)
        if marker in line:
            return
    raise AssertionError(f"{marker!r} never appeared:\n" + "".join(seen))


def _dags_test_tree(run: subprocess.Popen) -> list:
    import psutil

    (dags_test,) = [p for p in psutil.Process(run.pid).children() if "dags" in p.cmdline()]
    return [dags_test, *dags_test.children(recursive=True)]


def _left_of_the_run(home: str, spared: set[int]) -> list[str]:
    """Processes still running with the sandbox's AIRFLOW_HOME, other than ``spared``
    (the services: the notifier, the source this test started)."""
    import psutil

    left = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.pid in spared or p.pid == os.getpid():
            continue
        try:
            if p.environ().get("AIRFLOW_HOME") == home and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid}: {' '.join((p.info['cmdline'] or [])[:4])}")
        except psutil.Error:
            continue
    return left


def _service_pids(name: str) -> set[int]:
    import psutil

    from superres.orchestration import services

    path = services.pid_file(name)
    if not path.exists():
        return set()
    pid = int(path.read_text().strip() or 0)
    try:
        return {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
    except psutil.Error:
        return set()


def _kill_service(name: str) -> int:
    """SIGKILL the process group of a service started from the sandbox (its pid file)."""
    from superres.orchestration import services

    pid = int(services.pid_file(name).read_text().strip())
    os.killpg(pid, signal.SIGKILL)
    deadline = time.time() + 10
    while services.alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    return pid


def _events(env: dict, ds: str) -> list[dict]:
    import urllib.request

    with urllib.request.urlopen(f"{env['SUPERRES_NOTIFIER_URL']}/api/runs?limit=500", timeout=10) as r:
        return [run for run in json.load(r)["runs"] if run["ds"] == ds]


def test_the_photo_source_killed_mid_fetch_fails_clearly_and_the_rerun_completes(make_run_env,
                                                                               tmp_path) -> None:
    from superres.orchestration import services

    ds = "2026-01-12"
    url = make_run_env["SUPERRES_PICSUM_URL"]
    env = dict(make_run_env, SUPERRES_FETCH_TIMEOUT_S="2", SUPERRES_FETCH_RETRIES="1")
    assert services.start("picsum", services.picsum_cmd(url), url, env) == "started"
    try:
        run = _localrun(env, ds, n=4)
        seen: list[str] = []
        try:
            _read_until(run, "resolve: done", seen)  # the next task is fetch
            tree = _dags_test_tree(run)
            _kill_service("picsum")
            killed_at = time.time()
            assert not services.listening(url)
            rest = run.communicate(timeout=RUN_TIMEOUT_S)[0]
            took = time.time() - killed_at
        finally:
            if run.poll() is None:
                run.kill()
        out = "".join(seen) + rest
        print(f"source killed -> run ended in {took:.0f}s, exit {run.returncode}\n{out}")
        if run.returncode != 0:
            # A clear failure: the task that failed, why, and one summary line.
            assert "fetch: FAILED" in out, out
            assert "  fetch failed after " in out and "run FAILED for ds=" + ds in out, out
            failed = next(line for line in out.splitlines() if "  fetch failed after " in line)
            assert "FetchError" in failed or "Connection" in failed, failed
            assert "Traceback" not in out
        else:
            # Or the photos it could not get are quarantined, with connection errors.
            records = [json.loads(p.read_text())
                       for p in (tmp_path / "data" / f"quarantine/ds={ds}").rglob("*.json")]
            assert records and {r["reason"] for r in records} <= {"connection_error", "timeout"}, records
        _, alive = __import__("psutil").wait_procs(tree, timeout=60)
        assert alive == [], [p.cmdline()[:3] for p in alive]
        assert _left_of_the_run(env["AIRFLOW_HOME"], _service_pids("notifier")) == []

        # The source is back: the same date, rerun as is, completes.
        assert services.start("picsum", services.picsum_cmd(url), url, env) == "started"
        t0 = time.time()
        again = _localrun(env, ds, n=4)
        out = again.communicate(timeout=RUN_TIMEOUT_S)[0]
        print(f"rerun with the source back: {time.time() - t0:.0f}s, exit {again.returncode}\n{out}")
        assert again.returncode == 0, out[-4000:]
        assert "SR written:    4 PNGs" in out, out
        assert not (tmp_path / "data" / f"locks/ds={ds}").exists()
        spared = _service_pids("notifier") | _service_pids("picsum")
        assert _left_of_the_run(env["AIRFLOW_HOME"], spared) == []
    finally:
        services.stop("picsum")


def test_the_notifier_killed_mid_run_then_back_is_caught_up_by_the_notify_retry(make_run_env,
                                                                               tmp_path) -> None:
    from superres.orchestration import services
    from superres.orchestration.localrun import airflow_env

    ds = "2026-01-13"
    url = make_run_env["SUPERRES_NOTIFIER_URL"]
    run = _localrun(make_run_env, ds, n=1)
    seen: list[str] = []
    try:
        _read_until(run, "fetch: done", seen)
        tree = _dags_test_tree(run)
        _kill_service("notifier")
        killed_at = time.time()
        assert not services.listening(url)
        # Down until notify has failed on it once; then back, as a supervisor would bring it.
        _read_until(run, "notify: FAILED (try 1", seen)
        failed_at = time.time()
        assert services.start("notifier", services.notifier_cmd(url), url, airflow_env(make_run_env)) \
            == "started"
        back_at = time.time()
        rest = run.communicate(timeout=RUN_TIMEOUT_S)[0]
        done_at = time.time()
    finally:
        if run.poll() is None:
            run.kill()
    out = "".join(seen) + rest
    print(f"notifier killed; notify try 1 failed after {failed_at - killed_at:.0f}s; back after "
          f"{back_at - killed_at:.0f}s; run done {done_at - back_at:.0f}s after it was back, "
          f"exit {run.returncode}\n{out}")
    assert run.returncode == 0, out[-4000:]
    assert "notify: done" in out and "on try 2" in out.split("notify: done")[-1].splitlines()[0], out
    assert "SR written:    1 PNGs" in out, out
    # Stored once, and the notifier answers for the run.
    (event,) = _events(make_run_env, ds)
    import urllib.request

    with urllib.request.urlopen(f"{url}/api/runs/{event['run_id']}", timeout=10) as r:
        assert r.status == 200 and json.load(r)["run"]["state"] == "success"
    # `make notify` on top re-delivers the saved event: a duplicate, still one row.
    cmd = [sys.executable, "-m", "superres.orchestration.notify", "--date", ds]
    redo = subprocess.run(cmd, cwd=ROOT, env=airflow_env(make_run_env), capture_output=True, text=True,
                          timeout=120)
    assert redo.returncode == 0, redo.stdout + redo.stderr
    assert len(_events(make_run_env, ds)) == 1
    _, alive = __import__("psutil").wait_procs(tree, timeout=60)
    assert alive == [], [p.cmdline()[:3] for p in alive]
    assert _left_of_the_run(make_run_env["AIRFLOW_HOME"], _service_pids("notifier")) == []
    assert not (tmp_path / "data" / f"locks/ds={ds}").exists()


def test_the_spark_job_killed_mid_run_is_retried_by_airflow_and_the_run_completes(make_run_env,
                                                                                tmp_path) -> None:
    import psutil

    ds = "2026-01-14"
    run = _localrun(make_run_env, ds, n=1)
    seen: list[str] = []
    try:
        _read_until(run, "fetch: done", seen)  # split, the first Spark job, starts now
        tree = _dags_test_tree(run)
        deadline = time.time() + 300
        jvm = None
        while jvm is None and time.time() < deadline and run.poll() is None:
            for p in tree[0].children(recursive=True):
                try:
                    if "org.apache.spark.deploy.SparkSubmit" in " ".join(p.cmdline()):
                        jvm = p
                        break
                except psutil.Error:
                    continue
            time.sleep(0.2)
        assert jvm is not None, "no spark-submit JVM appeared:\n" + "".join(seen)
        # Under way: the JVM has started the job's Python driver (and maybe its workers).
        while not any("python" in p.name() for p in jvm.children(recursive=True)):
            assert time.time() < deadline and jvm.is_running(), "".join(seen)
            time.sleep(0.2)
        time.sleep(3)
        job = [jvm, *jvm.children(recursive=True)]  # its Python driver, daemon, workers
        print(f"killing the JVM and leaving its {len(job) - 1} descendants to it")
        jvm.kill()
        killed_at = time.time()
        _read_until(run, "split: FAILED (try 1", seen)
        failed_at = time.time()
        _read_until(run, "split: done", seen)
        recovered_at = time.time()
        rest = run.communicate(timeout=RUN_TIMEOUT_S)[0]
        done_at = time.time()
    finally:
        if run.poll() is None:
            run.kill()
    out = "".join(seen) + rest
    print(f"spark-submit JVM killed; split failed after {failed_at - killed_at:.0f}s, its retry done "
          f"after {recovered_at - killed_at:.0f}s, run done after {done_at - killed_at:.0f}s, "
          f"exit {run.returncode}\n{out}")
    assert run.returncode == 0, out[-4000:]
    assert "on try 2" in next(line for line in out.splitlines() if "split: done" in line), out
    assert "SR written:    1 PNGs" in out, out
    # The killed job's processes (its Python driver loses the JVM) are gone too.
    _, alive = psutil.wait_procs(job, timeout=60)
    assert alive == [], [p.cmdline()[:3] for p in alive]
    _, alive = psutil.wait_procs(tree, timeout=60)
    assert alive == [], [p.cmdline()[:3] for p in alive]
    assert _left_of_the_run(make_run_env["AIRFLOW_HOME"], _service_pids("notifier")) == []
    assert not (tmp_path / "data" / f"locks/ds={ds}").exists()
