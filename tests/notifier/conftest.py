"""Fixtures: a notifier app on a fresh SQLite file with a local storage dir of real PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from notifier import create_app
from tests.notifier.helpers import SECRET, write_images


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    root = tmp_path / "storage"
    write_images(root, "2026-01-05", ["101", "102"])
    write_images(root, "2026-01-06", ["201", "202"])
    (root / "secret").mkdir()
    (root / "secret" / "unreferenced.png").write_bytes((root / "sr/ds=2026-01-05/101.png").read_bytes())
    return root


@pytest.fixture
def app_config(tmp_path: Path, storage_dir: Path) -> dict[str, Any]:
    return {
        "TESTING": True,
        "DATABASE": str(tmp_path / "db" / "notifier.sqlite"),
        "CALLBACK_SECRET": SECRET,
        "STORAGE_URI": str(storage_dir),
        "GALLERY_SIZE": 10,
        "REFRESH_S": 30,
        "MAX_CONTENT_LENGTH": 64 * 1024,
        "MAX_SKEW_S": 300,
    }


@pytest.fixture
def app(app_config: dict[str, Any]) -> Flask:
    return create_app(app_config)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
