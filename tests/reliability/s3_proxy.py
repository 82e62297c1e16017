"""A flaky S3 endpoint: an HTTP proxy on 127.0.0.1 in front of moto that fails on a schedule.

``fail(n)`` makes the next ``n`` requests answer like S3 under load (503 SlowDown by
default) instead of being forwarded, ``every = n`` fails each n-th request; everything
else goes to moto unchanged.  Every
request is recorded with botocore's ``amz-sdk-request`` header ("attempt=2; max=5"), so
tests can see each retry the client made.
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "te", "trailer", "upgrade",
              "proxy-connection", "content-length"}


@dataclass
class Seen:
    method: str
    path: str
    attempt: str  # botocore's amz-sdk-request header, e.g. "attempt=1; max=5"
    status: int


def s3_error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>proxy-fault</RequestId></Error>").encode()


class _Handler(BaseHTTPRequestHandler):
    server: _ProxyServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._body()
        proxy = self.server.proxy
        with proxy.lock:
            proxy.count += 1
            failing = proxy.failures_left > 0 or bool(proxy.every and proxy.count % proxy.every == 0)
            if proxy.failures_left > 0:
                proxy.failures_left -= 1
        if failing:
            status, payload = proxy.fault_status, proxy.fault_body
            headers = {"Content-Type": "application/xml"}
            length = str(len(payload))
        else:
            status, headers, payload, length = self._forward(body)
        with proxy.lock:
            proxy.seen.append(Seen(self.command, self.path, self.headers.get("amz-sdk-request", ""), status))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _forward(self, body: bytes) -> tuple[int, dict[str, str], bytes, str]:
        """Moto's answer: status, headers, body and the Content-Length to send (HEAD keeps moto's)."""
        up = urlsplit(self.server.proxy.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            out = {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP}
            length = str(len(payload))
            if self.command == "HEAD":
                length = resp.getheader("Content-Length") or "0"
            return resp.status, out, payload, length
        finally:
            conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    proxy: FlakyS3


class FlakyS3:
    """``with FlakyS3(moto_url) as s3: s3.fail(3); ...client with endpoint_url=s3.url...``"""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.lock = threading.Lock()
        self.failures_left = 0
        self.every = 0  # when set, every n-th request fails as well
        self.count = 0
        self.fault_status = 503
        self.fault_body = s3_error("SlowDown", "Please reduce your request rate.")
        self.seen: list[Seen] = []
        self.httpd = _ProxyServer(("127.0.0.1", 0), _Handler)
        self.httpd.proxy = self
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="flaky-s3", daemon=True)
        self._thread.start()

    def fail(self, n: int, status: int = 503, code: str = "SlowDown", message: str = "Please reduce your "
             "request rate.") -> None:
        with self.lock:
            self.failures_left = n
            self.fault_status = status
            self.fault_body = s3_error(code, message)

    def clear(self) -> None:
        with self.lock:
            self.seen.clear()
            self.failures_left = 0
            self.every = 0

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FlakyS3:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
