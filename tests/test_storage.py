"""One storage contract, two backends (local dir and S3 on moto), plus each backend's own edges."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from superres import storage as st
from superres.storage import LocalStorage, ObjectNotFound, S3Storage, Storage, StorageError, open_storage
from tests.conftest import FAKE_ACCESS_KEY, FAKE_SECRET_KEY


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return open_storage(str(tmp_path / "store"))
    bucket = request.getfixturevalue("s3_bucket")
    return open_storage(f"s3://{bucket}/base/prefix")


def snapshot(s: Storage) -> dict[str, bytes]:
    return {key: s.read_bytes(key) for key in s.list("")}


# --------------------------------------------------------------------------- the shared contract


def test_write_read_exists_roundtrip(store: Storage) -> None:
    assert not store.exists("raw/ds=2026-01-05/1.jpg")
    store.write_bytes("raw/ds=2026-01-05/1.jpg", b"\xff\xd8one", content_type="image/jpeg")
    assert store.exists("raw/ds=2026-01-05/1.jpg")
    assert store.read_bytes("raw/ds=2026-01-05/1.jpg") == b"\xff\xd8one"
    store.write_bytes("raw/ds=2026-01-05/1.jpg", b"two")  # overwrite
    assert store.read_bytes("raw/ds=2026-01-05/1.jpg") == b"two"
    assert not store.exists("raw/ds=2026-01-05")  # a "directory" is not an object


def test_missing_object_is_object_not_found(store: Storage) -> None:
    with pytest.raises(ObjectNotFound) as info:
        store.read_bytes("nope/missing.bin")
    assert isinstance(info.value, FileNotFoundError)
    assert "missing.bin" in str(info.value)


def test_list_is_sorted_recursive_and_respects_segment_boundaries(store: Storage) -> None:
    for key in ("a/b/2.txt", "a/b/1.txt", "a/b/deep/x.txt", "a/bc/no.txt", "z.txt"):
        store.write_bytes(key, key.encode())
    assert store.list("a/b") == ["a/b/1.txt", "a/b/2.txt", "a/b/deep/x.txt"]
    assert store.list("a/b/") == store.list("a/b")
    assert store.list("") == ["a/b/1.txt", "a/b/2.txt", "a/b/deep/x.txt", "a/bc/no.txt", "z.txt"]
    assert store.list("missing") == []


def test_json_helpers(store: Storage) -> None:
    obj = {"b": [1, 2], "a": "ü"}
    store.write_json("reports/x.json", obj)
    assert store.read_json("reports/x.json") == obj
    store.write_bytes("reports/bad.json", b"{not json")
    with pytest.raises(StorageError, match="not valid JSON"):
        store.read_json("reports/bad.json")


def test_delete_prefix_removes_only_that_prefix(store: Storage) -> None:
    for key in ("p/1", "p/sub/2", "pq/3", "other/4"):
        store.write_bytes(key, b"x")
    assert store.delete_prefix("p") == 2
    assert store.list("") == ["other/4", "pq/3"]
    assert store.delete_prefix("p") == 0
    with pytest.raises(ValueError, match="whole storage base"):
        store.delete_prefix("")


def test_uri_names_the_real_location(store: Storage) -> None:
    uri = store.uri("raw/ds=2026-01-05/1.jpg")
    if isinstance(store, S3Storage):
        assert uri == f"s3://{store.bucket}/base/prefix/raw/ds=2026-01-05/1.jpg"
    else:
        assert isinstance(store, LocalStorage)
        assert Path(uri) == store.root / "raw" / "ds=2026-01-05" / "1.jpg"
        store.write_bytes("raw/ds=2026-01-05/1.jpg", b"abc")
        assert Path(uri).read_bytes() == b"abc"


BAD_KEYS = ["../escape", "a/../../b", "/etc/passwd", "a\\b", "a//b", "", "a/", ".", "./a", "C:/x", "a/\x00"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_traversal_and_malformed_keys_are_rejected(store: Storage, key: str) -> None:
    for call in (lambda: store.read_bytes(key), lambda: store.write_bytes(key, b"x"),
                 lambda: store.exists(key), lambda: store.replace_partition("part", {key: b"x"})):
        with pytest.raises(ValueError, match="storage key"):
            call()
    assert store.list("") == []  # nothing was written anywhere


@pytest.mark.parametrize("prefix", ["../x", "/abs", "a//b", "a\\b"])
def test_bad_prefixes_are_rejected(store: Storage, prefix: str) -> None:
    for call in (lambda: store.list(prefix), lambda: store.delete_prefix(prefix),
                 lambda: store.replace_partition(prefix, {"f": b"x"})):
        with pytest.raises(ValueError):
            call()


def test_replace_partition_publishes_marker_with_checksums(store: Storage) -> None:
    files = {"1.jpg": b"one", "2.jpg": b"twotwo", "sub/_manifest.json": b"{}"}
    marker = store.replace_partition("raw/ds=2026-01-05", files)
    assert store.list("raw/ds=2026-01-05") == [
        "raw/ds=2026-01-05/1.jpg", "raw/ds=2026-01-05/2.jpg", "raw/ds=2026-01-05/_SUCCESS",
        "raw/ds=2026-01-05/sub/_manifest.json",
    ]
    on_disk = store.read_json("raw/ds=2026-01-05/_SUCCESS")
    assert on_disk == marker == store.read_marker("raw/ds=2026-01-05/")
    assert marker["count"] == 3 and marker["total_bytes"] == 3 + 6 + 2
    assert marker["files"]["2.jpg"] == {"sha256": hashlib.sha256(b"twotwo").hexdigest(), "bytes": 6}
    assert store.read_partition("raw/ds=2026-01-05") == files


def test_replace_partition_rerun_is_idempotent_and_replaces(store: Storage) -> None:
    store.write_bytes("raw/ds=2026-01-04/keep.jpg", b"neighbour")  # another partition is untouched
    first = {"1.jpg": b"one", "2.jpg": b"two", "old/nested.bin": b"stale"}
    store.replace_partition("raw/ds=2026-01-05", first)
    before = snapshot(store)
    store.replace_partition("raw/ds=2026-01-05", first)
    assert snapshot(store) == before  # same objects, same bytes, nothing duplicated

    second = {"2.jpg": b"two-v2", "3.jpg": b"three"}
    store.replace_partition("raw/ds=2026-01-05", second)
    assert store.list("raw/ds=2026-01-05") == [
        "raw/ds=2026-01-05/2.jpg", "raw/ds=2026-01-05/3.jpg", "raw/ds=2026-01-05/_SUCCESS",
    ]
    assert store.read_partition("raw/ds=2026-01-05") == second
    assert store.read_bytes("raw/ds=2026-01-04/keep.jpg") == b"neighbour"

    store.replace_partition("raw/ds=2026-01-05", {})  # an empty partition is still published
    assert store.list("raw/ds=2026-01-05") == ["raw/ds=2026-01-05/_SUCCESS"]


def test_replace_partition_refuses_reserved_and_non_bytes(store: Storage) -> None:
    with pytest.raises(ValueError, match="_SUCCESS"):
        store.replace_partition("part", {"_SUCCESS": b"forged"})
    with pytest.raises(TypeError):
        store.replace_partition("part", {"a.txt": "not bytes"})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        store.replace_partition("", {"a": b"x"})
    assert store.list("") == []


def test_partition_writer_streams_files_and_publishes_like_replace_partition(store: Storage) -> None:
    store.replace_partition("sr/ds=2026-01-05", {"stale.png": b"old", "kept.png": b"v1"})
    store.write_bytes("sr/ds=2026-01-04/other.png", b"neighbour")
    files = {"kept.png": b"v2", "new.png": b"fresh", "sub/x.bin": b"nested"}
    with store.partition_writer("sr/ds=2026-01-05") as writer:
        for name, data in files.items():
            writer.put(name, data)
        # Staged, not published: the partition in place is still the old one, and the
        # staged files are invisible to listings at any level.
        assert store.read_partition("sr/ds=2026-01-05") == {"stale.png": b"old", "kept.png": b"v1"}
        assert store.list("") == ["sr/ds=2026-01-04/other.png", "sr/ds=2026-01-05/_SUCCESS",
                                  "sr/ds=2026-01-05/kept.png", "sr/ds=2026-01-05/stale.png"]
        marker = writer.commit()
    assert store.read_partition("sr/ds=2026-01-05") == files  # the stale file is gone
    assert marker == store.read_marker("sr/ds=2026-01-05")
    # Byte-identical to publishing the same files in one call: one marker format for both paths.
    assert marker == store.replace_partition("sr/ds=2026-01-05", files)
    assert store.list("") == ["sr/ds=2026-01-04/other.png", "sr/ds=2026-01-05/_SUCCESS",
                              "sr/ds=2026-01-05/kept.png", "sr/ds=2026-01-05/new.png",
                              "sr/ds=2026-01-05/sub/x.bin"]


def test_partition_writer_without_commit_leaves_the_partition_and_no_trace(store: Storage) -> None:
    store.replace_partition("sr/ds=2026-01-05", {"a.png": b"published"})
    before = snapshot(store)
    with pytest.raises(RuntimeError, match="gate"), store.partition_writer("sr/ds=2026-01-05") as writer:
        writer.put("a.png", b"candidate")
        writer.put("b.png", b"candidate")
        raise RuntimeError("the gate failed")
    assert snapshot(store) == before
    with store.partition_writer("sr/ds=2026-01-05") as writer:
        writer.put("a.png", b"never committed")
    assert snapshot(store) == before
    if isinstance(store, S3Storage):  # nothing left in the hidden staging area either
        assert store._list_full(store.base) == [store.base + k for k in sorted(before)]
    else:
        assert sorted(p.name for p in (store.root / "sr").iterdir()) == ["ds=2026-01-05"]


def test_partition_writer_refuses_duplicates_reserved_names_and_use_after_close(store: Storage) -> None:
    with store.partition_writer("part") as writer:
        writer.put("a.bin", b"x")
        with pytest.raises(ValueError, match="already put"):
            writer.put("a.bin", b"y")
        with pytest.raises(ValueError, match="_SUCCESS"):
            writer.put("_SUCCESS", b"forged")
        with pytest.raises(TypeError):
            writer.put("b.txt", "not bytes")  # type: ignore[arg-type]
        assert writer.commit()["count"] == 1
        with pytest.raises(RuntimeError, match="closed"):
            writer.put("c.bin", b"late")
    with pytest.raises(ValueError):
        store.partition_writer("")
    assert store.read_partition("part") == {"a.bin": b"x"}


def test_read_partition_detects_tampering_and_unpublished(store: Storage) -> None:
    with pytest.raises(ObjectNotFound, match="not published"):
        store.read_partition("part")
    store.replace_partition("part", {"a.bin": b"original"})
    store.write_bytes("part/a.bin", b"tampered")
    with pytest.raises(StorageError, match="checksum"):
        store.read_partition("part")


# --------------------------------------------------------------------------- write-audit-publish order


def test_local_failed_swap_leaves_partition_unpublished_and_no_temp_dirs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStorage(tmp_path)
    store.replace_partition("raw/ds=1", {"a": b"old"})

    def broken_rename(src: object, dst: object) -> None:
        raise OSError("disk went away")

    monkeypatch.setattr(st.os, "rename", broken_rename)
    with pytest.raises(OSError, match="disk went away"):
        store.replace_partition("raw/ds=1", {"a": b"new", "b": b"new"})
    assert store.read_marker("raw/ds=1") is None  # readers must not trust it any more
    assert store.list("") == ["raw/ds=1/a"]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["ds=1"]  # temp dir cleaned up


def test_local_temp_files_are_never_listed(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    store.write_bytes("x/a", b"1")
    (tmp_path / "x" / ".superres-tmp-crashed").mkdir()
    (tmp_path / "x" / ".superres-tmp-crashed" / "half").write_bytes(b"partial")
    (tmp_path / "x" / ".superres-123-a").write_bytes(b"partial")
    assert store.list("") == ["x/a"]


def test_local_symlink_cannot_escape_the_base(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    base = tmp_path / "base"
    base.mkdir()
    os.symlink(outside, base / "link")
    store = LocalStorage(base)
    with pytest.raises(ValueError, match="outside"):
        store.read_bytes("link/secret.txt")


def test_s3_success_marker_is_deleted_first_and_written_last(s3_bucket: str) -> None:
    store = open_storage(f"s3://{s3_bucket}/wap")
    assert isinstance(store, S3Storage)
    store.replace_partition("part", {"old.bin": b"old"})
    calls: list[tuple[str, str]] = []
    client = store.client

    def record(name: str):
        real = getattr(client, name)

        def wrapper(**kwargs):
            if name == "delete_objects":
                keys = [o["Key"] for o in kwargs["Delete"]["Objects"]]
            else:
                keys = [kwargs["Key"]]
            calls.extend((name, k.rsplit("/", 1)[-1]) for k in keys)
            return real(**kwargs)
        return wrapper

    for name in ("put_object", "delete_object", "delete_objects"):
        setattr(client, name, record(name))
    store.replace_partition("part", {"new1.bin": b"1", "new2.bin": b"2"})
    assert calls[0] == ("delete_object", "_SUCCESS")
    assert calls[-1] == ("put_object", "_SUCCESS")
    assert ("delete_objects", "old.bin") in calls
    assert calls.index(("delete_objects", "old.bin")) > calls.index(("put_object", "new2.bin"))


def test_s3_failed_write_leaves_partition_unpublished(
        s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_storage(f"s3://{s3_bucket}")
    store.replace_partition("part", {"a": b"old"})
    real = store.write_bytes
    written: list[str] = []

    def flaky(key: str, data: bytes, content_type: str | None = None) -> None:
        if written:
            raise StorageError("injected failure")
        written.append(key)
        real(key, data, content_type)

    monkeypatch.setattr(store, "write_bytes", flaky)
    with pytest.raises(StorageError, match="injected"):
        store.replace_partition("part", {"a": b"new", "b": b"new"})
    assert store.read_marker("part") is None


# --------------------------------------------------------------------------- open_storage


def test_open_storage_local_forms(tmp_path: Path) -> None:
    plain = open_storage(str(tmp_path / "d"))
    as_uri = open_storage((tmp_path / "d").as_uri())
    assert isinstance(plain, LocalStorage) and isinstance(as_uri, LocalStorage)
    assert plain.root == as_uri.root == (tmp_path / "d").resolve()
    plain.write_bytes("k", b"v")
    assert as_uri.read_bytes("k") == b"v"


@pytest.mark.parametrize("uri, message", [
    ("", "empty"),
    ("gs://bucket/x", "unsupported storage URI scheme"),
    ("s3:///just-a-path", "no bucket"),
    ("file://otherhost/x", "remote host"),
])
def test_open_storage_rejects_bad_uris(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_storage(uri)


def test_s3_prefix_isolation(s3_bucket: str) -> None:
    a = open_storage(f"s3://{s3_bucket}/team-a")
    b = open_storage(f"s3://{s3_bucket}/team-a-2")
    a.write_bytes("x", b"a")
    b.write_bytes("x", b"b")
    assert a.list("") == ["x"] and b.list("") == ["x"]
    assert a.read_bytes("x") == b"a"


def test_invalid_bucket_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="invalid S3 bucket name"):
        S3Storage(object(), "ab")


def test_mask_access_key() -> None:
    assert st.mask_access_key("AKIAIOSFODNN7EXAMPLE") == "AKIA...PLE"
    assert st.mask_access_key("short") == "***"
    assert st.mask_access_key(None) == "<none>"


def test_airflow_connection_is_used_when_given(
        s3_bucket: str, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("airflow.providers.amazon.aws.hooks.s3")
    # Credentials come from the connection; the environment's are removed to prove it.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    conn = {"conn_type": "aws", "login": FAKE_ACCESS_KEY, "password": FAKE_SECRET_KEY,
            "extra": {"region_name": "us-east-1", "endpoint_url": moto_endpoint}}
    monkeypatch.setenv("AIRFLOW_CONN_SUPERRES_TEST_S3", json.dumps(conn))
    store = open_storage(f"s3://{s3_bucket}/via-hook", aws_conn_id="superres_test_s3")
    assert isinstance(store, S3Storage)
    store.write_bytes("k", b"through the hook")
    assert store.read_bytes("k") == b"through the hook"
    assert store.client.meta.config.retries == {"total_max_attempts": st.S3_RETRIES + 1, "mode": "standard"}
