"""Shared pytest fixtures.  Each group is owned by one area; add new groups below, don't mix."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# =========================================================================== Airflow
# Airflow reads its configuration when first imported, so the test session's
# private AIRFLOW_HOME (SQLite metadata DB) is set before any test imports it.
ROOT = Path(__file__).resolve().parent.parent
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="superres-airflow-"))
os.environ["AIRFLOW_HOME"] = str(AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave logging writing to the real streams before pytest closes its captured ones.

    Importing Airflow gives the root logger a StreamHandler on the sys.stdout of that
    moment, which under pytest is a capture file that is closed once the session ends.
    py4j then logs "Closing down clientserver connection" from ``__del__`` at interpreter
    exit, into that closed file ("--- Logging error ---").  The handlers are pointed back
    at the process's own streams, and py4j's shutdown chatter is dropped.
    """
    import logging

    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            stream = getattr(handler, "stream", None)
            if stream not in (sys.__stdout__, sys.__stderr__):
                # Assigned, not setStream(): that flushes the old stream, which may be closed already.
                handler.stream = sys.__stderr__ if stream is sys.stderr else sys.__stdout__
    logging.getLogger("py4j").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata DB for this test session (dag.test needs one)."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                   stdout=subprocess.DEVNULL, env=os.environ.copy())
    return AIRFLOW_HOME

# =========================================================================== storage, S3 (moto), Picsum
# Everything here stays on 127.0.0.1: moto's in-memory S3 and the offline Picsum server.

FAKE_ACCESS_KEY = "AKIATESTFAKE0000KEY"
FAKE_SECRET_KEY = "fake-secret-Zq9wK7pLx2-never-in-messages"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real HTTP S3 endpoint on loopback (moto), shared by the session; state in memory."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _isolate_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy for loopback, and never ask the EC2 metadata service for credentials."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Environment credentials pointing boto3 at moto, for this test only; yields the endpoint."""
    _isolate_network(monkeypatch)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return moto_endpoint


@pytest.fixture
def s3_bucket(aws_env: str) -> str:
    """A fresh, empty bucket on moto (unique name: moto's state lives for the whole session)."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:16]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def picsum_server() -> Iterator[object]:
    """The offline Picsum-compatible server on 127.0.0.1 with the bundled scikit-image photos."""
    from superres.picsum_server import serve

    server = serve(host="127.0.0.1", port=0)
    yield server
    server.close()


@pytest.fixture
def picsum_url(picsum_server: object, monkeypatch: pytest.MonkeyPatch) -> str:
    _isolate_network(monkeypatch)
    return picsum_server.url  # type: ignore[attr-defined]
