"""Fixtures for whole-DAG runs: a real notifier on loopback and the pipeline's environment."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

E2E_SECRET = "e2e-callback-secret-7f3a9c"


@pytest.fixture
def notifier_server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The notifier app served by werkzeug on 127.0.0.1 (real HTTP), reading the test's storage."""
    from werkzeug.serving import make_server

    from notifier import create_app

    info: dict[str, Any] = {"storage": tmp_path / "storage"}
    app = create_app({"DATABASE": str(tmp_path / "notifier.sqlite"), "CALLBACK_SECRET": E2E_SECRET,
                      "STORAGE_URI": str(info["storage"]), "REFRESH_S": 0, "MAX_SKEW_S": 300})
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    info.update(url=f"http://127.0.0.1:{httpd.server_port}", port=httpd.server_port, app=app)
    try:
        yield info
    finally:
        httpd.shutdown()
        thread.join(timeout=10)
        httpd.server_close()


@pytest.fixture
def pipeline_env(airflow_db: Path, picsum_url: str, notifier_server: dict[str, Any], tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Environment for a dag.test() run: local storage, local[*] Spark, offline Picsum, notifier."""
    storage = notifier_server["storage"]
    monkeypatch.setenv("SUPERRES_STORAGE_URI", str(storage))
    monkeypatch.setenv("SUPERRES_STAGING_URI", str(tmp_path / "staging"))
    monkeypatch.setenv("SUPERRES_PICSUM_URL", picsum_url)
    monkeypatch.setenv("SUPERRES_CALLBACK_SECRET", E2E_SECRET)
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "local[2]"}))
    monkeypatch.setenv("AIRFLOW_CONN_NOTIFIER_DEFAULT", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": notifier_server["port"], "schema": "http"}))
    return {"storage": storage, "staging": tmp_path / "staging", "notifier": notifier_server}
