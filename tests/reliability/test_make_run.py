"""``make run`` as a user drives it: bad arguments, failures, and being stopped."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize(("date", "why"), [
    ("../../x", "run date must look like YYYY-MM-DD"),
    ("2026-02-30", "is not a calendar date"),
    ("2026-01-05; touch pwned", "run date must look like YYYY-MM-DD"),
])
def test_make_run_refuses_a_bad_date_before_starting_anything(date: str, why: str) -> None:
    r = subprocess.run(["make", "-s", "run", f"DATE={date}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode != 0
    assert why in r.stderr, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert "notifier (" not in r.stdout and "Spark" not in r.stdout  # nothing was started
    assert not (ROOT / "pwned").exists()


@pytest.mark.parametrize("n", ["0", "-3", "many"])
def test_make_run_refuses_a_bad_photo_count(n: str) -> None:
    r = subprocess.run(["make", "-s", "run", "DATE=2026-01-05", f"N={n}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode != 0
    assert "--n: must be a positive integer" in r.stderr, r.stderr
    assert "Traceback" not in r.stdout + r.stderr


# --------------------------------------------------------------------------- what the console says

# The shape of `airflow dags test` output: structlog lines, and a traceback after a failed try.
DAGS_TEST_LOG = (Path(__file__).with_name("dags_test_failed.log")).read_text()


def test_the_console_names_each_task_and_the_real_cause_of_a_failure() -> None:
    from superres.orchestration.localrun import DagTestLog

    parsed = DagTestLog()
    said = [s for s in (parsed.feed(line, now=0.0) for line in DAGS_TEST_LOG.splitlines()) if s]
    assert said[0] == "  resolve: done (0s)"
    assert said[1].startswith("  ds=2026-01-07: waiting for run manual__a#1, which holds the date")
    assert "[superres.orchestration.lease]" not in said[1]
    assert said[2] == ("  fetch: FAILED (try 1, 0s): superres.fetch.FetchError: only 7 of 16 photos usable, "
                       "44 % < min_success_ratio 50 %")
    assert said[-1] == "  notify: done (0s)"
    # The summary names the task that failed and why, not the watcher that reports it.
    assert parsed.failures() == ["fetch failed after 1 try: superres.fetch.FetchError: only 7 of 16 photos "
                                 "usable, 44 % < min_success_ratio 50 %"]


def test_a_task_that_succeeds_on_a_retry_is_not_a_failure() -> None:
    from superres.orchestration.localrun import DagTestLog

    parsed = DagTestLog()
    lines = DAGS_TEST_LOG.splitlines()
    fetch_try = lines[2:15]
    for line in [*fetch_try, lines[2], lines[14]]:  # fails, then a clean try
        parsed.feed(line, now=0.0)
    assert parsed.tries["fetch"] == 2 and parsed.failures() == []


# --------------------------------------------------------------------------- stopping make run


def test_stop_tree_stops_a_child_that_ignores_sigterm_and_its_grandchildren(tmp_path) -> None:
    import sys

    import psutil

    from superres.orchestration.localrun import stop_tree

    code = ("import signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
            "subprocess.Popen([sys.executable, '-c', 'import os, time; os.setsid(); time.sleep(600)'])\n"
            "print('up', flush=True)\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout.readline().strip() == "up"
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert len(tree) == 3
    stop_tree(proc, grace_s=2)
    gone, alive = psutil.wait_procs(tree, timeout=30)
    assert alive == []
    assert proc.poll() is not None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def make_run_env(airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``make run``'s environment in a sandbox: its own Airflow home, storage, ports and run dir;
    Spark as one local[2] application per task (no Spark Connect server)."""
    import json
    import os
    import shutil

    from superres.orchestration import services

    home = tmp_path / "airflow"
    home.mkdir()
    shutil.copy(Path(os.environ["AIRFLOW_HOME"]) / "airflow.db", home / "airflow.db")
    ours = ("SUPERRES_", "AIRFLOW_CONN_", "NOTIFIER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env.update(AIRFLOW_HOME=str(home), SUPERRES_STORAGE_URI=str(tmp_path / "data"),
               SUPERRES_STAGING_URI=str(tmp_path / "staging"), SUPERRES_RUN_DIR=str(tmp_path / "run"),
               SUPERRES_PICSUM_URL=f"http://127.0.0.1:{_free_port()}",
               SUPERRES_NOTIFIER_URL=f"http://127.0.0.1:{_free_port()}", SUPERRES_SPARK_REMOTE="",
               AIRFLOW_CONN_SPARK_DEFAULT=json.dumps({"conn_type": "spark", "host": "local[2]"}))
    monkeypatch.setenv("SUPERRES_RUN_DIR", env["SUPERRES_RUN_DIR"])
    yield env
    services.stop("notifier")


def _localrun(env: dict, ds: str) -> subprocess.Popen:
    import sys

    cmd = [sys.executable, "-m", "superres.orchestration.localrun", "--date", ds, "--n", "1",
           "--tile-size", "64"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.mark.e2e
@pytest.mark.spark
def test_a_killed_make_run_leaves_nothing_running_and_the_rerun_just_works(make_run_env, tmp_path) -> None:
    import json
    import signal

    import psutil

    ds = "2026-01-11"
    run = _localrun(make_run_env, ds)
    seen: list[str] = []
    try:
        for line in run.stdout:  # the console, as the user sees it
            seen.append(line)
            if "fetch: done" in line:
                break
        assert any("fetch: done" in line for line in seen), "".join(seen)
        lease = json.loads((tmp_path / "data" / f"locks/ds={ds}/lease.json").read_text())
        # The run's own processes: airflow dags test and everything under it.  The notifier is
        # make run's long-running service, reused by the next run and stopped by make down.
        (dags_test,) = [p for p in psutil.Process(run.pid).children() if "dags" in p.cmdline()]
        tree = [dags_test, *dags_test.children(recursive=True)]
        assert lease["process"]["pid"] in [p.pid for p in tree]
        run.send_signal(signal.SIGTERM)
        rest = run.communicate(timeout=300)[0]
        assert run.returncode == 128 + signal.SIGTERM, rest
        assert "make run stopped by SIGTERM" in rest and "Traceback" not in rest
        _, alive = psutil.wait_procs(tree, timeout=60)
        assert alive == [], [p.cmdline()[:3] for p in alive]
    finally:
        if run.poll() is None:
            run.kill()
    assert (tmp_path / "data" / f"locks/ds={ds}/lease.json").exists()  # the killed run never released it

    again = _localrun(make_run_env, ds)
    out = again.communicate(timeout=1800)[0]
    assert again.returncode == 0, out[-4000:]
    assert "taking over the lease of run" in out and "has ended" in out
    assert "SR written:    1 PNGs" in out
    assert not (tmp_path / "data" / f"locks/ds={ds}").exists()

    # Airflow's run list shows the rerun's true duration, not the weeks since its logical date.
    import datetime as dt
    import sys

    cmd = [sys.executable, "-m", "airflow", "dags", "list-runs", "superres_daily", "-o", "json"]
    listed = subprocess.run(cmd, env=make_run_env, capture_output=True, text=True, timeout=300,
                            check=True).stdout
    runs = json.loads(listed[listed.index("[{"):])
    (done,) = [r for r in runs if r["state"] == "success" and r["logical_date"].startswith(ds)]
    start, end = (dt.datetime.fromisoformat(done[k]) for k in ("start_date", "end_date"))
    assert dt.timedelta(0) < end - start < dt.timedelta(hours=1), done
