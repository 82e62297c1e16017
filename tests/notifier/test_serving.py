"""The notifier as `make up`, `make run` and compose serve it: ``python -m notifier``, over raw sockets.

Each test starts the real server in a subprocess on 127.0.0.1 (``--port 0``), configured
through the environment as a deployment would be.  Nothing here measures speed: a socket
that should be closed by the server is read with a generous bound (``HANG_S``), which only
tells "closed" from "hung".
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from superres.config import Settings
from superres.signing import sign
from tests.conftest import ROOT
from tests.notifier.helpers import SECRET, encode, key_for, make_event

HANG_S = 30.0  # far beyond any timeout configured below: past it, the server has hung
SERVING = re.compile(r"notifier: serving on http://127\.0\.0\.1:(\d+)/")
HALF_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: "
GET_HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=HANG_S)
        sock.settimeout(HANG_S)
        return sock

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HANG_S)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start ``python -m notifier`` with ``SUPERRES_<NAME>`` settings; stopped with SIGTERM after the test."""
    started: list[Served] = []

    def start(**settings: int) -> Served:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("NOTIFIER_", "SUPERRES_NOTIFIER_"))}
        env.update(NOTIFIER_DB=str(tmp_path / f"db{len(started)}" / "notifier.sqlite"),
                   NOTIFIER_SECRET=SECRET, NOTIFIER_STORAGE_URI=str(tmp_path / "storage"),
                   NOTIFIER_MAX_BODY=str(16 * 1024), PYTHONPATH=str(ROOT))
        env.update({f"SUPERRES_{name.upper()}": str(value) for name, value in settings.items()})
        log = tmp_path / f"notifier{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "notifier", "--host", "127.0.0.1", "--port", "0"],
                                    cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = SERVING.search(log.read_text(errors="replace"))
            if found:
                served = Served(proc, int(found[1]), log)
                started.append(served)
                return served
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        proc.kill()
        proc.wait()
        pytest.fail(f"the notifier did not start:\n{log.read_text(errors='replace')}")

    yield start
    for served in started:
        served.proc.terminate()
        try:
            served.proc.wait(timeout=HANG_S)
        except subprocess.TimeoutExpired:
            served.proc.kill()
            served.proc.wait()
            pytest.fail("the notifier did not stop on SIGTERM")


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server closes ``sock`` (EOF or reset) before HANG_S; False if it hangs."""
    sock.settimeout(HANG_S)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def read_status(sock: socket.socket) -> int:
    """The status of the response the server sends before it closes (the request said close)."""
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    found = re.match(rb"HTTP/1\.[01] (\d{3}) ", b"".join(chunks))
    assert found, f"not an HTTP response: {b''.join(chunks)[:80]!r}"
    return int(found[1])


# --------------------------------------------------------------------------- slow and silent clients


def test_a_half_sent_request_that_goes_silent_is_closed(serve: Callable[..., Served]) -> None:
    served = serve(notifier_idle_timeout_s=2, notifier_request_timeout_s=3)
    with served.connect() as sock:
        sock.sendall(HALF_REQUEST)
        assert closed_by_server(sock)


def test_a_connection_that_sends_nothing_is_closed(serve: Callable[..., Served]) -> None:
    served = serve(notifier_idle_timeout_s=2, notifier_request_timeout_s=3)
    with served.connect() as sock:
        assert closed_by_server(sock)


def test_headers_trickled_a_byte_at_a_time_are_dropped_at_the_request_deadline(
        serve: Callable[..., Served]) -> None:
    """Each byte comes well inside the idle timeout: only the request's own deadline ends it."""
    served = serve(notifier_idle_timeout_s=5, notifier_request_timeout_s=2)
    header = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Trickle: " + b"a" * 1000
    closed = False
    with served.connect() as sock:
        give_up = time.monotonic() + HANG_S
        for byte in header:
            if time.monotonic() > give_up:
                break
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            readable, _, _ = select.select([sock], [], [], 0.25)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                assert data == b"", f"the server answered a request it never fully received: {data[:80]!r}"
                closed = True
                break
    assert closed, "a client trickling its headers kept the connection open"


def test_headers_over_the_limit_are_refused_with_431(serve: Callable[..., Served]) -> None:
    served = serve(notifier_max_header_bytes=1024)
    with served.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     + b"X-Big: " + b"a" * 2048 + b"\r\n\r\n")
        assert read_status(sock) == 431
    assert served.get("/healthz")[0] == 200


def test_healthz_answers_while_a_slow_client_hangs(serve: Callable[..., Served]) -> None:
    served = serve(notifier_connection_limit=4)
    with served.connect() as slow:
        slow.sendall(HALF_REQUEST)
        assert served.get("/healthz")[0] == 200


def test_connections_beyond_the_limit_wait_until_one_closes(serve: Callable[..., Served]) -> None:
    served = serve(notifier_connection_limit=2, notifier_idle_timeout_s=120, notifier_request_timeout_s=120)
    holders = [served.connect(), served.connect()]
    try:
        for sock in holders:
            sock.sendall(HALF_REQUEST)
        with served.connect() as extra:
            extra.sendall(GET_HEALTHZ)
            # The two holders fill the limit and stay inside every timeout: the third is not served...
            extra.settimeout(1.0)
            with pytest.raises(TimeoutError):
                extra.recv(1)
            # ...until one of them goes away; then it is, and so are others while a holder hangs on.
            holders.pop(0).close()
            extra.settimeout(HANG_S)
            assert read_status(extra) == 200
        assert served.get("/healthz")[0] == 200
    finally:
        for sock in holders:
            sock.close()


# --------------------------------------------------------------------------- the app behind it


def test_a_signed_callback_is_stored_through_the_served_app(serve: Callable[..., Served]) -> None:
    served = serve()
    event = make_event()
    body = encode(event)
    headers = {"Content-Type": "application/json", "X-Idempotency-Key": key_for(event), **sign(body, SECRET)}
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=HANG_S)
    try:
        conn.request("POST", "/api/callbacks", body=body, headers=headers)
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())["status"]) == (201, "stored")
    finally:
        conn.close()
    status, runs = served.get("/api/runs")
    assert status == 200
    assert [r["run_id"] for r in json.loads(runs)["runs"]] == [event["run_id"]]


def test_a_body_over_the_limit_is_the_apps_413_through_the_served_app(serve: Callable[..., Served]) -> None:
    served = serve()
    event = make_event()
    event["padding"] = "x" * (20 * 1024)  # over NOTIFIER_MAX_BODY (16 KiB)
    body = encode(event)
    headers = {"Content-Type": "application/json", "X-Idempotency-Key": "k", **sign(body, SECRET)}
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=HANG_S)
    try:
        conn.request("POST", "/api/callbacks", body=body, headers=headers)
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())["error"]) == (413, "body_too_large")
    finally:
        conn.close()


def test_an_announced_huge_body_is_refused_before_it_is_sent(serve: Callable[..., Served]) -> None:
    served = serve()
    with served.connect() as sock:
        sock.sendall(b"POST /api/callbacks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000000\r\nConnection: close\r\n\r\n")
        assert read_status(sock) == 413


# --------------------------------------------------------------------------- one serving path


@pytest.mark.parametrize("name", ["notifier_threads", "notifier_connection_limit", "notifier_idle_timeout_s",
                                  "notifier_request_timeout_s", "notifier_max_header_bytes"])
def test_serving_bounds_must_be_positive(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.from_env({f"SUPERRES_{name.upper()}": "0"})
    assert getattr(Settings.from_env({f"SUPERRES_{name.upper()}": "7"}), name) == 7


def test_make_up_make_run_and_compose_all_serve_through_notifier_serve() -> None:
    import notifier.__main__
    import notifier.serve
    from superres.orchestration import services
    from tests.deploy import deployfiles as df

    assert notifier.__main__.main is notifier.serve.main
    assert services.notifier_cmd("http://127.0.0.1:8090")[1:3] == ["-m", "notifier"]  # make up, make run
    assert df.command_args(df.services()["notifier"])[:3] == ["python", "-m", "notifier"]  # compose
