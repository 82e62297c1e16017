"""Fetching a date's photos: deterministic choice, manifest, idempotent reruns (faults: tests/reliability)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from superres import fetch
from superres.config import Settings
from superres.fetch import Listed, fetch_partition, select
from superres.picsum_server import SKIMAGE_PHOTOS
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


# --------------------------------------------------------------------------- pure helpers


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


# --------------------------------------------------------------------------- listing
# Faults, quarantine, retries and redirects: tests/reliability/test_source_faults.py,
# test_bad_images.py and test_security.py.


def test_listing_pages_until_empty(picsum_url: str) -> None:
    with fetch.client(settings_for(picsum_url)) as http:
        photos = fetch.list_photos(http, limit=2)
        assert [p.picsum_id for p in photos] == [str(i) for i in range(9)]
        assert len(fetch.list_photos(http, max_pages=2, limit=2)) == 4  # bounded


# --------------------------------------------------------------------------- a source with fewer photos


def _report_as_run(settings: Settings, manifest: dict[str, Any], local: LocalStorage) -> dict[str, Any]:
    """run.json for a fetched date whose every photo was processed (an SR PNG each)."""
    from superres.orchestration.tasks import build_report

    local.replace_partition(f"sr/ds={DS}", {f"{i['image_id']}.png": b"png" for i in manifest["images"]})
    report = build_report({"ds": DS, "run_id": "manual__short", "settings": settings.public()}, local)
    local.write_json(f"reports/ds={DS}/run.json", report)
    return report


def test_a_source_with_fewer_photos_than_requested_is_recorded(picsum_url: str, local: LocalStorage) -> None:
    settings = settings_for(picsum_url, num_images=64)
    manifest = fetch_partition(settings, DS, local)
    assert (manifest["requested"], manifest["available"], manifest["fetched"]) == (64, 9, 9)
    assert manifest["shortfall"] == "9 of 64 requested: the source has only 9 photos"
    assert manifest["fetched"] == len(manifest["images"]) + len(manifest["quarantined"]) == 9
    assert local.read_json(f"raw/ds={DS}/_manifest.json") == manifest
    assert local.read_json(f"reports/ds={DS}/quarantine.json")["requested"] == 64

    report = _report_as_run(settings, manifest, local)
    assert report["source"] == {"requested": 64, "available": 9, "fetched": 9,
                                "shortfall": "9 of 64 requested: the source has only 9 photos"}
    assert report["counts"] == {"fetched": 9, "processed": 9, "quarantined": 0}
    assert report["reconciled"] is True


def test_a_source_with_enough_photos_has_no_shortfall(picsum_url: str, local: LocalStorage) -> None:
    settings = settings_for(picsum_url, num_images=9)
    manifest = fetch_partition(settings, DS, local)
    assert (manifest["requested"], manifest["available"], manifest["fetched"]) == (9, 9, 9)
    assert manifest["shortfall"] is None
    report = _report_as_run(settings, manifest, local)
    assert report["source"] == {"requested": 9, "available": 9, "fetched": 9, "shortfall": None}


def test_summary_says_requested_versus_available(picsum_url: str, local: LocalStorage) -> None:
    from superres.orchestration.localrun import summary

    for n, line in ((64, "  images in:     9 fetched of 64 requested (the source has 9) (0 quarantined)"),
                    (4, "  images in:     4 fetched (0 quarantined)")):
        settings = settings_for(picsum_url, num_images=n, storage_uri=str(local.root))
        _report_as_run(settings, fetch_partition(settings, DS, local), local)
        assert line in summary(settings, DS).splitlines()


def test_a_manifest_from_before_fetched_existed_is_read_in_its_own_sense() -> None:
    """Older manifests called the photos taken ``requested`` and those asked for ``wanted``."""
    old = {"wanted": 64, "available": 9, "requested": 9, "images": [{}] * 8, "quarantined": [{}]}
    assert fetch.source_counts(old) == {"requested": 64, "available": 9, "fetched": 9,
                                        "shortfall": "9 of 64 requested: the source has only 9 photos"}
    bare = {"requested": 3, "images": [{}] * 2, "quarantined": [{}]}
    assert fetch.source_counts(bare) == {"requested": 3, "available": None, "fetched": 3, "shortfall": None}
