"""DAG integrity: it imports cleanly, has the expected shape, and parses cheaply."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import ROOT

TASKS = ["resolve", "fetch", "split", "inference", "reconstruct", "quality", "evaluate", "report", "notify",
         "watcher"]
HEAVY = ("torch", "pyspark", "pandas", "great_expectations", "numpy", "PIL", "pyarrow", "boto3")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["superres_daily"]


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert list(dagbag.dag_ids) == ["superres_daily"]


def test_schedule_and_run_policy(dag) -> None:
    assert type(dag.timetable).__name__ == "CronTriggerTimetable"
    assert dag.timetable.expression == "0 0 * * *"
    assert dag.catchup is False
    assert dag.max_active_runs == 2
    assert {"superres", "spark"} <= set(dag.tags)
    assert "superres_daily" in dag.doc_md and "reconcile" in dag.doc_md


def test_tasks_and_dependencies(dag) -> None:
    assert sorted(dag.task_ids) == sorted(TASKS)
    chain = ["fetch", "split", "inference", "reconstruct", "quality", "evaluate", "report", "notify"]
    for up, down in zip(chain, chain[1:], strict=False):
        assert down in dag.get_task(up).downstream_task_ids, (up, down)
    assert {"fetch", "report", "notify"} <= dag.get_task("resolve").downstream_task_ids
    assert dag.get_task("notify").trigger_rule == "all_done"
    # The watcher makes the run fail when any pipeline task failed, although notify (a leaf) succeeds.
    watcher = dag.get_task("watcher")
    assert watcher.trigger_rule == "one_failed"
    assert set(TASKS) - {"notify", "watcher"} <= watcher.upstream_task_ids


def test_spark_tasks_use_spark_submit_and_the_spark_connection(dag) -> None:
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    for tid in ("split", "inference", "reconstruct", "quality", "evaluate"):
        op = dag.get_task(tid)
        assert isinstance(op, SparkSubmitOperator)
        assert op.application.endswith(f"spark_jobs/{tid}.py")
        assert (ROOT / "spark_jobs" / f"{tid}.py").exists()


def test_every_task_retries_with_exponential_backoff(dag) -> None:
    for task in dag.tasks:
        if task.task_id == "watcher":  # it only reports a failure; retrying it changes nothing
            continue
        assert task.retries >= 2, task.task_id
        assert task.retry_exponential_backoff, task.task_id
        assert task.retry_delay >= timedelta(seconds=10)
        assert task.max_retry_delay is not None


def test_every_task_has_the_configured_timeout(dag) -> None:
    from superres.config import Settings

    settings = Settings.from_env()
    timeout = timedelta(seconds=settings.task_timeout_s)
    assert timeout > timedelta(seconds=settings.lease_wait_s)
    for task in dag.tasks:
        assert task.execution_timeout == timeout, task.task_id


def test_task_timeout_follows_the_environment_and_is_checked() -> None:
    from superres.config import Settings

    code = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(ROOT / 'dags')!r})\n"
        "print(json.dumps({t.task_id: t.execution_timeout.total_seconds() "
        "for t in bag.dags['superres_daily'].tasks} if not bag.import_errors else bag.import_errors))\n"
    )
    env = os.environ | {"SUPERRES_TASK_TIMEOUT_S": "5400"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env, cwd=ROOT).stdout.strip().splitlines()[-1]
    assert json.loads(out) == dict.fromkeys(TASKS, 5400.0)
    with pytest.raises(ValueError, match="must exceed lease_wait_s"):
        Settings(task_timeout_s=600, lease_wait_s=3600)
    with pytest.raises(ValueError, match="must exceed task_timeout_s"):
        Settings(task_timeout_s=10800, lease_ttl_s=7200)  # the lease could expire under a task
    assert Settings().lease_ttl_s > Settings().task_timeout_s


def test_params_and_defaults(dag) -> None:
    p = dag.params
    assert p["num_images"] == 8 and p["scale"] == 2 and p["mode"] == "evaluate"
    assert p["image_width"] == 512 and p["image_height"] == 512 and p["tile_size"] == 192
    assert p.get_param("scale").schema["enum"] == [2, 3, 4]
    assert p.get_param("mode").schema["enum"] == ["evaluate", "upscale"]
    assert p["ds"] is None


def test_run_date_resolution() -> None:
    from superres.orchestration.run import resolve_ds

    midnight = datetime(2026, 1, 6, tzinfo=UTC)
    assert resolve_ds("2026-02-01", midnight, midnight) == "2026-02-01"
    assert resolve_ds(None, midnight, datetime(2026, 3, 1, tzinfo=UTC)) == "2026-01-06"
    assert resolve_ds(None, None, datetime(2026, 3, 1, 23, 30, tzinfo=UTC)) == "2026-03-01"
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        resolve_ds("../etc", None, None)
    with pytest.raises(ValueError, match="no ds param"):
        resolve_ds(None, None, None)


def test_params_override_settings_and_hide_secrets(monkeypatch) -> None:
    from superres.orchestration.run import describe_run, settings_of

    monkeypatch.setenv("SUPERRES_CALLBACK_SECRET", "s3cr3t-value")
    run = describe_run({"scale": 3, "num_images": 5, "mode": "upscale"}, "r1", None,
                       datetime(2026, 1, 2, tzinfo=UTC))
    assert run["ds"] == "2026-01-02" and run["settings"]["scale"] == 3
    assert "s3cr3t-value" not in json.dumps(run)
    s = settings_of(run)
    assert s.num_images == 5 and s.mode == "upscale" and s.callback_secret.reveal() == "s3cr3t-value"


def test_dag_file_imports_nothing_heavy() -> None:
    """The parse-time budget: the DAG file pulls in no ML/data libraries and does no I/O.

    Timing is printed, not asserted; what is asserted is the cause of slow parses.
    """
    code = (
        "import sys, time, importlib.util\n"
        "import airflow.sdk\n"
        "from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator\n"
        "t = time.perf_counter()\n"
        f"spec = importlib.util.spec_from_file_location('d', {str(ROOT / 'dags/superres_daily.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "print(round(time.perf_counter() - t, 3))\n"
        f"print(','.join(k for k in {HEAVY!r} if k in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=os.environ.copy(), cwd=ROOT).stdout.split("\n")
    print(f"DAG file exec time beyond airflow imports: {out[0]} s")
    assert out[1] == "", f"heavy modules imported at parse time: {out[1]}"
