"""Storage behind one base URI: a local directory or ``s3://bucket/prefix``.

Every pipeline stage reads and writes through :class:`Storage`, so the same
code runs on a laptop (local dir), in the embedded stack (moto/MinIO) and in
production (S3) by changing ``Settings.storage_uri`` only.

Keys are ``/``-separated strings relative to the base, e.g.
``raw/ds=2026-01-05/123.jpg``.  They are validated on every call, so nothing
can escape the base (no absolute keys, ``..``, backslashes or empty segments).

Partitions are published write-audit-publish style by
:meth:`Storage.replace_partition`: the ``_SUCCESS`` marker (listing every file
with its sha256 and size) goes first and comes back last, a rerun replaces the
whole partition, and readers that gate on the marker never see half a write.
"""

from __future__ import annotations

import abc
import hashlib
import json
import mimetypes
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

SUCCESS = "_SUCCESS"
# Names starting with this are our in-flight temp files/dirs: never valid keys, never listed.
_TMP_PREFIX = ".superres-"

# S3 client defaults: explicit, bounded retries and timeouts instead of botocore's implicit ones.
# botocore's retries.max_attempts counts retries after the first try (total = retries + 1).
S3_RETRIES = 4
S3_CONNECT_TIMEOUT_S = 5.0
S3_READ_TIMEOUT_S = 60.0

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class StorageError(Exception):
    """A storage operation failed for a reason an operator can act on."""


class ObjectNotFound(StorageError, FileNotFoundError):
    """The key does not exist (same exception for both backends)."""


# --------------------------------------------------------------------------- keys


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise ValueError saying why."""
    if not isinstance(key, str):
        raise ValueError(f"storage key must be a string, got {type(key).__name__}")
    if key == "":
        raise ValueError("storage key is empty")
    if "\\" in key:
        raise ValueError(f"storage key {key!r} contains a backslash; use '/' separators")
    if "\x00" in key:
        raise ValueError(f"storage key {key!r} contains a NUL byte")
    if key.startswith("/"):
        raise ValueError(f"storage key {key!r} is absolute; keys are relative to the storage base")
    if re.match(r"^[A-Za-z]:", key):
        raise ValueError(f"storage key {key!r} looks like a drive path; keys are relative")
    for seg in key.split("/"):
        if seg == "":
            raise ValueError(f"storage key {key!r} has an empty segment ('//' or a trailing '/')")
        if seg in (".", ".."):
            raise ValueError(f"storage key {key!r} has a {seg!r} segment; path traversal is not allowed")
        if seg.startswith(_TMP_PREFIX):
            raise ValueError(f"storage key {key!r} uses the reserved prefix {_TMP_PREFIX!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """Normalise a directory-like prefix to ``'a/b/'`` ('' means the whole base)."""
    if prefix == "":
        return ""
    return validate_key(prefix[:-1] if prefix.endswith("/") else prefix) + "/"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _marker(prefix: str, files: Mapping[str, bytes]) -> dict[str, Any]:
    """The ``_SUCCESS`` body: deterministic (no timestamps) so reruns are byte-identical."""
    return _marker_of(prefix, {name: _entry(data) for name, data in files.items()})


def _entry(data: bytes) -> dict[str, Any]:
    return {"sha256": sha256_hex(data), "bytes": len(data)}


def _marker_of(prefix: str, entries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    listing = {name: dict(entries[name]) for name in sorted(entries)}
    return {
        "partition": prefix.rstrip("/"),
        "count": len(listing),
        "total_bytes": sum(v["bytes"] for v in listing.values()),
        "files": listing,
    }


def _check_partition_file(name: str, data: Any) -> None:
    validate_key(name)
    if name == SUCCESS or name.endswith("/" + SUCCESS):
        raise ValueError(f"{SUCCESS!r} is written by the partition publisher itself; do not pass it")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"partition file {name!r} must be bytes, got {type(data).__name__}")


def _check_partition_files(files: Mapping[str, bytes]) -> None:
    for name, data in files.items():
        _check_partition_file(name, data)


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


# --------------------------------------------------------------------------- interface


class Storage(abc.ABC):
    """Byte storage under one base; both backends have identical semantics."""

    @abc.abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; raises :class:`ObjectNotFound` if missing."""

    @abc.abstractmethod
    def write_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Create or overwrite one object (readers see the old or the new bytes, never half)."""

    @abc.abstractmethod
    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if it does not exist (atomically); False if it already did.

        The one compare-and-set both backends offer (O_EXCL, S3 ``If-None-Match: *``):
        what leases are built on.
        """

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys under a directory-like prefix, recursively."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under a (non-empty) prefix; returns how many were deleted."""

    @abc.abstractmethod
    def uri(self, key: str = "") -> str:
        """Full location for humans and logs: a local path or ``s3://bucket/key``."""

    @abc.abstractmethod
    def replace_partition(self, prefix: str, files: Mapping[str, bytes]) -> dict[str, Any]:
        """Atomically-for-readers replace everything under ``prefix`` with ``files``.

        ``files`` maps names relative to the partition to bytes.  Returns the
        ``_SUCCESS`` marker that was published.
        """

    @abc.abstractmethod
    def partition_writer(self, prefix: str) -> PartitionWriter:
        """:meth:`replace_partition` for files that arrive one at a time.

        Files are staged out of sight as they are put, so memory stays at one
        file however large the partition; the partition in place is untouched
        until :meth:`PartitionWriter.commit` (a writer closed without a commit
        discards what it staged).
        """

    # Shared helpers -----------------------------------------------------------

    def read_json(self, key: str) -> Any:
        data = self.read_bytes(key)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise StorageError(f"{self.uri(key)} is not valid JSON: {exc}") from exc

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, _dumps(obj), content_type="application/json")

    def read_marker(self, prefix: str) -> dict[str, Any] | None:
        """The partition's ``_SUCCESS`` marker, or None while it is unpublished/being rewritten."""
        try:
            return self.read_json(validate_prefix(prefix) + SUCCESS)
        except ObjectNotFound:
            return None

    def read_partition(self, prefix: str) -> dict[str, bytes]:
        """The files of a published partition, verified against its marker."""
        prefix = validate_prefix(prefix)
        marker = self.read_marker(prefix)
        if marker is None:
            raise ObjectNotFound(f"partition {self.uri(prefix)} is not published (no {SUCCESS})")
        out: dict[str, bytes] = {}
        for name, meta in marker["files"].items():
            data = self.read_bytes(prefix + name)
            if len(data) != meta["bytes"] or sha256_hex(data) != meta["sha256"]:
                raise StorageError(f"{self.uri(prefix + name)} does not match its {SUCCESS} checksum")
            out[name] = data
        return out


class PartitionWriter(abc.ABC):
    """Stages one partition's files, then publishes them as a whole (or discards them).

    Use as a context manager: leaving the block without :meth:`commit` (an
    error, a failed gate) discards the staged files and leaves the partition
    as it was.
    """

    def __init__(self, prefix: str) -> None:
        prefix = validate_prefix(prefix)
        if not prefix:
            raise ValueError("a partition needs a non-empty prefix")
        self.prefix = prefix
        self.entries: dict[str, dict[str, Any]] = {}
        self._closed = False

    def put(self, name: str, data: bytes) -> None:
        """Stage one file of the partition (a name may be put only once)."""
        if self._closed:
            raise RuntimeError(f"partition writer for {self.prefix!r} is already closed")
        _check_partition_file(name, data)
        if name in self.entries:
            raise ValueError(f"partition file {name!r} was already put into {self.prefix!r}")
        self._stage(name, bytes(data))
        self.entries[name] = _entry(data)

    def commit(self) -> dict[str, Any]:
        """Publish the staged files as the whole partition; returns the ``_SUCCESS`` marker."""
        if self._closed:
            raise RuntimeError(f"partition writer for {self.prefix!r} is already closed")
        marker = _marker_of(self.prefix, self.entries)
        try:
            self._publish(marker)
        finally:
            self._closed = True
            self._discard()
        return marker

    def abort(self) -> None:
        """Drop what was staged; the published partition stays as it was."""
        if not self._closed:
            self._closed = True
            self._discard()

    def __enter__(self) -> PartitionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    @abc.abstractmethod
    def _stage(self, name: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def _publish(self, marker: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def _discard(self) -> None: ...


# --------------------------------------------------------------------------- local


class LocalStorage(Storage):
    """A directory on a filesystem every reader can reach."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*validate_key(key).split("/"))
        # Belt and braces against symlinks pointing out of the base.
        if not path.resolve().is_relative_to(self.root):
            raise ValueError(f"storage key {key!r} resolves outside {self.root}")
        return path

    def _dir(self, prefix: str) -> Path:
        prefix = validate_prefix(prefix)
        return self._path(prefix[:-1]) if prefix else self.root

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"no such object: {path}") from None

    def write_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
        try:
            tmp.write_bytes(data)
            os.link(tmp, path)  # atomic, and fails if the name exists: readers never see half
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._dir(prefix)
        if not base.is_dir():
            return []
        out = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(_TMP_PREFIX)]
            for name in filenames:
                if not name.startswith(_TMP_PREFIX):
                    out.append(Path(dirpath, name).relative_to(self.root).as_posix())
        return sorted(out)

    def delete_prefix(self, prefix: str) -> int:
        if not validate_prefix(prefix):
            raise ValueError("refusing to delete the whole storage base; give a non-empty prefix")
        base = self._dir(prefix)
        n = len(self.list(prefix))
        if base.is_dir():
            shutil.rmtree(base)
        return n

    def uri(self, key: str = "") -> str:
        return str(self._dir(key)) if key.endswith("/") or key == "" else str(self._path(key))

    def replace_partition(self, prefix: str, files: Mapping[str, bytes]) -> dict[str, Any]:
        _check_partition_files(files)
        with self.partition_writer(prefix) as writer:
            for name, data in files.items():
                writer.put(name, data)
            return writer.commit()

    def partition_writer(self, prefix: str) -> PartitionWriter:
        return _LocalPartitionWriter(self, prefix)


class _LocalPartitionWriter(PartitionWriter):
    """Files go to a hidden directory beside the partition; commit swaps the two by rename."""

    def __init__(self, storage: LocalStorage, prefix: str) -> None:
        super().__init__(prefix)
        self.target = storage._dir(self.prefix)
        tag = uuid.uuid4().hex
        self.tmp = self.target.with_name(f"{_TMP_PREFIX}tmp-{tag}-{self.target.name}")
        self.old = self.target.with_name(f"{_TMP_PREFIX}old-{tag}-{self.target.name}")

    def _stage(self, name: str, data: bytes) -> None:
        path = self.tmp.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def _publish(self, marker: dict[str, Any]) -> None:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        # 1. Unpublish: readers gating on _SUCCESS stop trusting the old partition now.
        (self.target / SUCCESS).unlink(missing_ok=True)
        # 2. The complete new partition is beside the old one; its marker goes last.
        self.tmp.mkdir(parents=True, exist_ok=True)
        (self.tmp / SUCCESS).write_bytes(_dumps(marker))
        # 3. Swap: the old set disappears as a whole, so nothing stale can survive.
        if self.target.exists():
            os.rename(self.target, self.old)
        os.rename(self.tmp, self.target)

    def _discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        shutil.rmtree(self.old, ignore_errors=True)


# --------------------------------------------------------------------------- S3


def mask_access_key(key_id: str | None) -> str:
    """``AKIA...XYZ``: enough to tell keys apart in a log, not enough to use one."""
    if not key_id:
        return "<none>"
    return f"{key_id[:4]}...{key_id[-3:]}" if len(key_id) > 8 else "***"


class S3Storage(Storage):
    """Objects under ``s3://bucket/prefix`` through a boto3 S3 client."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        if not _BUCKET_RE.match(bucket):
            raise ValueError(f"invalid S3 bucket name {bucket!r} (3-63 chars of a-z, 0-9, '.', '-')")
        self.client = client
        self.bucket = bucket
        self.base = validate_prefix(prefix.strip("/")) if prefix.strip("/") else ""

    def __repr__(self) -> str:
        return f"S3Storage('s3://{self.bucket}/{self.base}')"

    # -- errors ----------------------------------------------------------------

    def _access_key(self) -> str | None:
        try:
            creds = self.client._request_signer._credentials  # botocore internals: best effort only
            return creds.access_key if creds is not None else None
        except AttributeError:
            return None

    def _scrub(self, text: str) -> str:
        """Remove the secret key from any text we are about to raise (it should never be there)."""
        try:
            creds = self.client._request_signer._credentials
            secret = creds.secret_key if creds is not None else None
        except AttributeError:
            secret = None
        return text.replace(secret, "***") if secret else text

    def _error(self, exc: Exception, what: str, key: str | None = None) -> StorageError:
        """Translate a botocore exception into a StorageError naming the problem."""
        from botocore import exceptions as bce

        where = f"s3://{self.bucket}/{key}" if key is not None else f"s3://{self.bucket}"
        endpoint = self.client.meta.endpoint_url
        if isinstance(exc, bce.NoCredentialsError):
            return StorageError(
                f"{what} {where}: no AWS credentials found (set the Airflow connection or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
            )
        if isinstance(exc, (bce.EndpointConnectionError, bce.ConnectTimeoutError)):
            return StorageError(f"{what} {where}: cannot reach the S3 endpoint {endpoint}")
        if isinstance(exc, bce.ReadTimeoutError):
            return StorageError(f"{what} {where}: S3 endpoint {endpoint} timed out")
        if isinstance(exc, bce.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchBucket",) or (key is None and code in ("404", "NotFound")):
                return StorageError(f"bucket {self.bucket!r} does not exist (endpoint {endpoint})")
            if code in ("NoSuchKey", "404", "NotFound"):
                return ObjectNotFound(f"no such object: {where}")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                        "AuthorizationHeaderMalformed", "InvalidClientTokenId"):
                return StorageError(
                    f"S3 rejected the credentials for access key {mask_access_key(self._access_key())} "
                    f"({code}) while trying to {what} {where}"
                )
            if code in ("AccessDenied", "403", "Forbidden") or status == 403:
                return StorageError(
                    f"access denied to {where} for access key {mask_access_key(self._access_key())} "
                    f"while trying to {what} (check the bucket policy / IAM permissions)"
                )
            detail = f"{code or status}: {err.get('Message', '')}"
            return StorageError(self._scrub(f"{what} {where} failed: {detail}"))
        return StorageError(self._scrub(f"{what} {where} failed: {type(exc).__name__}: {exc}"))

    def _call(self, what: str, key: str | None, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, what, key) from None

    def check(self) -> None:
        """Fail fast: the bucket exists and the credentials are accepted.

        ListObjectsV2 rather than HeadBucket: a HEAD error has no body, so it
        cannot tell a bad access key from a missing permission.
        """
        self._call("access", None, self.client.list_objects_v2,
                   Bucket=self.bucket, Prefix=self.base, MaxKeys=1)

    # -- objects ---------------------------------------------------------------

    def _key(self, key: str) -> str:
        return self.base + validate_key(key)

    def read_bytes(self, key: str) -> bytes:
        full = self._key(key)
        resp = self._call("read", full, self.client.get_object, Bucket=self.bucket, Key=full)
        with resp["Body"] as body:
            return body.read()

    def write_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        full = self._key(key)
        ctype = content_type or mimetypes.guess_type(full)[0] or "application/octet-stream"
        self._call("write", full, self.client.put_object, Bucket=self.bucket, Key=full,
                   Body=bytes(data), ContentType=ctype)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._key(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=bytes(data), IfNoneMatch="*",
                                   ContentType="application/json")
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise self._error(exc, "create", full) from None
        except BotoCoreError as exc:
            raise self._error(exc, "create", full) from None
        return True

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            self._call("stat", full, self.client.head_object, Bucket=self.bucket, Key=full)
        except ObjectNotFound:
            return False
        return True

    def _list_full(self, full_prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        keys: list[str] = []
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "list", full_prefix) from None
        return keys

    def list(self, prefix: str = "") -> list[str]:
        full_prefix = self.base + validate_prefix(prefix)
        return sorted(k[len(self.base):] for k in self._list_full(full_prefix)
                      if not k[len(self.base):].startswith(_TMP_PREFIX))

    def _delete_full(self, full_keys: Iterable[str]) -> int:
        keys = list(full_keys)
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = keys[i:i + 1000]
            resp = self._call("delete", batch[0], self.client.delete_objects, Bucket=self.bucket,
                              Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(f"could not delete {len(errors)} object(s), e.g. "
                                   f"s3://{self.bucket}/{first.get('Key')}: {first.get('Code')}")
        return len(keys)

    def delete_prefix(self, prefix: str) -> int:
        prefix = validate_prefix(prefix)
        if not prefix:
            raise ValueError("refusing to delete the whole storage base; give a non-empty prefix")
        return self._delete_full(self._list_full(self.base + prefix))

    def uri(self, key: str = "") -> str:
        rel = validate_prefix(key) if key.endswith("/") else (validate_key(key) if key else "")
        return f"s3://{self.bucket}/{self.base}{rel}"

    def replace_partition(self, prefix: str, files: Mapping[str, bytes]) -> dict[str, Any]:
        prefix = validate_prefix(prefix)
        if not prefix:
            raise ValueError("replace_partition needs a non-empty prefix")
        _check_partition_files(files)
        success_key = self.base + prefix + SUCCESS
        # 1. Unpublish first: from here on readers treat the partition as in progress.
        self._call("unpublish", success_key, self.client.delete_object, Bucket=self.bucket, Key=success_key)
        # 2. Write (overwrite) the new set.
        for name, data in sorted(files.items()):
            self.write_bytes(prefix + name, data)
        # 3. Remove what the previous run wrote that is not in the new set.
        keep = {self.base + prefix + name for name in files}
        stale = [k for k in self._list_full(self.base + prefix) if k not in keep]
        self._delete_full(stale)
        # 4. Publish last.
        marker = _marker(prefix, files)
        self.write_bytes(prefix + SUCCESS, _dumps(marker), content_type="application/json")
        return marker

    def partition_writer(self, prefix: str) -> PartitionWriter:
        return _S3PartitionWriter(self, prefix)


class _S3PartitionWriter(PartitionWriter):
    """Files go under a hidden staging prefix; commit copies them into place server-side.

    The copy (CopyObject) moves no bytes through this process, and the same
    unpublish / write / drop stale / publish order as ``replace_partition``
    keeps readers that gate on ``_SUCCESS`` safe.
    """

    def __init__(self, storage: S3Storage, prefix: str) -> None:
        super().__init__(prefix)
        self.s3 = storage
        self.staging = f"{storage.base}{_TMP_PREFIX}staging/{uuid.uuid4().hex}/"

    def _stage(self, name: str, data: bytes) -> None:
        s3, key = self.s3, self.staging + name
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        s3._call("write", key, s3.client.put_object, Bucket=s3.bucket, Key=key, Body=data, ContentType=ctype)

    def _publish(self, marker: dict[str, Any]) -> None:
        s3 = self.s3
        full = s3.base + self.prefix
        s3._call("unpublish", full + SUCCESS, s3.client.delete_object, Bucket=s3.bucket, Key=full + SUCCESS)
        for name in sorted(self.entries):
            s3._call("copy", full + name, s3.client.copy_object, Bucket=s3.bucket, Key=full + name,
                     CopySource={"Bucket": s3.bucket, "Key": self.staging + name})
        keep = {full + name for name in self.entries}
        s3._delete_full(k for k in s3._list_full(full) if k not in keep)
        s3.write_bytes(self.prefix + SUCCESS, _dumps(marker), content_type="application/json")

    def _discard(self) -> None:
        self.s3._delete_full(self.s3._list_full(self.staging))


# --------------------------------------------------------------------------- factory


def _s3_config(retries: int, connect_timeout_s: float, read_timeout_s: float) -> Any:
    from botocore.config import Config

    return Config(
        retries={"max_attempts": retries, "mode": "standard"},
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
    )


def _airflow_s3_client(aws_conn_id: str, config: Any) -> Any | None:
    """A client built from the Airflow connection, or None when Airflow is not installed."""
    try:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    except ImportError:
        return None
    # Settings from the connection's extra "config_kwargs" win over our defaults.
    conn_cfg = S3Hook(aws_conn_id=aws_conn_id).conn_config.botocore_config
    merged = config.merge(conn_cfg) if conn_cfg is not None else config
    return S3Hook(aws_conn_id=aws_conn_id, config=merged).get_conn()


def make_s3_client(
    aws_conn_id: str | None = None,
    *,
    retries: int = S3_RETRIES,
    connect_timeout_s: float = S3_CONNECT_TIMEOUT_S,
    read_timeout_s: float = S3_READ_TIMEOUT_S,
) -> Any:
    """An S3 client: from the Airflow connection if given and available, else from the environment."""
    config = _s3_config(retries, connect_timeout_s, read_timeout_s)
    if aws_conn_id:
        client = _airflow_s3_client(aws_conn_id, config)
        if client is not None:
            return client
    import boto3

    # Honours AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL / AWS_DEFAULT_REGION.
    return boto3.session.Session().client("s3", config=config)


def open_storage(
    uri: str,
    aws_conn_id: str | None = None,
    *,
    check: bool = True,
    retries: int = S3_RETRIES,
    connect_timeout_s: float = S3_CONNECT_TIMEOUT_S,
    read_timeout_s: float = S3_READ_TIMEOUT_S,
) -> Storage:
    """Storage for a base URI: a plain path, ``file://...`` or ``s3://bucket[/prefix]``.

    For S3, ``check`` (default) verifies bucket and credentials up front so a
    misconfiguration fails the task immediately with a clear message.
    """
    if not uri:
        raise ValueError("storage URI is empty")
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file"):
        if scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise ValueError(f"file URI {uri!r} names a remote host {parsed.netloc!r}")
            return LocalStorage(unquote(parsed.path))
        return LocalStorage(uri)
    if scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"S3 URI {uri!r} has no bucket (expected s3://bucket/prefix)")
        if parsed.query or parsed.fragment:
            raise ValueError(f"S3 URI {uri!r} must not have a query or fragment")
        client = make_s3_client(aws_conn_id, retries=retries,
                                connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s)
        storage = S3Storage(client, parsed.netloc, unquote(parsed.path))
        if check:
            storage.check()
        return storage
    raise ValueError(f"unsupported storage URI scheme {scheme!r} in {uri!r} (use a path, file:// or s3://)")
