"""Over a real loopback socket: what the Flask test client cannot show (chunked bodies)."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.serving import make_server

from notifier import create_app
from superres.signing import sign
from tests.notifier.helpers import SECRET, encode, key_for, make_event


@pytest.fixture
def port(app_config: dict[str, Any]) -> Iterator[int]:
    httpd = make_server(
        "127.0.0.1", 0, create_app({**app_config, "MAX_CONTENT_LENGTH": 16 * 1024}), threaded=True
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_port
    finally:
        httpd.shutdown()
        thread.join(timeout=10)
        httpd.server_close()


def _post_chunked(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        chunks = (body[i : i + 4096] for i in range(0, len(body), 4096))
        conn.request("POST", "/api/callbacks", body=chunks, headers=headers, encode_chunked=True)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_chunked_body_within_the_limit_is_stored(port: int) -> None:
    event = make_event()
    body = encode(event)
    headers = {"Content-Type": "application/json", "X-Idempotency-Key": key_for(event), **sign(body, SECRET)}
    status, payload = _post_chunked(port, body, headers)
    assert (status, payload["status"]) == (201, "stored")
