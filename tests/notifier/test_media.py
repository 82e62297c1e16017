"""GET /images/<key>: only keys referenced by a stored event, only real raster images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from notifier import create_app
from tests.notifier.helpers import make_event, png_bytes, post_event


@pytest.fixture
def stored(client: FlaskClient) -> dict[str, Any]:
    event = make_event()
    assert post_event(client, event).status_code == 201
    return event


@pytest.mark.parametrize("field", ["original", "bicubic", "sr", "comparison"])
def test_serves_whitelisted_keys(
    client: FlaskClient, stored: dict[str, Any], storage_dir: Path, field: str
) -> None:
    key = stored["images"][0][field]
    response = client.get("/images/" + key)
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert response.data == storage_dir.joinpath(*key.split("/")).read_bytes()
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Disposition"] == "inline"
    assert response.headers["ETag"]


def test_conditional_request_gets_304(client: FlaskClient, stored: dict[str, Any]) -> None:
    url = "/images/" + stored["images"][0]["sr"]
    etag = client.get(url).headers["ETag"]
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304


def test_referenced_key_missing_from_storage_is_404(client: FlaskClient, storage_dir: Path) -> None:
    event = make_event(ds="2026-01-09", run_id="r9", image_ids=("9",))
    post_event(client, event)
    assert client.get("/images/" + event["images"][0]["sr"]).status_code == 404


def test_non_image_content_is_never_served(
    client: FlaskClient, stored: dict[str, Any], storage_dir: Path
) -> None:
    key = stored["images"][1]["sr"]
    storage_dir.joinpath(*key.split("/")).write_bytes(b"<html><script>alert(1)</script></html>")
    assert client.get("/images/" + key).status_code == 404


class _FakeStorage:
    """In-memory stand-in following superres.storage's interface."""

    def __init__(self, objects: dict[str, bytes], broken: bool = False) -> None:
        self.objects, self.broken, self.reads = objects, broken, []

    def read_bytes(self, key: str) -> bytes:
        self.reads.append(key)
        if self.broken:
            raise ConnectionError("endpoint unreachable")
        try:
            return self.objects[key]
        except KeyError:
            raise FileNotFoundError(key) from None

    def exists(self, key: str) -> bool:
        return key in self.objects

    def list(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def uri(self, key: str = "") -> str:
        return "mem://" + key


def test_injected_storage_and_storage_errors(app_config: dict[str, Any]) -> None:
    event = make_event()
    sr_key = event["images"][0]["sr"]
    fake = _FakeStorage({sr_key: png_bytes(8, 8)})
    client = create_app({**app_config, "STORAGE": fake}).test_client()
    post_event(client, event)
    assert client.get("/images/" + sr_key).status_code == 200
    assert client.get("/images/secret/unreferenced.png").status_code == 404
    assert fake.reads == [sr_key]  # the whitelist answered before storage was touched

    broken = create_app({**app_config, "STORAGE": _FakeStorage({}, broken=True)}).test_client()
    assert broken.get("/images/" + sr_key).status_code == 503
