"""The whole DAG on a real Spark standalone cluster, with S3 storage, against a local[2] run.

The ``spark_standalone`` fixture starts a master and one worker on 127.0.0.1 from the
pip-installed pyspark.  The same date is run twice through ``dag.test()``:

1. ``spark_default`` = ``local[2]``, local storage (the embedded defaults);
2. ``spark_default`` = ``spark://127.0.0.1:PORT``, storage ``s3://…`` on moto over HTTP,
   exactly as production is configured: only connections and ``SUPERRES_*`` change.

Every output of the date must be byte-identical between the two (the per-run reports, with
timings and run ids, excepted), and the master must have run each Spark job.  Kept small for
CI's 2 cores: 2 photos of 160x128, 48 px tiles (4 tiles per photo), one worker of 2 cores
(the same parallelism as local[2], so the partitioning matches) and 1 GiB.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAKE_ACCESS_KEY, FAKE_SECRET_KEY
from tests.e2e.test_dag_e2e import PER_RUN, check_outputs, run_dag

pytestmark = [pytest.mark.e2e, pytest.mark.spark]

DS = "2026-01-12"
CONF = {"num_images": 2, "scale": 2, "mode": "evaluate", "tile_size": 48,
        "image_width": 160, "image_height": 128}
JOBS = ("split", "inference", "reconstruct", "quality", "evaluate")
# What a run writes for its date, relative to the storage base; locks/ are coordination, not output.
OUTPUT_PREFIXES = (f"raw/ds={DS}/", f"quarantine/ds={DS}/", f"sr/ds={DS}/", f"reports/ds={DS}/")


def deterministic(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items()
            if k.startswith(OUTPUT_PREFIXES) and not any(p in k for p in PER_RUN)}


def local_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def s3_files(s3: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(prefix):]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def test_cluster_run_on_s3_is_byte_identical_to_local_run(
        pipeline_env: dict[str, Any], spark_standalone: dict[str, Any], s3_bucket: str, aws_env: str,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import boto3

    # 1. The reference: local[2] and local storage (pipeline_env's defaults).
    run_dag(DS, **CONF)
    local = deterministic(local_files(pipeline_env["storage"]))
    assert any(k.startswith(f"sr/ds={DS}/") and k.endswith(".png") for k in local)
    assert f"reports/ds={DS}/metrics.json" in local

    # 2. Production's shape: a standalone master, S3 through aws_default, staging on a filesystem
    #    every node reaches (here one machine, so a local directory is shared by construction).
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT",
                       json.dumps({"conn_type": "spark", "host": spark_standalone["master"]}))
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({
        "conn_type": "aws", "login": FAKE_ACCESS_KEY, "password": FAKE_SECRET_KEY,
        "extra": {"region_name": "us-east-1", "endpoint_url": aws_env}}))
    monkeypatch.setenv("SUPERRES_STORAGE_URI", f"s3://{s3_bucket}/pipeline")
    monkeypatch.setenv("SUPERRES_STAGING_URI", str(tmp_path / "cluster-staging"))
    before = {a["id"] for a in spark_standalone["state"]()["completedapps"]}
    run_dag(DS, **CONF)

    s3 = boto3.client("s3")
    remote_all = s3_files(s3, s3_bucket, "pipeline/")
    check_outputs(lambda k: remote_all[k], lambda p: [k for k in remote_all if k.startswith(p)],
                  DS, scale=2, mode="evaluate")
    remote = deterministic(remote_all)

    # Byte-identical outputs: the same objects with the same bytes.
    assert sorted(remote) == sorted(local)
    differ = sorted(k for k in local if local[k] != remote[k])
    assert differ == [], f"cluster/S3 run differs from the local run in {differ}"

    # The work ran on the cluster: one finished application per Spark job, on our master.
    master = spark_standalone["state"]()
    apps = [a for a in master["completedapps"] if a["id"] not in before]
    assert sorted(a["name"] for a in apps) == sorted(f"superres-{job}-{DS}" for job in JOBS)
    assert {a["state"] for a in apps} == {"FINISHED"}
    assert master["activeapps"] == []
    # ...and staging went to the cluster's staging URI, not the local run's.
    staged = tmp_path / "cluster-staging"
    assert sorted(p.name for p in staged.iterdir()) == ["evaluated", "images", "outputs", "sr_tiles", "tiles"]
