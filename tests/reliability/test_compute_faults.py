"""Compute faults: a Spark job dying partway, Airflow's kill, and runs side by side.

Everything is real: spark-submit on local[2], the DAG through dag.test(), the
offline Picsum source and the notifier over HTTP.  Faults are injected into
Spark's Python workers by ``faults/sitecustomize.py`` (an exception in one
partition, or SIGKILL of the worker process), once: the retry runs clean.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import ROOT
from tests.e2e.conftest import notifier_server, pipeline_env  # noqa: F401 - fixtures
from tests.e2e.test_dag_e2e import check_outputs, run_dag

pytestmark = [pytest.mark.e2e, pytest.mark.spark]

FAULTS_DIR = Path(__file__).with_name("faults")


def _local(storage: Path):
    return (lambda k: (storage / k).read_bytes(),
            lambda p: [str(x.relative_to(storage)) for x in (storage / p).glob("*")])


def _parquet_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    files = sorted(path.glob("*.parquet"))
    assert files, f"no parquet under {path}"
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def test_partition_exception_and_killed_worker_are_retried_to_complete_output(
        pipeline_env: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    markers = {"inference": tmp_path / "inference.fired", "reconstruct": tmp_path / "reconstruct.fired"}
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAULTS_DIR), str(ROOT)]))
    monkeypatch.setenv("SUPERRES_TEST_FAULTS", json.dumps([
        {"module": "superres.pipeline.inference", "function": "infer_records", "action": "raise",
         "marker": str(markers["inference"])},
        {"module": "superres.pipeline.reconstruct", "function": "reconstruct_image", "action": "kill",
         "marker": str(markers["reconstruct"])},
    ]))
    ds = "2026-04-01"
    dr = run_dag(ds, num_images=2, tile_size=64)

    tries = {ti.task_id: ti.try_number for ti in dr.get_task_instances()}
    assert markers["inference"].exists() and markers["reconstruct"].exists(), "the faults did not fire"
    assert tries["inference"] == 2 and tries["reconstruct"] == 2, tries  # failed once, retried by Airflow
    assert tries["split"] == 1 and tries["evaluate"] == 1

    storage, staging = pipeline_env["storage"], pipeline_env["staging"]
    out = check_outputs(*_local(storage), ds, scale=2, mode="evaluate")
    assert out["report"]["counts"] == {"fetched": 2, "processed": 2, "quarantined": 0}

    # The retry's output is complete, with no duplicates and nothing left by the failed attempt.
    tiles = _parquet_rows(staging / f"tiles/ds={ds}")
    sr_dir = staging / f"sr_tiles/ds={ds}"
    sr_tiles = _parquet_rows(sr_dir)
    keys = [(t["image_id"], t["y"], t["x"]) for t in sr_tiles]
    assert sorted(keys) == sorted((t["image_id"], t["y"], t["x"]) for t in tiles)
    assert len(set(keys)) == len(keys)
    outputs = _parquet_rows(staging / f"outputs/ds={ds}")
    assert sorted(o["image_id"] for o in outputs) == sorted(i["image_id"] for i in out["manifest"]["images"])
    leftovers = [p for p in staging.rglob("*") if p.name.startswith(("_temporary", ".spark-staging"))]
    assert leftovers == []
    stage = json.loads((storage / f"reports/ds={ds}/stages/inference.json").read_text())
    assert stage["tiles"] == len(tiles)
    assert not (storage / f"locks/ds={ds}").exists(), "the run must release its date"


# --------------------------------------------------------------------------- subprocess runs


def _runner_env(home: Path) -> dict[str, str]:
    """A private copy of the migrated metadata DB, so processes do not share SQLite."""
    home.mkdir(parents=True)
    shutil.copy(Path(os.environ["AIRFLOW_HOME"]) / "airflow.db", home / "airflow.db")
    env = dict(os.environ, AIRFLOW_HOME=str(home), PYTHONPATH=str(ROOT))
    return env


def _start(ds: str, conf: dict[str, Any], out: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "tests.reliability.dag_runner", "--ds", ds,
                             "--conf", json.dumps(conf), "--out", str(out), *extra],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_sigterm_stops_the_spark_job_and_leaves_no_process(
        pipeline_env: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    env = _runner_env(tmp_path / "home")
    out = tmp_path / "run.json"
    proc = _start("2026-04-02", {"num_images": 2, "tile_size": 64}, out, env, "--no-retries")
    try:
        # Wait until the split job's JVM and its Python driver are running under the task.
        deadline = time.monotonic() + 600
        spark: list[psutil.Process] = []
        while time.monotonic() < deadline and proc.poll() is None:
            spark = [p for p in _descendants(proc.pid) if "split.py" in " ".join(_cmdline(p))]
            if any("java" in _cmdline(p)[0] for p in spark if _cmdline(p)) and \
                    any("python" in _cmdline(p)[0] for p in spark if _cmdline(p)):
                break
            time.sleep(0.5)
        assert proc.poll() is None, out.with_suffix(".log").read_text()[-3000:]
        tree = _descendants(proc.pid)
        assert spark, "the split job never started"
        proc.send_signal(signal.SIGTERM)  # what Airflow's supervisor sends a task it kills
        gone, alive = psutil.wait_procs(tree, timeout=120)
        assert alive == [], [(_cmdline(p)[:3]) for p in alive]
        assert proc.wait(timeout=600) == 1
    finally:
        for p in _descendants(proc.pid):
            p.kill()
        if proc.poll() is None:
            proc.kill()
    result = json.loads(out.read_text())
    assert result["tasks"]["split"]["state"] == "failed"
    assert result["tasks"]["inference"]["state"] == "upstream_failed"
    log = out.with_suffix(".log").read_text()
    assert "stopping spark-submit" in log


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def test_two_dates_side_by_side_and_the_same_date_twice(
        pipeline_env: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    """A backfill's two dates run at once and stay apart; a second run of a date waits its turn."""
    conf = {"num_images": 1, "tile_size": 128, "mode": "upscale"}
    runs = {
        "a": ("2026-04-03", conf),
        "b": ("2026-04-04", conf),
        # A manual trigger of a date that is already running, with another photo count.
        "a2": ("2026-04-03", dict(conf, num_images=2)),
    }
    procs = {}
    for name, (ds, c) in runs.items():
        procs[name] = _start(ds, c, tmp_path / f"{name}.json",
                             _runner_env(tmp_path / f"home-{name}"))
    for name, proc in procs.items():
        assert proc.wait(timeout=1800) == 0, (tmp_path / f"{name}.log").read_text()[-4000:]
    storage = pipeline_env["storage"]
    for ds in ("2026-04-03", "2026-04-04"):
        out = check_outputs(*_local(storage), ds, scale=2, mode="upscale")
        assert out["report"]["ds"] == ds
        assert not (storage / f"locks/ds={ds}").exists()
    # Exactly one of the two same-date runs waited for the other's lease.
    waited = [n for n in ("a", "a2")
              if "which holds the date (lease renewed at" in (tmp_path / f"{n}.log").read_text()]
    assert len(waited) == 1, waited
    assert "holds the date" not in (tmp_path / "b.log").read_text()
    # The date holds the complete output of the run that went last, not a mix of the two.
    want = runs[waited[0]][1]["num_images"]
    report = json.loads((storage / "reports/ds=2026-04-03/run.json").read_text())
    assert report["counts"]["fetched"] == want
    assert len(list((storage / "sr/ds=2026-04-03").glob("*.png"))) == want
