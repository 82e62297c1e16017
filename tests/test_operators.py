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


def test_every_job_setting_comes_from_the_run_not_the_job_environment(monkeypatch) -> None:
    """Each option of the jobs' parser is passed by the operator from the run's settings, so a
    setting given to the run (params or the scheduler's environment) never falls back silently
    to whatever the Spark job's own environment says."""
    import datetime as dt

    from superres.orchestration.operators import job_arguments
    from superres.orchestration.run import describe_run, settings_of
    from superres.pipeline.spark import job_parser

    for name, value in {"SR_BELOW_BICUBIC_DB": "7.5", "NEAR_CONSTANT_STD": "2.5", "BATCH_SIZE": "3",
                        "MAX_PIXELS": "1234"}.items():
        monkeypatch.setenv(f"SUPERRES_{name}", value)  # the scheduler's environment
    run = describe_run({"scale": 4, "mode": "upscale"}, "manual__s", None, dt.date(2026, 1, 5))
    for name in ("SR_BELOW_BICUBIC_DB", "NEAR_CONSTANT_STD", "BATCH_SIZE", "MAX_PIXELS"):
        monkeypatch.delenv(f"SUPERRES_{name}")  # a Spark job's environment without them
    given = job_arguments(run, settings_of(run))
    parser = job_parser("test")
    # Only for a Spark Connect run; and --partitions, a job's own knob with no setting behind it.
    optional = {"--spark-remote", "--spark-session-id", "--spark-connect-timeout-s", "--help", "--partitions"}
    options = {o for a in parser._actions for o in a.option_strings if o.startswith("--")} - optional
    assert options <= set(given), options - set(given)
    args = parser.parse_args(given)
    got = (args.sr_below_bicubic_db, args.near_constant_std, args.batch_size, args.max_pixels)
    assert got == (7.5, 2.5, 3, 1234)
    assert (args.scale, args.mode) == (4, "upscale")
