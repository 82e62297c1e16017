"""Serve the notifier: ``python -m notifier --host 127.0.0.1 --port 8090``.

The one way the notifier is served, by ``make up``, ``make run`` and docker-compose
alike: waitress, which reads every request whole (line, headers and body) on its own
I/O thread before an app thread sees it, so a slow or silent client holds a connection
slot, never an app thread, and only for a bounded time.  The bounds come from
:class:`superres.config.Settings` (``SUPERRES_NOTIFIER_*``):

* ``notifier_idle_timeout_s``: a connection with no byte in either direction for this
  long is closed (a client that connects and says nothing, or stops half-way; an idle
  keep-alive);
* ``notifier_request_timeout_s``: a request whose line, headers and body have not all
  arrived this long after its first byte is dropped, however steadily it trickles;
* ``notifier_max_header_bytes``: a longer request line plus headers is refused (431);
* ``notifier_connection_limit``: past this many open client connections, new ones wait
  in the listen backlog until one closes;
* ``notifier_threads``: the app's worker threads.

A body is buffered up to twice the app's own limit (``NOTIFIER_MAX_BODY``), so that the
app answers one just over it with its JSON 413 ``body_too_large``; a larger one is
refused with a plain 413 without being read, a declared one before it is sent.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import sys
import time
from types import FrameType
from typing import Any

from flask import Flask
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import create_server

from superres.config import Settings

from . import create_app


class _TimedRequestParser(HTTPRequestParser):
    """A request being received, with the time its first byte arrived."""

    def __init__(self, adj: Any) -> None:
        super().__init__(adj)
        self.started = time.time()


class _BoundedChannel(HTTPChannel):
    """A connection whose request in progress must arrive whole within ``request_timeout_s``.

    waitress itself only closes a connection that has been idle for ``channel_timeout``;
    this also ends one that keeps sending a byte now and then without ever finishing its
    request.  Checked each time the I/O loop polls the connection (at least once a second).
    """

    parser_class = _TimedRequestParser
    request_timeout_s = 60

    def readable(self) -> bool:
        request = self.request
        if (request is not None and not self.requests and not request.completed
                and time.time() - request.started > self.request_timeout_s):
            self.will_close = True  # handle_write closes it on this same loop pass
        return super().readable()


def _listen(host: str, port: int) -> socket.socket:
    """One listening socket on ``host``, as Werkzeug's server binds it (IPv6 only for a literal)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def make_server(app: Flask, host: str, port: int, settings: Settings) -> Any:
    """A waitress server for ``app`` on ``host:port`` with the bounds of ``settings``; not yet running."""
    max_body = int(app.config["MAX_CONTENT_LENGTH"])
    socket_map: dict[int, Any] = {}
    server = create_server(
        app,
        map=socket_map,
        sockets=[_listen(host, port)],
        threads=settings.notifier_threads,
        connection_limit=settings.notifier_connection_limit,
        channel_timeout=settings.notifier_idle_timeout_s,
        cleanup_interval=1,  # how often idle connections are looked for
        max_request_header_size=settings.notifier_max_header_bytes,
        max_request_body_size=2 * max_body,
        asyncore_use_poll=True,  # no select() limit on descriptors
        ident="superres-notifier",
    )
    server.channel_class = type("BoundedChannel", (_BoundedChannel,),
                                {"request_timeout_s": settings.notifier_request_timeout_s})
    # waitress counts its own listening socket and wake-up pipe against the limit too.
    server.adj.connection_limit = settings.notifier_connection_limit + len(socket_map)
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m notifier", description="Serve the superres-pipeline notifier (callbacks and gallery)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8090, help="port to bind; 0 picks a free one (default: 8090)"
    )
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    app = create_app()
    server = make_server(app, args.host, args.port, settings)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"notifier: serving on http://{host}:{server.effective_port}/ (database {app.config['DATABASE']})",
        flush=True,
    )

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)  # ends the I/O loop; run() then stops the app threads

    signal.signal(signal.SIGTERM, stop)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(OSError):
            server.close()
    print("notifier: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
