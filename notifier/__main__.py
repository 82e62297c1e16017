"""``python -m notifier --host 127.0.0.1 --port 8090``: serve the notifier.

Uses Werkzeug's threaded WSGI server, which is adequate for the embedded,
single-user setup (one callback a day, a few page views); behind a real
deployment run ``notifier:create_app()`` under any WSGI server instead.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from werkzeug.serving import make_server

from . import create_app


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
    app = create_app()
    server = make_server(args.host, args.port, app, threaded=True)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"notifier: serving on http://{host}:{server.port}/ (database {app.config['DATABASE']})", flush=True
    )

    def stop(signum: int, _frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever() to return, so call it off the serving thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("notifier: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
