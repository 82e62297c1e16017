"""Notification faults: with the notifier down the callback task raises a retryable error (Airflow
retries it with exponential backoff), the event stays in ``reports/ds=…/event.json``, ``make notify``
re-delivers it, and the notifier stores it once however often it arrives.

The notifier is the real Flask app served on 127.0.0.1; the callback task is
``superres.orchestration.notify.notify`` with the real Airflow HttpHook and an
``AIRFLOW_CONN_NOTIFIER_DEFAULT`` connection, called as Airflow would call it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from superres import signing
from superres.config import Settings
from superres.orchestration import notify as notify_mod
from superres.orchestration.notify import DeliveryFailed
from superres.storage import LocalStorage
from tests.conftest import ROOT, _isolate_network
from tests.notifier.helpers import png_bytes
from tests.reliability.io_fixtures import (
    DS,
    NOTIFIER_SECRET,
    NotifierServer,
    bounded,
    free_port,
    notifier_config,
)

RUN_ID = "scheduled__2026-01-05T00:00:00+00:00"


class FakeTI:
    """The part of Airflow's task instance the callback uses: the run's task states and tries."""

    try_number = 1
    max_tries = 0  # no retry coming unless a test says so

    def __init__(self, states: dict[str, str] | None = None) -> None:
        self.states = states or {"fetch": "success", "report": "success"}

    def get_task_states(self, dag_id: str, run_ids: list[str]) -> dict[str, dict[str, str]]:
        return {run_ids[0]: self.states}


def context(clear_number: int = 0, states: dict[str, str] | None = None) -> dict[str, Any]:
    return {"ti": FakeTI(states), "dag_run": SimpleNamespace(dag_id="superres_daily", run_id=RUN_ID,
                                                             clear_number=clear_number)}


def seed_run(storage: LocalStorage) -> dict[str, Any]:
    """What a finished run leaves behind: a manifest with two photos and one quarantined, two SR PNGs."""
    manifest = {
        "ds": DS, "requested": 3,
        "images": [{"image_id": i, "author": f"Author {i}", "key": f"raw/ds={DS}/{i}.jpg"}
                   for i in ("1", "2")],
        "quarantined": [{"image_id": "3", "reason": "corrupt", "message": "truncated JPEG"}],
    }
    storage.replace_partition(f"raw/ds={DS}", {"_manifest.json": json.dumps(manifest).encode(),
                                                "1.jpg": png_bytes(16, 16), "2.jpg": png_bytes(16, 16, 1)})
    storage.replace_partition(f"sr/ds={DS}", {"1.png": png_bytes(32, 32), "2.png": png_bytes(32, 32, 1)})
    storage.write_json(f"reports/ds={DS}/owner.json", {"ds": DS, "run_id": RUN_ID})
    storage.write_json(f"reports/ds={DS}/stages/evaluate.json", {"stage": "evaluate", "published": True})
    settings = Settings(storage_uri=str(storage.root))
    return {"ds": DS, "run_id": RUN_ID, "token": "tok", "settings": settings.public()}


@pytest.fixture
def http_conn(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point the notifier_default connection at a loopback port; its password is the HMAC secret."""
    _isolate_network(monkeypatch)
    for name in ("SUPERRES_CALLBACK_SECRET", "SUPERRES_NOTIFIER_CONN_ID", "SUPERRES_STORAGE_URI"):
        monkeypatch.delenv(name, raising=False)

    def point(port: int, secret: str = NOTIFIER_SECRET) -> None:
        conn = {"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http", "password": secret}
        monkeypatch.setenv("AIRFLOW_CONN_NOTIFIER_DEFAULT", json.dumps(conn))

    return point


@pytest.fixture
def down_port() -> int:
    return free_port()


def saved_event(storage: LocalStorage) -> dict[str, Any]:
    return storage.read_json(f"reports/ds={DS}/event.json")


def notify_cli(storage: LocalStorage, url: str, secret: str = NOTIFIER_SECRET,
               date: str = DS) -> subprocess.CompletedProcess[str]:
    """``make notify DATE=…`` minus make's install step: the same module, a fresh process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPERRES_", "AIRFLOW_CONN_"))}
    env.update(SUPERRES_STORAGE_URI=str(storage.root), SUPERRES_CALLBACK_SECRET=secret,
               NO_PROXY="127.0.0.1,localhost")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "superres.orchestration.notify", "--date", date, "--url", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


# --------------------------------------------------------------------------- the task's retry policy


def test_callback_task_retries_with_exponential_backoff() -> None:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["superres_daily"]
    task = dag.get_task("notify")
    assert task.trigger_rule == "all_done"  # runs after failures too
    assert task.retries == 5
    assert task.retry_delay == timedelta(seconds=30)
    assert task.retry_exponential_backoff
    assert task.max_retry_delay == timedelta(minutes=10)


# --------------------------------------------------------------------------- notifier down


def test_notifier_down_is_a_retryable_error_and_the_event_is_kept(
        store: LocalStorage, http_conn: Any, down_port: int) -> None:
    run = seed_run(store)
    http_conn(down_port)
    with pytest.raises(DeliveryFailed) as info:
        bounded(lambda: notify_mod.notify(run, context()))
    from airflow.sdk.exceptions import AirflowFailException

    assert info.value.retryable and not isinstance(info.value, AirflowFailException)
    message = str(info.value)
    assert "cannot reach the notifier" in message and "event.json" in message
    assert NOTIFIER_SECRET not in message
    event = saved_event(store)
    assert event["idempotency_key"] == f"{RUN_ID}#0" and event["state"] == "success"
    assert event["counts"] == {"fetched": 3, "processed": 2, "quarantined": 1}
    assert [i["image_id"] for i in event["images"]] == ["1", "2"]


def test_date_stays_held_while_a_retry_of_the_callback_is_coming(
        store: LocalStorage, http_conn: Any, down_port: int) -> None:
    """Another run of the date would clear reports/ (event.json too) before the retry delivers it."""
    from superres.orchestration.run import lease_owner
    from superres.pipeline import layout

    run = seed_run(store)
    http_conn(down_port)
    ctx = context()
    ctx["ti"].try_number, ctx["ti"].max_tries = 1, 5  # Airflow will retry
    with pytest.raises(DeliveryFailed):
        bounded(lambda: notify_mod.notify(run, ctx))
    assert store.read_json(layout.lease_key(run["ds"]))["owner"] == lease_owner(run)
    ctx["ti"].try_number = 6  # the last try: give the date up whatever happens
    with pytest.raises(DeliveryFailed):
        bounded(lambda: notify_mod.notify(run, ctx))
    assert not store.exists(layout.lease_key(run["ds"]))


def test_notifier_overloaded_is_retryable(store: LocalStorage, http_conn: Any, tmp_path: Path) -> None:
    """A notifier answering 503 (here: started without its secret) is retried, not given up on."""
    server = NotifierServer(notifier_config(tmp_path, store.root, CALLBACK_SECRET=""))
    try:
        run = seed_run(store)
        http_conn(server.port)
        with pytest.raises(DeliveryFailed, match="HTTP 503") as info:
            bounded(lambda: notify_mod.notify(run, context()))
        assert info.value.retryable and server.events() == 0
    finally:
        server.stop()


def test_permanent_refusal_fails_the_task_at_once(store: LocalStorage, http_conn: Any,
                                                  notifier: NotifierServer) -> None:
    """A wrong secret (401) will not fix itself: no retries, a message saying what to do."""
    from airflow.sdk.exceptions import AirflowFailException

    run = seed_run(store)
    http_conn(notifier.port, secret="not-the-notifier-secret")
    with pytest.raises(AirflowFailException, match="HTTP 401 .*bad_signature.*make notify DATE=2026-01-05"):
        bounded(lambda: notify_mod.notify(run, context()))
    assert saved_event(store)["idempotency_key"] == f"{RUN_ID}#0"
    assert notifier.events() == 0


def test_outage_then_retry_then_redelivery_stores_the_event_once(
        store: LocalStorage, http_conn: Any, down_port: int, tmp_path: Path) -> None:
    run = seed_run(store)
    http_conn(down_port)
    with pytest.raises(DeliveryFailed):  # try 1: the notifier is down
        bounded(lambda: notify_mod.notify(run, context()))
    first = saved_event(store)

    server = NotifierServer(notifier_config(tmp_path, store.root), port=down_port)  # it comes back
    try:
        result = bounded(lambda: notify_mod.notify(run, context()))  # try 2: Airflow's retry
        assert result == {"state": "success", "failed_tasks": [], "status": 201}
        assert saved_event(store) == first  # the same event, rebuilt identically

        again = notify_cli(store, server.url)  # and `make notify` on top: a duplicate
        assert again.returncode == 0, again.stderr
        assert f"event for ds={DS} delivered to {server.url}: HTTP 200" in again.stdout
        assert server.events() == 1
        runs = requests.get(server.url + "/api/runs", timeout=10).json()["runs"]
        assert [r["run_id"] for r in runs] == [RUN_ID]
        assert runs[0]["counts"] == {"fetched": 3, "processed": 2, "quarantined": 1}
    finally:
        server.stop()


def test_make_notify_redelivers_an_event_the_task_never_got_through(
        store: LocalStorage, http_conn: Any, down_port: int, notifier: NotifierServer) -> None:
    run = seed_run(store)
    http_conn(down_port)
    for _ in range(3):  # every Airflow try fails: the notifier stays down for the whole run
        with pytest.raises(DeliveryFailed):
            bounded(lambda: notify_mod.notify(run, context()))
    assert notifier.events() == 0

    first = notify_cli(store, notifier.url)
    assert first.returncode == 0, first.stderr
    assert f"delivered to {notifier.url}: HTTP 201" in first.stdout
    second = notify_cli(store, notifier.url)  # delivered twice ...
    assert second.returncode == 0 and "HTTP 200" in second.stdout
    assert notifier.events() == 1  # ... stored once
    detail = requests.get(f"{notifier.url}/api/runs/{RUN_ID}", timeout=10).json()
    assert detail["event"]["idempotency_key"] == f"{RUN_ID}#0"
    for out in (first, second):
        assert NOTIFIER_SECRET not in out.stdout + out.stderr


def test_make_notify_target_runs_the_redelivery_module() -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    out = subprocess.run([make, "-n", "notify", "DATE=2026-01-05"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert ".venv/bin/python -m superres.orchestration.notify --date 2026-01-05" in out.stdout


def test_make_notify_without_a_saved_event_says_so(store: LocalStorage, notifier: NotifierServer) -> None:
    out = notify_cli(store, notifier.url, date="2026-01-09")
    assert out.returncode == 1
    assert "no saved event for ds=2026-01-09" in out.stderr and "Traceback" not in out.stderr


def test_make_notify_with_the_notifier_down_fails_cleanly(store: LocalStorage, http_conn: Any,
                                                         down_port: int) -> None:
    run = seed_run(store)
    with pytest.raises(DeliveryFailed):
        http_conn(down_port)
        bounded(lambda: notify_mod.notify(run, context()))
    out = notify_cli(store, f"http://127.0.0.1:{down_port}")
    assert out.returncode == 1 and "not delivered" in out.stderr and "Traceback" not in out.stderr
    assert saved_event(store)["idempotency_key"] == f"{RUN_ID}#0"  # still there for the next try


# --------------------------------------------------------------------------- stored once


def _post(url: str, body: bytes, key: str, timestamp: int | None = None) -> requests.Response:
    headers = {"Content-Type": "application/json", "X-Idempotency-Key": key,
               **signing.sign(body, NOTIFIER_SECRET, timestamp)}
    return requests.post(url + "/api/callbacks", data=body, headers=headers, timeout=10)


def _event(store: LocalStorage) -> dict[str, Any]:
    return notify_mod.build_event(seed_run(store), store, [], "superres_daily", f"{RUN_ID}#0")


def test_the_event_reports_only_what_this_run_wrote(store: LocalStorage) -> None:
    run = seed_run(store)
    event = notify_mod.build_event(run, store, [], "superres_daily", "k")
    assert [i["image_id"] for i in event["images"]] == ["1", "2"]
    assert event["counts"] == {"fetched": 3, "processed": 2, "quarantined": 1}
    # A rerun that failed before its evaluate published: sr/ still holds the earlier run's
    # outputs (the last published ones), which are not this run's.
    store.delete_prefix(f"reports/ds={DS}/stages/")
    failed = notify_mod.build_event(run, store, ["quality"], "superres_daily", "k")
    assert failed["state"] == "failed" and failed["images"] == []
    assert failed["counts"] == {"fetched": 3, "processed": 0, "quarantined": 1}
    # A run that never took the date (its fetch failed on another run's lease) reports none of
    # the other run's files: no images, counts, quarantine or metrics.
    store.write_json(f"reports/ds={DS}/stages/evaluate.json", {"stage": "evaluate", "published": True})
    store.write_json(f"reports/ds={DS}/metrics.json", {"mean": {"psnr": 30.0}, "images": []})
    other = notify_mod.build_event(dict(run, run_id="manual__other"), store, ["fetch"], "superres_daily", "k")
    assert other["images"] == [] and other["quarantine"] == [] and other["metrics"] is None
    assert other["counts"] == {"fetched": 0, "processed": 0, "quarantined": 0}


def test_same_request_delivered_twice_is_stored_once(store: LocalStorage, notifier: NotifierServer) -> None:
    event = _event(store)
    body, key = notify_mod.encode(event), event["idempotency_key"]
    first, again = _post(notifier.url, body, key), _post(notifier.url, body, key)
    assert (first.status_code, first.json()["status"]) == (201, "stored")
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    assert notifier.events() == 1


def test_retried_task_that_re_signs_the_same_event_is_a_duplicate(
        store: LocalStorage, notifier: NotifierServer) -> None:
    """A retry rebuilds the event (new sent_at) and signs it anew: still the same event, stored once."""
    import time

    event = _event(store)
    body = json.dumps(dict(event, sent_at="2026-01-05T00:10:00+00:00"), sort_keys=True).encode()
    assert _post(notifier.url, body, event["idempotency_key"], int(time.time()) - 60).status_code == 201
    retried = json.dumps(dict(event, sent_at="2026-01-05T00:15:00+00:00"), sort_keys=True).encode()
    response = _post(notifier.url, retried, event["idempotency_key"])
    assert (response.status_code, response.json()["status"]) == (200, "duplicate")
    assert notifier.events() == 1


def test_concurrent_deliveries_store_once(store: LocalStorage, notifier: NotifierServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    event = _event(store)
    body = notify_mod.encode(event)
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = pool.map(lambda _: _post(notifier.url, body, event["idempotency_key"]), range(6))
        statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] * 5 + [201]
    assert notifier.events() == 1
