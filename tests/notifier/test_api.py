"""POST /api/callbacks: authentication, validation, idempotency and replay protection."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from notifier import create_app, db
from tests.notifier.helpers import key_for, make_event, post_event, variant


def _events(app: Flask) -> int:
    with app.app_context():
        return db.count_events(db.get_db())


def test_good_callback_is_stored(client: FlaskClient, app: Flask) -> None:
    event = make_event()
    response = post_event(client, event)
    assert response.status_code == 201
    assert response.json["status"] == "stored"
    assert response.json["idempotency_key"] == key_for(event)
    assert response.json["links"]["run"] == "/runs/" + event["run_id"]
    assert _events(app) == 1
    runs = client.get("/api/runs").json["runs"]
    assert [r["run_id"] for r in runs] == [event["run_id"]]
    assert runs[0]["counts"] == event["counts"]
    assert runs[0]["mean"]["psnr"] == pytest.approx(event["metrics"]["mean"]["psnr"])


def test_same_key_with_different_content_conflicts(client: FlaskClient, app: Flask) -> None:
    event = make_event()
    assert post_event(client, event).status_code == 201
    changed = variant(event, state="failed", failed_tasks=["upscale"])
    response = post_event(client, changed, key=key_for(event))
    assert response.status_code == 409
    assert response.json["error"] == "idempotency_conflict"
    assert _events(app) == 1
    assert client.get("/api/runs").json["runs"][0]["state"] == "success"


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"run_id": "x",', b"\xff\xfe\x00garbage", b""],
    ids=["syntax", "truncated", "bytes", "empty"],
)
def test_malformed_json_is_rejected(client: FlaskClient, body: bytes) -> None:
    response = post_event(client, body=body, key="k")
    assert response.status_code == 400
    assert response.json["error"] == "malformed_json"


def test_json_that_is_not_an_object_is_rejected(client: FlaskClient) -> None:
    response = post_event(client, body=b"[1, 2, 3]", key="k")
    assert response.status_code == 400
    assert response.json["error"] == "invalid_event"


def test_missing_required_fields_are_all_listed(client: FlaskClient, app: Flask) -> None:
    response = post_event(client, body=b'{"dag_id": "superres_daily"}', key="k")
    assert response.status_code == 400
    assert response.json["error"] == "invalid_event"
    fields = {p.split(":")[0] for p in response.json["problems"]}
    assert fields == {"run_id", "ds", "state", "counts"}
    assert _events(app) == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"run_id": ""}, "run_id"),
        ({"run_id": 42}, "run_id"),
        ({"ds": "2026-02-30"}, "ds"),
        ({"ds": "05/01/2026"}, "ds"),
        ({"state": "running"}, "state"),
        ({"counts": {"fetched": "3", "processed": 2, "quarantined": 0}}, "counts.fetched"),
        ({"counts": {"fetched": True, "processed": 2, "quarantined": 0}}, "counts.fetched"),
        ({"counts": {"fetched": 3, "processed": -1, "quarantined": 0}}, "counts.processed"),
        ({"counts": {"fetched": 3, "processed": 2}}, "counts.quarantined"),
        ({"counts": [3, 2, 0]}, "counts"),
        ({"mode": "train"}, "mode"),
        ({"scale": "2"}, "scale"),
        ({"metrics": {"mean": {"psnr": "high"}}}, "metrics.mean.psnr"),
        ({"images": {"image_id": "1"}}, "images"),
        ({"quality": {"success": "yes"}}, "quality.success"),
        ({"timings": {"fetch": "slow"}}, "timings.fetch"),
    ],
)
def test_wrong_types_are_rejected_gracefully(client: FlaskClient, change: dict[str, Any], field: str) -> None:
    response = post_event(client, variant(make_event(), **change), key="k")
    assert response.status_code == 400, response.json
    assert any(p.startswith(field + ":") for p in response.json["problems"]), response.json["problems"]


@pytest.mark.parametrize("key", ["../../etc/passwd", "/etc/passwd", "sr//x.png", "sr/./x.png", "a\\b.png"])
def test_unsafe_storage_keys_in_events_are_rejected(client: FlaskClient, key: str) -> None:
    event = make_event()
    event["images"][0]["sr"] = key
    response = post_event(client, event)
    assert response.status_code == 400
    assert any(p.startswith("images[0].sr:") for p in response.json["problems"])


def test_minimal_failed_run_is_accepted(client: FlaskClient) -> None:
    event = {
        "run_id": "manual__2026-01-07",
        "ds": "2026-01-07",
        "state": "failed",
        "counts": {"fetched": 0, "processed": 0, "quarantined": 0},
        "metrics": None,
        "quality": None,
        "failed_tasks": ["fetch"],
    }
    assert post_event(client, event).status_code == 201
    run = client.get("/api/runs").json["runs"][0]
    assert run["state"] == "failed"
    assert run["mean"] is None
    assert run["psnr_gain"] is None


def test_infinite_psnr_is_accepted_and_served_as_null(client: FlaskClient) -> None:
    event = make_event()
    event["metrics"]["mean"]["psnr"] = float("inf")
    body = json.dumps(event).encode()  # Python writes Infinity, as the callback task would
    assert post_event(client, event, body=body).status_code == 201
    response = client.get("/api/runs/" + event["run_id"])
    assert b"Infinity" not in response.data
    assert response.json["run"]["mean"]["psnr"] is None
    assert response.json["event"]["metrics"]["mean"]["psnr"] is None


def test_missing_idempotency_key_is_rejected(client: FlaskClient) -> None:
    response = post_event(client, key=None)
    assert response.status_code == 400
    assert response.json["error"] == "missing_idempotency_key"


def test_header_key_must_match_the_signed_key_in_the_body(client: FlaskClient, app: Flask) -> None:
    """The header is not covered by the signature; the body's key is, and it wins."""
    event = variant(make_event(), idempotency_key="run-1#0")
    response = post_event(client, event, key="chosen-by-someone-else")
    assert (response.status_code, response.json["error"]) == (400, "idempotency_key_mismatch")
    assert _events(app) == 0
    assert post_event(client, event, key="run-1#0").status_code == 201
    assert _events(app) == 1


def test_callbacks_refused_when_no_secret_is_configured(app_config: dict[str, Any]) -> None:
    client = create_app({**app_config, "CALLBACK_SECRET": ""}).test_client()
    response = post_event(client)
    assert response.status_code == 503
    assert response.json["error"] == "not_configured"
    assert client.get("/healthz").json["callbacks_enabled"] is False


def test_api_runs_newest_first_with_limit(client: FlaskClient) -> None:
    for ds in ("2026-01-04", "2026-01-06", "2026-01-05"):
        assert post_event(client, make_event(ds=ds, run_id=f"scheduled__{ds}")).status_code == 201
    runs = client.get("/api/runs").json["runs"]
    assert [r["ds"] for r in runs] == ["2026-01-06", "2026-01-05", "2026-01-04"]
    assert runs[0]["links"]["html"] == "/runs/scheduled__2026-01-06"
    assert runs[0]["psnr_gain"] == pytest.approx(1.5 + 0.111 / 2)
    assert len(client.get("/api/runs?limit=2").json["runs"]) == 2


def test_api_run_detail_and_404(client: FlaskClient) -> None:
    event = make_event()
    post_event(client, event)
    detail = client.get("/api/runs/" + event["run_id"])
    assert detail.status_code == 200
    assert detail.json["event"]["quarantine"] == event["quarantine"]
    missing = client.get("/api/runs/nope")
    assert missing.status_code == 404
    assert missing.json["error"] == "not_found"


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "database": "ok", "events": 0, "callbacks_enabled": True}
