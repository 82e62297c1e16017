"""A Picsum-compatible server on 127.0.0.1 that misbehaves on demand.

It is the real offline server (:mod:`superres.picsum_server`: same routes, same
JSON, real JPEGs) with a fault table consulted on every image request::

    with FaultyPicsum(photos_dir) as server:
        server.faults["3"] = Fault("status", status=503, times=2)   # 503 twice, then the photo
        server.faults["4"] = Fault("reset")                         # TCP RST, every time
        ... fetch from server.url ...
        assert server.hits["3"] == 3

Faults at the HTTP level (status codes, Retry-After, redirects, odd bodies and
headers) are ordinary responses; faults below it (a reset connection, a stalled
or trickling body, a body shorter than its Content-Length) write to the socket
directly.  Stalled handlers wait on ``server.release``, which closing the
server sets, so no test can leave a thread hanging.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from superres.picsum_server import PicsumHandler, PicsumHTTPServer, Response, load_catalogue
from tests.helpers import smooth_image

HOST = "127.0.0.1"
STALL_LIMIT_S = 60.0  # a stalled handler gives up by itself after this, whatever happens


@dataclass
class Fault:
    """What to do instead of serving photo ``id``; ``times`` limits it to the first N requests.

    kinds:
      ``status``         answer ``status`` (with ``retry_after`` / ``headers``) and a short text body
      ``body``           answer ``status`` with exactly ``headers`` and ``body`` (no other headers)
      ``redirect``       302 to ``location`` (``{pid}`` and ``{base}`` are filled in)
      ``redirect_loop``  302 back to the URL that was asked for, forever
      ``reset``          read the request, then reset the connection (RST) without a byte
      ``reset_mid_body`` send the headers and half of the real photo, then reset
      ``stall_headers``  read the request and say nothing until the client gives up
      ``stall_body``     send the headers and half of the real photo, then say nothing
      ``trickle``        send the real photo one byte every ``interval_s`` seconds
      ``short_body``     declare the real photo's length plus 5000, send the photo, close
    """

    kind: str
    times: int | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    retry_after: str | None = None
    location: str = ""
    interval_s: float = 0.05


class FaultyServer(PicsumHTTPServer):
    def __init__(self, photos: list[Any]) -> None:
        super().__init__((HOST, 0), FaultyHandler, photos)
        self.faults: dict[str, Fault] = {}
        self.hits: Counter[str] = Counter()  # image requests per photo id
        self.paths: list[str] = []  # every request path, in order of arrival
        self.listing: tuple[int, dict[str, str], bytes] | None = None  # replaces /v2/list
        self.release = threading.Event()
        self.lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Resets and stalls are the point here: no tracebacks for the connections we broke."""


class FaultyHandler(PicsumHandler):
    server: FaultyServer
    timeout = STALL_LIMIT_S
    _fault: tuple[str | None, Fault | None] = (None, None)  # this request's photo id and fault

    def _fault_for(self) -> tuple[str | None, Fault | None]:
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        with self.server.lock:
            self.server.paths.append(self.path)
            if len(parts) in (3, 4) and parts[0] == "id" and parts[2].isdigit():
                pid = parts[1]
                self.server.hits[pid] += 1
                fault = self.server.faults.get(pid)
                if fault is not None and (fault.times is None or self.server.hits[pid] <= fault.times):
                    return pid, fault
                return pid, None
        return None, None

    def do_GET(self) -> None:
        self._fault = pid, fault = self._fault_for()
        if fault is not None and pid is not None and fault.kind in _RAW:
            _RAW[fault.kind](self, pid, fault)
            self.close_connection = True
            return
        if fault is not None and fault.kind == "body":
            self._send(fault.status, fault.headers, fault.body)
            return
        super().do_GET()

    def respond(self, path: str, query: dict[str, list[str]]) -> Response:
        if path.rstrip("/") == "/v2/list" and self.server.listing is not None:
            return self.server.listing
        pid, fault = self._fault
        if fault is None or pid is None:
            return super().respond(path, query)
        if fault.kind == "status":
            headers = {"Content-Type": "text/plain", **fault.headers}
            if fault.retry_after is not None:
                headers["Retry-After"] = fault.retry_after
            return fault.status, headers, f"fault: HTTP {fault.status}\n".encode()
        if fault.kind == "redirect":
            return 302, {"Location": fault.location.format(pid=pid, base=self.server.url)}, b""
        if fault.kind == "redirect_loop":
            return 302, {"Location": self.path}, b""
        raise AssertionError(f"unknown fault kind {fault.kind!r}")

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def photo_bytes(self) -> bytes:
        """The real JPEG this request would have got."""
        _, _, body = PicsumHandler.respond(self, self.path.split("?", 1)[0], {})
        return body


# --------------------------------------------------------------------------- socket-level faults


def _reset(handler: FaultyHandler) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    handler.wfile.flush()
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.connection.close()


def _head(handler: FaultyHandler, pid: str, length: int) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Picsum-ID", pid)
    handler.send_header("Content-Length", str(length))
    handler.end_headers()


def _raw_reset(handler: FaultyHandler, pid: str, fault: Fault) -> None:
    _reset(handler)


def _raw_reset_mid_body(handler: FaultyHandler, pid: str, fault: Fault) -> None:
    photo = handler.photo_bytes()
    _head(handler, pid, len(photo))
    handler.wfile.write(photo[: len(photo) // 2])
    _reset(handler)


def _raw_stall_headers(handler: FaultyHandler, pid: str, fault: Fault) -> None:
    handler.server.release.wait(STALL_LIMIT_S)


def _raw_stall_body(handler: FaultyHandler, pid: str, fault: Fault) -> None:
    photo = handler.photo_bytes()
    _head(handler, pid, len(photo))
    handler.wfile.write(photo[: len(photo) // 2])
    handler.server.release.wait(STALL_LIMIT_S)


def _raw_trickle(handler: FaultyHandler, pid: str, fault: Fault) -> None:
    photo = handler.photo_bytes()
    _head(handler, pid, len(photo))
    try:
        for i in range(len(photo)):
            if handler.server.release.wait(fault.interval_s):
                return
            handler.wfile.write(photo[i:i + 1])
    except OSError:  # the client gave up: that is what we are testing
        return


def _raw_short_body(handler: FaultyHandler, pid: str, fault: Fault) -> None:
    photo = handler.photo_bytes()
    _head(handler, pid, len(photo) + 5000)
    handler.wfile.write(photo)


_RAW = {
    "reset": _raw_reset,
    "reset_mid_body": _raw_reset_mid_body,
    "stall_headers": _raw_stall_headers,
    "stall_body": _raw_stall_body,
    "trickle": _raw_trickle,
    "short_body": _raw_short_body,
}


# --------------------------------------------------------------------------- the server


class FaultyPicsum:
    """A :class:`FaultyServer` on a background thread; ``with FaultyPicsum(dir) as s: s.url``."""

    def __init__(self, photos_dir: Path, authors: dict[str, str] | None = None) -> None:
        photos = load_catalogue(photos_dir)
        if authors:
            photos = [replace(p, author=authors.get(p.id, p.author)) for p in photos]
        self.httpd = FaultyServer(photos)
        self.url = self.httpd.url
        self.faults = self.httpd.faults
        self.hits = self.httpd.hits
        self.paths = self.httpd.paths
        self.photos = self.httpd.photos
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="faulty-picsum", daemon=True)
        self._thread.start()

    def set_listing(self, body: bytes, status: int = 200, content_type: str = "application/json") -> None:
        self.httpd.listing = (status, {"Content-Type": content_type}, body)

    def close(self) -> None:
        self.httpd.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultyPicsum:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_photos(folder: Path, count: int, size: tuple[int, int] = (96, 72)) -> Path:
    """``count`` small synthetic photos with ids "0".."count-1" and a photos.json (fast to render)."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {}
    w, h = size
    for i in range(count):
        name = f"photo{i:03d}.png"
        Image.fromarray(np.ascontiguousarray(smooth_image(h, w, seed=i))).save(folder / name)
        meta[name] = {"id": str(i), "author": f"Photographer {i}", "url": f"https://example.invalid/p/{i}"}
    (folder / "photos.json").write_text(json.dumps(meta))
    return folder
