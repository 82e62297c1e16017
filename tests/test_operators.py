"""The Spark task operator's handling of the job's environment per cluster manager.

Against the real apache-spark provider hook: the command line it would run is
built (not run) for each master, from an Airflow connection in the environment.
"""

from __future__ import annotations

import json

import pytest

from superres.orchestration.operators import SparkJobOperator, env_for_cluster

SECRETS = {"AWS_ACCESS_KEY_ID": "AKIAOPERATORTEST0001", "AWS_SECRET_ACCESS_KEY": "op-secret-Vb7dQ2",
           "AWS_SESSION_TOKEN": "op-token-Hq81Zx"}
ENV = {"PYSPARK_PYTHON": "/opt/venv/bin/python", **SECRETS}


def built(monkeypatch: pytest.MonkeyPatch, conn: dict) -> tuple[str, dict | None]:
    """(spark-submit command line, process environment) the hook would use for ``conn``."""
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_OPTEST", json.dumps(conn))
    op = SparkJobOperator(task_id="split", job="split", conn_id="spark_optest", env_vars=dict(ENV))
    hook = op._get_hook()
    cmd = " ".join(hook._build_spark_submit_command(op.application))
    return cmd, hook._env


def test_aws_credentials_never_reach_a_yarn_or_kubernetes_command_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cmd, _ = built(monkeypatch, {"conn_type": "spark", "host": "yarn"})
    for name, value in SECRETS.items():
        assert value not in cmd and name not in cmd, cmd
    # the rest of the environment still goes, as the hook writes it for YARN
    assert "spark.yarn.appMasterEnv.PYSPARK_PYTHON=/opt/venv/bin/python" in cmd
    # Kubernetes: the hook needs the cncf.kubernetes provider (not installed here) to build a
    # command at all; it writes env_vars as spark.kubernetes.driverEnv.* the same way.
    env, held = env_for_cluster("k8s://https://10.0.0.1:6443", "cluster", dict(ENV))
    assert env == {"PYSPARK_PYTHON": "/opt/venv/bin/python"} and held == sorted(SECRETS)


def test_client_mode_keeps_credentials_in_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    cmd, env = built(monkeypatch, {"conn_type": "spark", "host": "local[2]"})
    assert env is not None and {k: env[k] for k in SECRETS} == SECRETS
    assert not any(value in cmd for value in SECRETS.values())


def test_standalone_cluster_mode_is_given_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook refuses env_vars there ("not supported in standalone-cluster mode")."""
    cmd, env = built(monkeypatch, {"conn_type": "spark", "host": "spark://10.0.0.2", "port": 7077,
                                   "extra": {"deploy-mode": "cluster"}})
    assert "--deploy-mode cluster" in cmd and not env
    assert env_for_cluster("spark://h:7077", "cluster", dict(ENV)) == (None, sorted(ENV))
    assert env_for_cluster("local[*]", None, None) == (None, [])


def test_the_spark_tasks_of_a_run_join_one_connect_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a Spark Connect server a run's jobs share a session (and so its warm Python workers)."""
    import uuid
    from datetime import UTC, datetime

    from superres.orchestration.operators import job_arguments
    from superres.orchestration.run import describe_run, settings_of
    from superres.pipeline.spark import job_parser

    when = datetime(2026, 1, 2, tzinfo=UTC)
    monkeypatch.setenv("SUPERRES_SPARK_REMOTE", "")
    classic = describe_run({}, "manual__a", None, when)
    assert "--spark-session-id" not in job_arguments(classic, settings_of(classic))

    monkeypatch.setenv("SUPERRES_SPARK_REMOTE", "sc://127.0.0.1:15002")
    run = describe_run({}, "manual__a", None, when)
    args = job_parser("test").parse_args(job_arguments(run, settings_of(run)))
    assert args.spark_remote == "sc://127.0.0.1:15002" and args.ds == "2026-01-02"
    uuid.UUID(args.spark_session_id)
    # every task of the run (each rebuilds its arguments from the run's XCom) names the same session ...
    again = job_parser("test").parse_args(job_arguments(run, settings_of(run)))
    assert again.spark_session_id == args.spark_session_id
    # ... and another run, or a fresh resolve of the same run_id, gets a session of its own
    others = [describe_run({}, "manual__b", None, when), describe_run({}, "manual__a", None, when)]
    ids = {job_parser("test").parse_args(job_arguments(r, settings_of(r))).spark_session_id for r in others}
    assert len(ids) == 2 and args.spark_session_id not in ids
