"""Storage faults: transient S3 errors are retried (explicit, bounded botocore retries); bad
credentials, a missing bucket or an unreachable endpoint fail fast with a message that names the
problem and shows no secret.

S3 is moto's real HTTP endpoint on 127.0.0.1, behind :class:`FlakyS3` (a loopback proxy that
answers 503 SlowDown / 500 InternalError on a schedule) where a fault is needed; credential
checks use moto's own authentication (``/moto-api/reset-auth``) on a private moto server.
botocore's backoff delays are recorded but not slept.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from superres import storage as st
from superres.orchestration import tasks
from superres.storage import S3Storage, StorageError, open_storage
from tests.conftest import FAKE_SECRET_KEY, _isolate_network
from tests.reliability.faulty_picsum import FaultyPicsum
from tests.reliability.io_fixtures import DS, bounded, free_port, settings_for
from tests.reliability.s3_proxy import FlakyS3


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """botocore's standard-mode backoff, computed as usual and recorded, but never slept."""
    from botocore.retries import standard

    computed: list[float] = []
    original = standard.ExponentialBackoff.delay_amount

    def record(self: Any, context: Any) -> float:
        computed.append(original(self, context))
        return 0.0

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", record)
    return computed


@pytest.fixture
def flaky(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FlakyS3]:
    """The session's moto behind a flaky proxy; boto3 (env credentials) points at the proxy."""
    with FlakyS3(aws_env) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield proxy


@pytest.fixture
def bucket(flaky: FlakyS3) -> str:
    import boto3

    name = f"flaky-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    flaky.clear()
    return name


def attempts(proxy: FlakyS3) -> list[str]:
    """botocore's own count of each request (``amz-sdk-request: [ttl=...; ]attempt=N; max=M``)."""
    return [re.sub(r"^ttl=[^;]*;\s*", "", s.attempt) for s in proxy.seen]


def no_secret_anywhere(exc: BaseException, *secrets: str) -> None:
    """Neither the message, the repr, nor the formatted traceback (with its chain) shows a secret."""
    text = "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)
    for secret in secrets:
        assert secret not in text
    assert exc.__cause__ is None and exc.__suppress_context__  # botocore's exception is not chained


# --------------------------------------------------------------------------- the retry config


def test_s3_client_retry_config_is_explicit(aws_env: str) -> None:
    """Standard mode, 4 retries after the first try, and connect/read timeouts: all set by us."""
    assert (st.S3_RETRIES, st.S3_CONNECT_TIMEOUT_S, st.S3_READ_TIMEOUT_S) == (4, 5.0, 60.0)
    default = st.make_s3_client().meta.config
    assert default.retries == {"total_max_attempts": st.S3_RETRIES + 1, "mode": "standard"}
    assert (default.connect_timeout, default.read_timeout) == (5.0, 60.0)
    custom = st.make_s3_client(retries=3, connect_timeout_s=2.0, read_timeout_s=7.0)
    assert custom.meta.config.retries == {"total_max_attempts": 4, "mode": "standard"}
    assert (custom.meta.config.connect_timeout, custom.meta.config.read_timeout) == (2.0, 7.0)
    assert custom.meta.endpoint_url == aws_env  # AWS_ENDPOINT_URL honoured
    s3 = open_storage("s3://any-bucket-name", check=False)
    assert isinstance(s3, S3Storage)
    assert s3.client.meta.config.retries == {"total_max_attempts": st.S3_RETRIES + 1, "mode": "standard"}


# --------------------------------------------------------------------------- transient errors


@pytest.mark.parametrize("status, code", [
    (503, "SlowDown"), (500, "InternalError"), (503, "ServiceUnavailable"),
])
def test_transient_s3_errors_are_retried_then_succeed(
        flaky: FlakyS3, bucket: str, delays: list[float], status: int, code: str) -> None:
    s3 = open_storage(f"s3://{bucket}/base")
    flaky.clear()
    flaky.fail(3, status=status, code=code)
    s3.write_bytes("raw/ds=2026-01-05/1.jpg", b"photo bytes")
    assert attempts(flaky) == [f"attempt={n}; max=5" for n in range(1, 5)]  # 3 failures, then through
    assert [s.status for s in flaky.seen] == [status, status, status, 200]
    assert len(delays) == 3 and all(d >= 0 for d in delays)

    flaky.clear()
    flaky.fail(2, status=status, code=code)
    assert s3.read_bytes("raw/ds=2026-01-05/1.jpg") == b"photo bytes"
    assert [s.status for s in flaky.seen] == [status, status, 200]


def test_throttling_backoff_grows_exponentially(flaky: FlakyS3, bucket: str, delays: list[float],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """With the jitter pinned to its maximum, SlowDown waits 1, 2, 4, 8 s (botocore standard mode)."""
    from botocore.retries import standard

    original_init = standard.ExponentialBackoff.__init__

    def no_jitter(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._random = lambda: 1.0

    monkeypatch.setattr(standard.ExponentialBackoff, "__init__", no_jitter)
    client = st.make_s3_client()
    flaky.fail(4)
    S3Storage(client, bucket).write_bytes("k", b"v")
    assert delays == [1.0, 2.0, 4.0, 8.0]


def test_partition_is_published_complete_through_intermittent_errors(
        flaky: FlakyS3, bucket: str, delays: list[float]) -> None:
    s3 = open_storage(f"s3://{bucket}/base")
    files = {f"{i}.jpg": f"photo {i}".encode() * 50 for i in range(5)} | {"_manifest.json": b"{}"}

    flaky.every = 3  # every third request fails (and is retried), all through the partition swap
    marker = s3.replace_partition("raw/ds=2026-01-05", files)
    flaky.every = 0
    assert sum(1 for s in flaky.seen if s.status == 503) >= 3 and delays
    assert marker["count"] == len(files)
    assert s3.read_partition("raw/ds=2026-01-05") == files  # every file there, checksums verified


def test_persistent_errors_give_up_after_the_configured_attempts(
        flaky: FlakyS3, bucket: str, delays: list[float]) -> None:
    s3 = open_storage(f"s3://{bucket}/base")
    flaky.clear()
    flaky.fail(100)
    with pytest.raises(StorageError) as info:
        bounded(lambda: s3.write_bytes("k", b"v"))
    assert len(flaky.seen) == st.S3_RETRIES + 1 and len(delays) == st.S3_RETRIES
    message = str(info.value)
    assert "SlowDown" in message and f"s3://{bucket}/base/k" in message
    no_secret_anywhere(info.value, FAKE_SECRET_KEY)


def test_unreachable_endpoint_is_a_clear_bounded_error(aws_env: str, monkeypatch: pytest.MonkeyPatch,
                                                      delays: list[float]) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    with pytest.raises(StorageError) as info:
        bounded(lambda: open_storage("s3://some-bucket/x"))
    assert f"cannot reach the S3 endpoint {endpoint}" in str(info.value)
    assert len(delays) == st.S3_RETRIES  # connection errors are retried too, then it stops
    no_secret_anywhere(info.value, FAKE_SECRET_KEY)


# --------------------------------------------------------------------------- fail fast


def test_missing_bucket_fails_fast_with_its_name_and_no_secret(flaky: FlakyS3, delays: list[float]) -> None:
    with pytest.raises(StorageError) as info:
        open_storage("s3://no-such-bucket-for-superres/prefix")
    assert f"bucket 'no-such-bucket-for-superres' does not exist (endpoint {flaky.url})" in str(info.value)
    assert len(flaky.seen) == 1 and delays == []  # one request, no retries
    no_secret_anywhere(info.value, FAKE_SECRET_KEY)


def test_no_credentials_is_a_clear_error(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match="no AWS credentials found"):
        open_storage("s3://any-bucket")


AUTH_SECRET_WRONG = "wrong-Secret-Key-Zq81-NEVER-IN-MESSAGES"
UNKNOWN_SECRET = "unknown-Key-Secret-77Hh-NEVER-IN-MESSAGES"


@pytest.fixture(scope="module")
def moto_with_auth() -> Iterator[dict[str, str]]:
    """A private moto server with a bucket and an IAM user allowed s3:*; auth is off until enabled."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    admin = {"endpoint_url": endpoint, "region_name": "us-east-1",
             "aws_access_key_id": "AKIAADMIN00000000000", "aws_secret_access_key": "admin"}
    boto3.client("s3", **admin).create_bucket(Bucket="auth-bucket")
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName="pipeline")
    key = iam.create_access_key(UserName="pipeline")["AccessKey"]
    iam.put_user_policy(UserName="pipeline", PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    yield {"endpoint": endpoint, "key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    server.stop()


@pytest.fixture
def auth_on(moto_with_auth: dict[str, str], monkeypatch: pytest.MonkeyPatch,
            tmp_path: Path) -> Iterator[dict]:
    """moto checks every request's credentials (process-wide, so switched back off afterwards)."""
    _isolate_network(monkeypatch)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    opener = requests.Session()
    opener.trust_env = False
    opener.post(moto_with_auth["endpoint"] + "/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    try:
        yield moto_with_auth
    finally:
        opener.post(moto_with_auth["endpoint"] + "/moto-api/reset-auth", data=b"inf", timeout=10)


def _boto(endpoint: str, key: str, secret: str) -> Any:
    import boto3

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
        aws_secret_access_key=secret, config=st._s3_config(st.S3_RETRIES, 5.0, 60.0))


@pytest.mark.parametrize("who", ["unknown_access_key", "wrong_secret"])
def test_bad_credentials_fail_fast_naming_the_problem_not_the_secret(
        auth_on: dict[str, str], delays: list[float], caplog: pytest.LogCaptureFixture, who: str) -> None:
    caplog.set_level(logging.DEBUG)
    if who == "unknown_access_key":
        key, secret, code = "AKIAUNKNOWNKEY000XYZ", UNKNOWN_SECRET, "InvalidAccessKeyId"
    else:
        key, secret, code = auth_on["key"], AUTH_SECRET_WRONG, "SignatureDoesNotMatch"
    with FlakyS3(auth_on["endpoint"]) as proxy:
        s3 = S3Storage(_boto(proxy.url, key, secret), "auth-bucket")
        with pytest.raises(StorageError) as info:
            s3.check()
        assert len(proxy.seen) == 1 and delays == []  # a 403 is final: no retries
    message = str(info.value)
    assert f"S3 rejected the credentials for access key {st.mask_access_key(key)} ({code})" in message
    assert key not in message  # only the masked form
    no_secret_anywhere(info.value, secret)
    assert secret not in caplog.text


def test_good_credentials_pass_the_same_check(auth_on: dict[str, str]) -> None:
    s3 = S3Storage(_boto(auth_on["endpoint"], auth_on["key"], auth_on["secret"]), "auth-bucket")
    s3.check()
    s3.write_bytes("k", b"v")
    assert s3.read_bytes("k") == b"v"


@pytest.mark.parametrize("code, status, message", [
    ("InvalidAccessKeyId", 403, "S3 rejected the credentials for access key AKIA...XYZ"),
    ("SignatureDoesNotMatch", 403, "S3 rejected the credentials for access key AKIA...XYZ"),
    ("ExpiredToken", 400, "S3 rejected the credentials for access key AKIA...XYZ"),
    ("AccessDenied", 403, "access denied to s3://bucket-x for access key AKIA...XYZ"),
])
def test_rejected_credentials_are_masked(code: str, status: int, message: str) -> None:
    """Even an S3 that echoes the secret in its error message does not get it into ours."""
    from botocore.stub import Stubber

    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    client = _boto("http://127.0.0.1:9", "AKIAIOSFODNN7EXAMPLEXYZ", secret)
    with Stubber(client) as stub:
        stub.add_client_error("list_objects_v2", service_error_code=code, http_status_code=status,
                              service_message=f"message that echoes {secret}")
        with pytest.raises(StorageError) as info:
            S3Storage(client, "bucket-x").check()
    text = str(info.value)
    assert message in text
    assert "AKIAIOSFODNN7EXAMPLEXYZ" not in text and secret not in text


def test_unexpected_s3_errors_are_scrubbed_of_the_secret() -> None:
    from botocore.stub import Stubber

    secret = "sEcReT-value-that-must-not-leak-123456"
    client = _boto("http://127.0.0.1:9", "AKIAEXAMPLE", secret)
    with Stubber(client) as stub:
        stub.add_client_error("get_object", service_error_code="WeirdError", http_status_code=400,
                              service_message=f"weird server echoing {secret}")
        with pytest.raises(StorageError) as info:
            S3Storage(client, "bucket-x").read_bytes("k")
    assert "WeirdError" in str(info.value) and secret not in str(info.value)


def test_fetch_task_with_bad_connection_credentials_fails_before_fetching(
        auth_on: dict[str, str], faulty: FaultyPicsum, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    """Through the Airflow connection, as in the DAG: the task stops at the storage check, names the
    problem, has not touched the photo source, and the connection's password is nowhere."""
    pytest.importorskip("airflow.providers.amazon.aws.hooks.s3")
    caplog.set_level(logging.DEBUG)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "SUPERRES_STORAGE_URI"):
        monkeypatch.delenv(name, raising=False)
    conn = {"conn_type": "aws", "login": auth_on["key"], "password": AUTH_SECRET_WRONG,
            "extra": {"region_name": "us-east-1", "endpoint_url": auth_on["endpoint"]}}
    monkeypatch.setenv("AIRFLOW_CONN_RELIABILITY_S3", json.dumps(conn))
    settings = settings_for(faulty.url, storage_uri="s3://auth-bucket/pipeline", aws_conn_id="reliability_s3")
    run = {"ds": DS, "run_id": "manual__bad_creds", "token": "t1", "settings": settings.public()}
    rejected = r"S3 rejected the credentials .*\(SignatureDoesNotMatch\)"
    with pytest.raises(StorageError, match=rejected) as info:
        bounded(lambda: tasks.fetch(run))
    assert faulty.paths == []  # failed fast: not one photo was requested
    no_secret_anywhere(info.value, AUTH_SECRET_WRONG)
    out = capsys.readouterr()
    assert AUTH_SECRET_WRONG not in caplog.text + out.out + out.err
