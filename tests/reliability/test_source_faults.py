"""Source faults: every misbehaviour of the photo source ends in a bounded retry, then either the
photo or a quarantine record, never a hang; ``min_success_ratio`` decides whether the fetch fails.

All against :class:`FaultyPicsum`, a real HTTP server on 127.0.0.1 (raw socket writes for the
faults below HTTP).  Backoff sleeps are recorded instead of slept; the ``bounded`` wrapper only
tells a returned call from a hung one.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import time

import pytest

from superres import fetch
from superres.fetch import FetchError, fetch_partition
from superres.orchestration import tasks
from superres.storage import LocalStorage
from tests.reliability.faulty_picsum import Fault, FaultyPicsum
from tests.reliability.io_fixtures import DS, bounded, settings_for


def run_fetch(server: FaultyPicsum, storage: LocalStorage, **overrides: object) -> tuple[dict, list[float]]:
    """Fetch through ``server`` with recorded sleeps; raises FetchError like the task would."""
    sleeps: list[float] = []
    settings = settings_for(server.url, **overrides)
    manifest = bounded(lambda: fetch_partition(settings, DS, storage, sleep=sleeps.append))
    return manifest, sleeps


def run_fetch_failing(server: FaultyPicsum, storage: LocalStorage,
                      **overrides: object) -> tuple[dict, list[float]]:
    """Like run_fetch for a fetch that must fail its min_success_ratio: the written manifest."""
    sleeps: list[float] = []
    settings = settings_for(server.url, **{"min_success_ratio": 1.0, **overrides})
    with pytest.raises(FetchError) as info:
        bounded(lambda: fetch_partition(settings, DS, storage, sleep=sleeps.append))
    manifest = storage.read_json(f"raw/ds={DS}/_manifest.json")
    assert info.value.manifest == manifest
    return manifest, sleeps


def fault_all(server: FaultyPicsum, fault: Fault) -> None:
    for photo in server.photos:
        server.faults[photo.id] = fault


def only_reason(manifest: dict) -> str:
    reasons = {q["reason"] for q in manifest["quarantined"]}
    assert len(reasons) == 1, reasons
    return reasons.pop()


def assert_reconciled(manifest: dict, storage: LocalStorage) -> None:
    assert manifest["fetched"] == len(manifest["images"]) + len(manifest["quarantined"])
    report = storage.read_json(f"reports/ds={DS}/quarantine.json")
    assert report["quarantined"] == manifest["quarantined"]


# --------------------------------------------------------------------------- HTTP 429 and 5xx


def test_429_with_retry_after_waits_as_asked_then_succeeds(faulty: FaultyPicsum, store: LocalStorage) -> None:
    fault_all(faulty, Fault("status", status=429, retry_after="7", times=1))
    manifest, sleeps = run_fetch(faulty, store, num_images=3)
    assert len(manifest["images"]) == 3 and manifest["quarantined"] == []
    assert sleeps == [7.0, 7.0, 7.0]  # one wait per photo, exactly what the server asked for
    assert all(faulty.hits[i] == 2 for i in manifest["selected"])


def test_429_retry_after_as_http_date_and_capped(faulty: FaultyPicsum, store: LocalStorage) -> None:
    when = email.utils.formatdate(time.time() + 3600, usegmt=True)  # an hour: longer than the cap
    fault_all(faulty, Fault("status", status=429, retry_after=when, times=1))
    manifest, sleeps = run_fetch(faulty, store, num_images=1)
    assert len(manifest["images"]) == 1
    assert sleeps == [fetch.MAX_RETRY_AFTER_S]


def test_429_forever_ends_in_quarantine_after_bounded_retries(faulty: FaultyPicsum,
                                                              store: LocalStorage) -> None:
    fault_all(faulty, Fault("status", status=429, retry_after="1"))
    manifest, sleeps = run_fetch_failing(faulty, store, num_images=2, fetch_retries=3)
    assert only_reason(manifest) == "http_429"
    assert all(faulty.hits[i] == 4 for i in manifest["selected"]) and sleeps == [1.0] * 6
    assert_reconciled(manifest, store)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_retried_with_backoff_then_succeeds(faulty: FaultyPicsum, store: LocalStorage,
                                                   status: int) -> None:
    fault_all(faulty, Fault("status", status=status, times=2))
    manifest, sleeps = run_fetch(faulty, store, num_images=1, fetch_retries=2, fetch_backoff_s=0.5)
    assert len(manifest["images"]) == 1 and manifest["quarantined"] == []
    (pid,) = manifest["selected"]
    assert faulty.hits[pid] == 3
    # exponential, jittered into [half, full] of 0.5 * 2^attempt
    assert len(sleeps) == 2 and 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_forever_ends_in_quarantine_after_bounded_retries(
        faulty: FaultyPicsum, store: LocalStorage, status: int) -> None:
    fault_all(faulty, Fault("status", status=status))
    manifest, sleeps = run_fetch_failing(faulty, store, num_images=2, fetch_retries=3)
    assert only_reason(manifest) == f"http_{status}"
    assert all(faulty.hits[i] == 4 for i in manifest["selected"])  # 1 try + 3 retries, no more
    assert len(sleeps) == 6
    for record in manifest["quarantined"]:
        assert record["http_status"] == status and "gave up after 4 attempts" in record["message"]
        kept = store.read_bytes(record["key"])  # the error page is kept for inspection
        assert kept == f"fault: HTTP {status}\n".encode()
        assert record["sha256"] == hashlib.sha256(kept).hexdigest() and record["bytes"] == len(kept)
    assert_reconciled(manifest, store)


def test_404_is_not_retried(faulty: FaultyPicsum, store: LocalStorage) -> None:
    fault_all(faulty, Fault("status", status=404))
    manifest, sleeps = run_fetch_failing(faulty, store, num_images=2)
    assert only_reason(manifest) == "http_404" and sleeps == []
    assert all(faulty.hits[i] == 1 for i in manifest["selected"])


# --------------------------------------------------------------------------- below HTTP


@pytest.mark.parametrize("kind", ["reset", "reset_mid_body"])
def test_connection_reset_is_retried_then_succeeds(faulty: FaultyPicsum, store: LocalStorage,
                                                   kind: str) -> None:
    fault_all(faulty, Fault(kind, times=1))
    manifest, sleeps = run_fetch(faulty, store, num_images=2)
    assert len(manifest["images"]) == 2 and len(sleeps) == 2
    assert all(faulty.hits[i] == 2 for i in manifest["selected"])


@pytest.mark.parametrize("kind, reasons", [
    ("reset", {"connection_error"}),
    ("reset_mid_body", {"connection_error", "truncated"}),  # how a reset mid-body surfaces varies
])
def test_connection_reset_forever_is_quarantined(
        faulty: FaultyPicsum, store: LocalStorage, kind: str, reasons: set[str]) -> None:
    fault_all(faulty, Fault(kind))
    manifest, _ = run_fetch_failing(faulty, store, num_images=2, fetch_retries=2)
    assert {q["reason"] for q in manifest["quarantined"]} <= reasons
    assert all(faulty.hits[i] == 3 for i in manifest["selected"])
    assert_reconciled(manifest, store)


@pytest.mark.parametrize("kind", ["stall_headers", "stall_body"])
def test_stall_past_the_read_timeout_is_retried_then_succeeds(
        faulty: FaultyPicsum, store: LocalStorage, kind: str) -> None:
    fault_all(faulty, Fault(kind, times=1))
    manifest, _ = run_fetch(faulty, store, num_images=1, fetch_timeout_s=1.0, fetch_retries=2)
    assert len(manifest["images"]) == 1
    assert faulty.hits[manifest["selected"][0]] == 2


@pytest.mark.parametrize("kind", ["stall_headers", "stall_body"])
def test_stall_forever_ends_in_a_timeout_quarantine(faulty: FaultyPicsum, store: LocalStorage,
                                                    kind: str) -> None:
    fault_all(faulty, Fault(kind))
    manifest, _ = run_fetch_failing(faulty, store, num_images=1, fetch_timeout_s=1.0, fetch_retries=1)
    assert only_reason(manifest) == "timeout"
    (record,) = manifest["quarantined"]
    assert faulty.hits[record["image_id"]] == 2
    if kind == "stall_body":  # the response had begun: its status is recorded, what arrived is kept
        assert record["http_status"] == 200 and store.exists(record["key"])
    else:  # no answer at all: nothing to keep
        assert record["http_status"] is None and record["key"] is None


def test_trickling_body_is_cut_at_the_body_deadline(
        faulty: FaultyPicsum, store: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    """One byte every 50 ms never trips a 1 s read timeout; the whole-body deadline stops it."""
    monkeypatch.setattr(fetch, "BODY_DEADLINE_FACTOR", 2)  # 2 s instead of 6 read timeouts
    fault_all(faulty, Fault("trickle", interval_s=0.05))
    manifest, _ = run_fetch_failing(faulty, store, num_images=1, fetch_timeout_s=1.0, fetch_retries=1)
    (record,) = manifest["quarantined"]
    assert record["reason"] == "timeout" and "not complete within 2 s" in record["message"]
    assert faulty.hits[record["image_id"]] == 2 and record["http_status"] == 200


def test_body_shorter_than_content_length_is_retried_then_succeeds(
        faulty: FaultyPicsum, store: LocalStorage) -> None:
    fault_all(faulty, Fault("short_body", times=1))
    manifest, _ = run_fetch(faulty, store, num_images=2)
    assert len(manifest["images"]) == 2
    for image in manifest["images"]:  # what was stored is the complete photo
        assert store.read_bytes(image["key"])[-2:] == b"\xff\xd9"


def test_body_shorter_than_content_length_forever_is_quarantined(
        faulty: FaultyPicsum, store: LocalStorage) -> None:
    fault_all(faulty, Fault("short_body"))
    manifest, _ = run_fetch_failing(faulty, store, num_images=1, fetch_retries=1)
    (record,) = manifest["quarantined"]
    assert record["reason"] == "truncated" and faulty.hits[record["image_id"]] == 2
    assert record["http_status"] == 200 and "5000 more expected" in record["message"]


# --------------------------------------------------------------------------- redirects and listing


def test_redirect_loop_is_cut_off(faulty: FaultyPicsum, store: LocalStorage) -> None:
    fault_all(faulty, Fault("redirect_loop"))
    manifest, sleeps = run_fetch_failing(faulty, store, num_images=1)
    (record,) = manifest["quarantined"]
    assert record["reason"] == "too_many_redirects" and sleeps == []
    assert faulty.hits[record["image_id"]] == fetch.MAX_REDIRECTS + 1  # followed 5 times, then stopped


def test_redirect_within_the_source_host_is_followed(faulty: FaultyPicsum, store: LocalStorage) -> None:
    fault_all(faulty, Fault("redirect", location="{base}/id/{pid}/64/48?cdn=1", times=1))
    manifest, _ = run_fetch(faulty, store, num_images=2)
    assert len(manifest["images"]) == 2


@pytest.mark.parametrize("location", ["http://127.0.0.1:abc/x", "http://[::1/x"])
def test_malformed_redirect_is_quarantined_and_the_rest_fetched(
        faulty: FaultyPicsum, store: LocalStorage, location: str) -> None:
    clean, _ = run_fetch(faulty, store, num_images=3)
    bad = clean["images"][0]["image_id"]
    faulty.faults[bad] = Fault("redirect", location=location)
    manifest, sleeps = run_fetch(faulty, store, num_images=3)  # the rerun replaces the date
    (record,) = manifest["quarantined"]
    assert record["image_id"] == bad and record["reason"] == "bad_redirect" and sleeps == []
    assert "is to an invalid URL: " in record["message"], record["message"]
    assert len(manifest["images"]) == 2
    assert_reconciled(manifest, store)


MALFORMED_LISTINGS = {
    "object_not_list": (b'{"not": "a list"}', "expected a JSON list"),
    "html_maintenance_page": (b"<html>maintenance</html>", "not JSON"),
    "truncated_json": (b'[{"id": "1", "author": "x", "width": 10, "hei', "not JSON"),
    "negative_width": (json.dumps([{"id": "1", "author": "x", "width": -1, "height": 5}]).encode(),
                       "invalid width"),
    "traversal_id": (json.dumps([{"id": "../1", "author": "x", "width": 1, "height": 5}]).encode(),
                     "invalid id"),
    "item_not_object": (b'["1", "2"]', "is not an object"),
    "author_missing": (json.dumps([{"id": "1", "width": 1, "height": 5}]).encode(), "has no author"),
    "empty_list": (b"[]", "lists no photos"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_LISTINGS))
def test_malformed_listing_fails_the_fetch_clearly_and_writes_nothing(
        faulty: FaultyPicsum, store: LocalStorage, name: str) -> None:
    body, message = MALFORMED_LISTINGS[name]
    faulty.set_listing(body)
    with pytest.raises(FetchError, match=message):
        run_fetch(faulty, store)
    assert store.list("") == []  # nothing half-written: the task's retry starts clean


def test_listing_errors_are_retried_then_fail_the_fetch(faulty: FaultyPicsum, store: LocalStorage) -> None:
    faulty.set_listing(b"busy\n", status=503, content_type="text/plain")
    with pytest.raises(FetchError, match="cannot list photos .*http_503"):
        run_fetch(faulty, store, fetch_retries=2)
    assert sum(1 for p in faulty.paths if p.startswith("/v2/list")) == 3
    assert store.list("") == []


# --------------------------------------------------------------------------- min_success_ratio


def _half_bad(server: FaultyPicsum, good: int, bad: int) -> None:
    """The first ``bad`` photos of the date's selection answer 404; the rest are served."""
    from superres.fetch import Listed, select

    listed = [Listed(p.id, p.author, p.width, p.height, "") for p in server.photos]
    chosen = [p.picsum_id for p in select(listed, DS, good + bad)]
    for pid in chosen[:bad]:
        server.faults[pid] = Fault("status", status=404)


@pytest.mark.parametrize("good, bad, min_ratio, passes", [
    (2, 2, 0.5, True),    # exactly at the ratio
    (3, 1, 0.5, True),    # above it
    (2, 2, 0.75, False),  # below it
    (3, 1, 0.75, True),   # exactly at a stricter ratio
    (0, 4, 0.0, True),    # ratio 0: never fails on quarantine
])
def test_min_success_ratio_decides_whether_the_fetch_fails(
        faulty: FaultyPicsum, store: LocalStorage, good: int, bad: int, min_ratio: float,
        passes: bool) -> None:
    _half_bad(faulty, good, bad)
    settings = settings_for(faulty.url, num_images=good + bad, min_success_ratio=min_ratio)
    if passes:
        manifest = bounded(lambda: fetch_partition(settings, DS, store))
    else:
        with pytest.raises(FetchError, match=rf"only {good} of {good + bad} photos .* < min_success_ratio"):
            bounded(lambda: fetch_partition(settings, DS, store))
        manifest = store.read_json(f"raw/ds={DS}/_manifest.json")  # the evidence is written first
    assert (len(manifest["images"]), len(manifest["quarantined"])) == (good, bad)
    assert manifest["success_ratio"] == good / (good + bad) and manifest["min_success_ratio"] == min_ratio
    assert_reconciled(manifest, store)


def test_fetch_task_fails_the_run_below_min_success_ratio(
        faulty: FaultyPicsum, store: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Airflow task body (superres.orchestration.tasks.fetch) raises, so the run fails there."""
    for name in ("SUPERRES_CALLBACK_SECRET", "SUPERRES_STORAGE_URI", "SUPERRES_PICSUM_URL", "PICSUM_URL"):
        monkeypatch.delenv(name, raising=False)
    _half_bad(faulty, 1, 3)
    settings = settings_for(faulty.url, num_images=4, min_success_ratio=0.5, storage_uri=str(store.root))
    run = {"ds": DS, "run_id": "manual__reliability", "token": "t0", "settings": settings.public()}
    with pytest.raises(FetchError, match="only 1 of 4 photos"):
        bounded(lambda: tasks.fetch(run))
    assert len(store.read_json(f"reports/ds={DS}/quarantine.json")["quarantined"]) == 3

    faulty.faults.clear()
    result = bounded(lambda: tasks.fetch(run))  # the task's retry, once the source recovers
    assert result["images"] == 4 and result["quarantined"] == 0
