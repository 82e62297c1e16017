"""The SQLite file outlives the app: events, the whitelist and idempotency survive restarts."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from notifier import create_app
from superres.signing import sign
from tests.notifier.helpers import SECRET, encode, make_event, post_event


def test_database_survives_restart(app_config: dict[str, Any]) -> None:
    event = make_event()
    body = encode(event)
    headers = sign(body, SECRET)
    first = create_app(app_config).test_client()
    assert post_event(first, body=body, signed=False, headers=headers, key="k").status_code == 201
    del first

    restarted = create_app(dict(app_config)).test_client()
    runs = restarted.get("/api/runs").json["runs"]
    assert [r["run_id"] for r in runs] == [event["run_id"]]
    assert "Alejandro Escamilla" in restarted.get("/").get_data(as_text=True)
    assert restarted.get("/images/" + event["images"][0]["sr"]).status_code == 200
    # Idempotency and replay state persisted too.
    again = post_event(restarted, body=body, signed=False, headers=headers, key="k")
    assert (again.status_code, again.json["status"]) == (200, "duplicate")
    assert post_event(restarted, body=body, signed=False, headers=headers, key="other").status_code == 409


def test_schema_is_created_on_first_use_and_stores_raw_json(app_config: dict[str, Any]) -> None:
    path = Path(app_config["DATABASE"])
    assert not path.exists()
    client = create_app(app_config).test_client()
    assert path.exists()
    event = make_event()
    body = encode(event)
    post_event(client, body=body, key="k")
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT run_id, ds, state, fetched, raw_json FROM events").fetchone()
        keys = {r[0] for r in conn.execute("SELECT storage_key FROM image_keys")}
        images = conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    finally:
        conn.close()
    assert row == (event["run_id"], "2026-01-05", "success", 3, body.decode())
    assert keys == {
        k
        for image in event["images"]
        for k in (image["original"], image["bicubic"], image["sr"], image["comparison"])
    }
    assert images == 2


def test_rerun_reported_under_a_new_key_replaces_it_in_the_gallery(app_config: dict[str, Any]) -> None:
    """A cleared and re-run DAG run reports again under a new key; pages show the newest report."""
    client = create_app(app_config).test_client()
    failed = make_event(state="failed")
    assert post_event(client, failed, key="run:1").status_code == 201
    assert post_event(client, make_event(), key="run:2").status_code == 201
    runs = client.get("/api/runs").json["runs"]
    assert [(r["state"], r["idempotency_key"]) for r in runs] == [("success", "run:2")]
    page = client.get("/runs/" + failed["run_id"]).get_data(as_text=True)
    assert "2 (newest shown)" in page


def test_concurrent_deliveries_of_one_event_store_it_once(app_config: dict[str, Any]) -> None:
    """Retries racing each other (threaded server) must not double-store: one transaction decides."""
    app = create_app(app_config)
    event = make_event()
    now = int(time.time())
    results: list[int] = []

    def deliver(offset: int) -> None:
        results.append(post_event(app.test_client(), event, timestamp=now - offset).status_code)

    threads = [threading.Thread(target=deliver, args=(i % 4,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] * 7 + [201]
    assert len(app.test_client().get("/api/runs").json["runs"]) == 1
