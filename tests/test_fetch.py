"""Fetching a date's photos: deterministic choice, manifest, idempotent reruns, quarantine, retries."""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from superres import fetch
from superres.config import Settings
from superres.fetch import FetchError, Listed, fetch_partition, select
from superres.picsum_server import SKIMAGE_PHOTOS, PicsumHandler, RunningServer, serve
from superres.storage import LocalStorage, Storage, open_storage

DS = "2026-01-05"


def settings_for(url: str, **overrides: Any) -> Settings:
    """Small images and no backoff waits, so tests stay fast (sleeps are recorded, never timed)."""
    base = dict(picsum_url=url, num_images=4, image_width=64, image_height=48, fetch_retries=2,
                fetch_backoff_s=0.0, fetch_timeout_s=10.0, fetch_concurrency=3, min_success_ratio=0.5)
    return Settings(**{**base, **overrides})


def snapshot(s: Storage) -> dict[str, bytes]:
    return {key: s.read_bytes(key) for key in s.list("")}


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


# --------------------------------------------------------------------------- fault-injecting server


class FaultyHandler(PicsumHandler):
    """Per-id faults: ``faults[id] = kind``; counts every image request in ``hits``."""

    faults: dict[str, str] = {}
    hits: dict[str, int] = {}
    lock = threading.Lock()

    def _count(self, pid: str) -> int:
        with self.lock:
            self.hits[pid] = self.hits.get(pid, 0) + 1
            return self.hits[pid]

    def do_GET(self) -> None:
        m = re.match(r"^/id/([^/]+)/(\d+)/(\d+)$", self.path)
        if m and self.faults.get(m.group(1)) == "short_body":
            self._count(m.group(1))
            body = b"\xff\xd8\xff\xe0" + b"\0" * 100
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body) + 5000))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        super().do_GET()

    def respond(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        m = re.match(r"^/id/([^/]+)/(\d+)/(\d+)$", path)
        kind = self.faults.get(m.group(1)) if m else None
        if not m or kind is None:
            return super().respond(path, query)
        pid = m.group(1)
        n = self._count(pid)
        good = super().respond(path, query)
        if kind == "html":
            return 200, {"Content-Type": "text/html"}, b"<!DOCTYPE html><html><body>Busy</body></html>"
        if kind == "no_content_type":
            return 200, {"Picsum-ID": pid}, good[2]
        if kind == "text_plain":
            return 200, {"Content-Type": "text/plain", "Picsum-ID": pid}, good[2]
        if kind == "corrupt":
            return 200, {"Content-Type": "image/jpeg", "Picsum-ID": pid}, good[2][: len(good[2]) // 3]
        if kind == "animated":
            frames = [Image.new("RGB", (64, 48), c) for c in ("red", "blue")]
            buf = io.BytesIO()
            frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
            return 200, {"Content-Type": "image/gif", "Picsum-ID": pid}, buf.getvalue()
        if kind == "tiny":
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), "green").save(buf, format="PNG")
            return 200, {"Content-Type": "image/png", "Picsum-ID": pid}, buf.getvalue()
        if kind == "wrong_photo":
            return 200, {**good[1], "Picsum-ID": "999"}, good[2]
        if kind == "404":
            return 404, {"Content-Type": "text/plain"}, b"Image does not exist\n"
        if kind == "503":
            return 503, {"Content-Type": "text/plain"}, b"busy\n"
        if kind == "429_once" and n == 1:
            return 429, {"Content-Type": "text/plain", "Retry-After": "7"}, b"slow down\n"
        if kind == "429_huge" and n == 1:
            return 429, {"Content-Type": "text/plain", "Retry-After": "86400"}, b"slow down\n"
        if kind == "redirect_foreign":
            return 302, {"Location": f"http://cdn.invalid/id/{pid}/64/48"}, b""
        if kind == "redirect_same_host" and "cdn" not in query:
            return 302, {"Location": f"/id/{pid}/64/48?cdn=1"}, b""
        return good


@pytest.fixture
def faulty(picsum_url: str) -> Iterator[tuple[RunningServer, type[FaultyHandler]]]:
    """A fresh faulty server (picsum_url only for its loopback-only env); the test fills ``faults``."""
    handler = type("Faulty", (FaultyHandler,), {"faults": {}, "hits": {}, "lock": threading.Lock()})
    with serve(handler=handler) as server:
        yield server, handler


def test_select_is_deterministic_per_date() -> None:
    photos = [Listed(str(i), f"author {i}", 100, 100, "") for i in range(100)]
    first = [p.picsum_id for p in select(photos, DS, 8)]
    assert first == [p.picsum_id for p in select(list(reversed(photos)), DS, 8)]  # input order irrelevant
    assert first == sorted(first, key=int) and len(set(first)) == 8
    others = {tuple(p.picsum_id for p in select(photos, f"2026-02-{d:02d}", 8)) for d in range(1, 11)}
    assert len(others) > 5  # different dates usually differ
    assert len(select(photos[:3], DS, 8)) == 3  # fewer photos than wanted: all of them


def test_ids_sort_numerically() -> None:
    assert sorted(["10", "2", "b", "a", "1"], key=fetch.id_sort_key) == ["1", "2", "10", "a", "b"]


@pytest.mark.parametrize("bad", ["2026-1-5", "2026-02-30", "../2026-01-05", "2026-01-05/x", ""])
def test_ds_is_validated(bad: str) -> None:
    with pytest.raises(ValueError):
        fetch.validate_ds(bad)


def test_host_allow_list() -> None:
    allowed = fetch.parse_allowed_hosts(" fastly.picsum.photos, *.cdn.example ,")
    base = "https://picsum.photos"
    assert fetch.host_allowed("https://picsum.photos/id/1/2/3", base, allowed)
    assert fetch.host_allowed("https://fastly.picsum.photos/id/1/2/3.jpg?hmac=x", base, allowed)
    assert fetch.host_allowed("https://eu.cdn.example/x", base, allowed)
    assert not fetch.host_allowed("https://cdn.example.evil.com/x", base, allowed)
    assert not fetch.host_allowed("https://evil.com/x", base, allowed)
    assert not fetch.host_allowed("http://fastly.picsum.photos/x", base, allowed)  # no https downgrade
    assert not fetch.host_allowed("file:///etc/passwd", base, allowed)
    assert not fetch.host_allowed("http://127.0.0.1:9/x", "http://127.0.0.1:8899", allowed)  # other port


def test_retry_after_and_backoff() -> None:
    import random

    assert fetch.parse_retry_after("12") == 12.0
    assert fetch.parse_retry_after(None) is None and fetch.parse_retry_after("soon") is None
    assert fetch.parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now=1767225600.0) == 30.0
    rng = random.Random(0)
    assert fetch.backoff_delay(0, 1.0, 5.0, rng) == 5.0
    assert fetch.backoff_delay(0, 1.0, 1e6, rng) == fetch.MAX_RETRY_AFTER_S
    delays = [fetch.backoff_delay(a, 1.0, None, rng) for a in range(10)]
    assert 0.5 <= delays[0] <= 1.0 and 4.0 <= delays[3] <= 8.0 and max(delays) <= fetch.MAX_BACKOFF_S


def test_redact_url() -> None:
    assert fetch.redact_url("https://user:pw@host:8443/x?q=1") == "https://host:8443/x?q=1"
    assert fetch.redact_url("http://host/x") == "http://host/x"


# --------------------------------------------------------------------------- end to end, happy path


def test_fetch_writes_raw_partition_and_manifest(picsum_url: str, local: LocalStorage) -> None:
    manifest = fetch_partition(settings_for(picsum_url), DS, local)
    authors = {pid: author for pid, _, author, _ in SKIMAGE_PHOTOS}
    listed = [Listed(pid, authors[pid], 1, 1, "") for pid in authors]
    expected_ids = [p.picsum_id for p in select(listed, DS, 4)]
    assert manifest["selected"] == expected_ids == [i["image_id"] for i in manifest["images"]]
    assert manifest["requested"] == 4 and manifest["quarantined"] == [] and manifest["available"] == 9
    assert manifest["ds"] == DS and manifest["source"] == picsum_url
    for image in manifest["images"]:
        assert image["key"] == f"raw/ds={DS}/{image['picsum_id']}.jpg"
        body = local.read_bytes(image["key"])
        assert image["sha256"] == hashlib.sha256(body).hexdigest() and image["bytes"] == len(body)
        assert (image["width"], image["height"], image["format"], image["mode"]) == (64, 48, "JPEG", "RGB")
        assert image["author"] == authors[image["picsum_id"]]
        assert image["source_url"] == f"{picsum_url}/id/{image['picsum_id']}/64/48"
        assert image["page_url"].startswith("http")
    assert local.read_json(f"raw/ds={DS}/_manifest.json") == manifest
    marker = local.read_marker(f"raw/ds={DS}")
    assert marker is not None
    assert set(marker["files"]) == {f"{i}.jpg" for i in expected_ids} | {"_manifest.json"}
    assert local.read_json(f"reports/ds={DS}/quarantine.json")["quarantined"] == []
    assert local.list(f"quarantine/ds={DS}") == [f"quarantine/ds={DS}/_SUCCESS",
                                                f"quarantine/ds={DS}/_quarantine.json"]


def test_same_date_same_photos_and_rerun_is_idempotent(picsum_url: str, local: LocalStorage) -> None:
    first = fetch_partition(settings_for(picsum_url), DS, local)
    before = snapshot(local)
    second = fetch_partition(settings_for(picsum_url), DS, local)
    assert second == first
    assert snapshot(local) == before  # same objects, same bytes, no leftovers

    fewer = fetch_partition(settings_for(picsum_url, num_images=2), DS, local)
    raw = [k for k in local.list(f"raw/ds={DS}") if not k.endswith(("_SUCCESS", "_manifest.json"))]
    assert raw == sorted(i["key"] for i in fewer["images"]) and len(raw) == 2  # replaced, not appended


def test_different_dates_usually_pick_different_photos(picsum_url: str, local: LocalStorage) -> None:
    settings = settings_for(picsum_url, num_images=3)
    picks = {tuple(fetch_partition(settings, f"2026-03-0{d}", local)["selected"]) for d in range(1, 7)}
    assert len(picks) > 1
    assert len(local.list("raw")) == 6 * (3 + 2)  # six partitions side by side


def test_fetch_into_s3(picsum_url: str, s3_bucket: str) -> None:
    s3 = open_storage(f"s3://{s3_bucket}/pipeline")
    manifest = fetch_partition(settings_for(picsum_url, num_images=2), DS, s3)
    assert s3.read_json(f"raw/ds={DS}/_manifest.json") == manifest
    assert s3.read_marker(f"raw/ds={DS}") is not None
    for image in manifest["images"]:
        assert hashlib.sha256(s3.read_bytes(image["key"])).hexdigest() == image["sha256"]


# --------------------------------------------------------------------------- faults and quarantine


BAD_KINDS = {
    "1": ("html", "not_an_image"),
    "2": ("no_content_type", "missing_content_type"),
    "3": ("corrupt", "corrupt"),
    "4": ("animated", "animated"),
    "5": ("tiny", "too_small"),
    "6": ("404", "http_404"),
    "7": ("text_plain", "bad_content_type"),
    "8": ("wrong_photo", "wrong_photo"),
}


def test_bad_bodies_are_quarantined_with_reasons(faulty, local: LocalStorage) -> None:
    server, handler = faulty
    handler.faults.update({pid: kind for pid, (kind, _) in BAD_KINDS.items()})
    settings = settings_for(server.url, num_images=9, min_success_ratio=0.1)
    manifest = fetch_partition(settings, DS, local)

    assert [i["image_id"] for i in manifest["images"]] == ["0"]
    reasons = {q["image_id"]: q["reason"] for q in manifest["quarantined"]}
    assert reasons == {pid: reason for pid, (_, reason) in BAD_KINDS.items()}
    assert manifest["requested"] == len(manifest["images"]) + len(manifest["quarantined"]) == 9
    assert local.list(f"raw/ds={DS}") == [f"raw/ds={DS}/0.jpg", f"raw/ds={DS}/_SUCCESS",
                                          f"raw/ds={DS}/_manifest.json"]
    for record in manifest["quarantined"]:
        assert set(record) >= {"image_id", "source", "reason", "message", "bytes", "sha256"}
        assert record["message"] and record["source"].startswith(server.url)
        if record["bytes"]:
            body = local.read_bytes(record["key"])
            assert record["key"] == f"quarantine/ds={DS}/{record['image_id']}.bin"
            assert hashlib.sha256(body).hexdigest() == record["sha256"] and len(body) == record["bytes"]
    html = next(q for q in manifest["quarantined"] if q["image_id"] == "1")
    assert b"<html>" in local.read_bytes(html["key"]) and "text/html" in html["message"]
    assert next(q for q in manifest["quarantined"] if q["image_id"] == "6")["http_status"] == 404
    report = local.read_json(f"reports/ds={DS}/quarantine.json")
    assert report["quarantined"] == manifest["quarantined"] == local.read_json(
        f"quarantine/ds={DS}/_quarantine.json")["quarantined"]


def test_below_min_success_ratio_raises_after_writing_evidence(faulty, local: LocalStorage) -> None:
    server, handler = faulty
    handler.faults.update({str(i): "html" for i in range(9)})
    with pytest.raises(FetchError, match="0 of 3 photos") as info:
        fetch_partition(settings_for(server.url, num_images=3), DS, local)
    manifest = info.value.manifest
    assert manifest is not None and manifest["images"] == [] and len(manifest["quarantined"]) == 3
    assert local.read_json(f"raw/ds={DS}/_manifest.json") == manifest
    assert len(local.read_json(f"reports/ds={DS}/quarantine.json")["quarantined"]) == 3
    assert len([k for k in local.list(f"quarantine/ds={DS}") if k.endswith(".bin")]) == 3


def test_rerun_after_recovery_clears_old_quarantine(faulty, local: LocalStorage) -> None:
    server, handler = faulty
    handler.faults.update({str(i): "corrupt" for i in range(9)})
    fetch_partition(settings_for(server.url, num_images=3, min_success_ratio=0.0), DS, local)
    assert [k for k in local.list(f"quarantine/ds={DS}") if k.endswith(".bin")]
    handler.faults.clear()
    manifest = fetch_partition(settings_for(server.url, num_images=3), DS, local)
    assert len(manifest["images"]) == 3 and manifest["quarantined"] == []
    assert [k for k in local.list(f"quarantine/ds={DS}") if k.endswith(".bin")] == []


def test_429_retry_after_is_honoured(faulty, local: LocalStorage) -> None:
    server, handler = faulty
    handler.faults.update({str(i): "429_once" for i in range(9)})
    sleeps: list[float] = []
    manifest = fetch_partition(settings_for(server.url, num_images=2), DS, local, sleep=sleeps.append)
    assert len(manifest["images"]) == 2
    assert sleeps == [7.0, 7.0]  # one wait per photo, exactly what the server asked for
    assert all(handler.hits[i] == 2 for i in manifest["selected"])


def test_retry_after_is_capped(faulty, local: LocalStorage) -> None:
    server, handler = faulty
    handler.faults.update({str(i): "429_huge" for i in range(9)})
    sleeps: list[float] = []
    fetch_partition(settings_for(server.url, num_images=1), DS, local, sleep=sleeps.append)
    assert sleeps == [fetch.MAX_RETRY_AFTER_S]


def test_server_errors_are_retried_then_quarantined(faulty, local: LocalStorage) -> None:
    server, handler = faulty
    handler.faults.update({str(i): "503" for i in range(9)})
    sleeps: list[float] = []
    with pytest.raises(FetchError):
        fetch_partition(settings_for(server.url, num_images=2, fetch_retries=3), DS, local,
                        sleep=sleeps.append)
    manifest = local.read_json(f"raw/ds={DS}/_manifest.json")
    assert {q["reason"] for q in manifest["quarantined"]} == {"http_503"}
    assert all(handler.hits[i] == 4 for i in manifest["selected"])  # 1 try + 3 retries, bounded
    assert len(sleeps) == 6
    assert "gave up after 4 attempts" in manifest["quarantined"][0]["message"]


def test_404_is_not_retried(faulty, local: LocalStorage) -> None:
    server, handler = faulty
    handler.faults.update({str(i): "404" for i in range(9)})
    with pytest.raises(FetchError):
        fetch_partition(settings_for(server.url, num_images=2), DS, local, sleep=lambda s: None)
    assert all(n == 1 for n in handler.hits.values()) and len(handler.hits) == 2


def test_body_shorter_than_content_length_is_an_error(faulty, local: LocalStorage) -> None:
    server, handler = faulty
    handler.faults.update({str(i): "short_body" for i in range(9)})
    with pytest.raises(FetchError):
        fetch_partition(settings_for(server.url, num_images=1, fetch_retries=1), DS, local,
                        sleep=lambda s: None)
    (record,) = local.read_json(f"raw/ds={DS}/_manifest.json")["quarantined"]
    assert record["reason"] == "truncated"
    assert set(handler.hits.values()) == {2}  # truncation is retried


def test_redirects_only_to_allowed_hosts(faulty, local: LocalStorage) -> None:
    server, handler = faulty
    handler.faults.update({str(i): "redirect_foreign" for i in range(9)})
    with pytest.raises(FetchError):
        fetch_partition(settings_for(server.url, num_images=2), DS, local)
    manifest = local.read_json(f"raw/ds={DS}/_manifest.json")
    assert {q["reason"] for q in manifest["quarantined"]} == {"redirect_refused"}
    assert "cdn.invalid" in manifest["quarantined"][0]["message"]

    handler.faults.update({str(i): "redirect_same_host" for i in range(9)})
    manifest = fetch_partition(settings_for(server.url, num_images=2), DS, local)
    assert len(manifest["images"]) == 2


def test_malformed_listing_is_a_clear_error(local: LocalStorage, picsum_url: str) -> None:
    class BadList(PicsumHandler):
        payload = b'{"not": "a list"}'

        def respond(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
            if path == "/v2/list":
                return 200, {"Content-Type": "application/json"}, self.payload
            return super().respond(path, query)

    cases = {
        b'{"not": "a list"}': "expected a JSON list",
        b"<html>maintenance</html>": "not JSON",
        json.dumps([{"id": "1", "author": "x", "width": -1, "height": 5}]).encode(): "invalid width",
        json.dumps([{"id": "../1", "author": "x", "width": 1, "height": 5}]).encode(): "invalid id",
        b"[]": "lists no photos",
    }
    for payload, message in cases.items():
        handler = type("B", (BadList,), {"payload": payload})
        with serve(handler=handler) as server, pytest.raises(FetchError, match=message):
            fetch_partition(settings_for(server.url), DS, local)
    assert local.list("") == []  # nothing half-written


def test_listing_pages_until_empty(picsum_url: str) -> None:
    with fetch.client(settings_for(picsum_url)) as http:
        photos = fetch.list_photos(http, limit=2)
        assert [p.picsum_id for p in photos] == [str(i) for i in range(9)]
        assert len(fetch.list_photos(http, max_pages=2, limit=2)) == 4  # bounded
