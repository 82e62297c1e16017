"""Fixtures and helpers for the I/O reliability tests (source, storage, notification, security).

Imported by those test modules (``from tests.reliability.io_fixtures import ...  # noqa: F401``)
rather than living in a conftest, so they stay out of the compute-fault tests' way.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from werkzeug.serving import make_server

from notifier import create_app, db
from superres.config import Settings
from superres.storage import LocalStorage
from tests.conftest import _isolate_network
from tests.reliability.faulty_picsum import FaultyPicsum, make_photos

DS = "2026-01-05"
PHOTOS = 24  # photos in the faulty server's catalogue: ids "0".."23"
NOTIFIER_SECRET = "nOtIfY-hmac-Secret-5c1d0e9b-NEVER-SHOWN"
T = TypeVar("T")


def settings_for(url: str, **overrides: Any) -> Settings:
    """Small photos, short timeouts and no backoff waits (sleeps are recorded, never timed)."""
    base: dict[str, Any] = dict(
        picsum_url=url, num_images=4, image_width=64, image_height=48, fetch_retries=2,
        fetch_backoff_s=0.0, fetch_timeout_s=5.0, fetch_concurrency=4, min_success_ratio=0.0,
        picsum_allowed_hosts="",
    )
    return Settings(**{**base, **overrides})


def bounded(fn: Callable[[], T], timeout_s: float = 120.0) -> T:
    """``fn()``, failing the test (instead of hanging it) if it has not returned after ``timeout_s``.

    The limit is generous on purpose: it only tells "returned" from "hung".
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="bounded", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', 'the call')} did not return within {timeout_s:g} s (hung)")
    if "error" in box:
        raise box["error"]
    return box["value"]


# --------------------------------------------------------------------------- Picsum and storage


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small synthetic source photos (fast to render even on a busy machine)."""
    return make_photos(tmp_path_factory.mktemp("faulty-photos"), PHOTOS)


@pytest.fixture
def faulty(photos_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyPicsum]:
    """A fresh fault-injecting Picsum server; the test fills ``faulty.faults``."""
    _isolate_network(monkeypatch)
    with FaultyPicsum(photos_dir) as server:
        yield server


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


# --------------------------------------------------------------------------- the notifier over HTTP


class NotifierServer:
    """The notifier app served by Werkzeug on a loopback port in a thread; start/stop at will."""

    def __init__(self, config: dict[str, Any], port: int = 0) -> None:
        self.config = config
        self.app = create_app(config)
        self.httpd = make_server("127.0.0.1", port, self.app, threaded=True)
        self.port = self.httpd.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="notifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self._thread.join(timeout=10)
        self.httpd.server_close()

    def events(self) -> int:
        with self.app.app_context():
            return db.count_events(db.get_db())


def notifier_config(tmp_path: Path, storage_root: Path, **extra: Any) -> dict[str, Any]:
    return {
        "TESTING": True,
        "DATABASE": str(tmp_path / "notifier" / "notifier.sqlite"),
        "CALLBACK_SECRET": NOTIFIER_SECRET,
        "STORAGE_URI": str(storage_root),
        "GALLERY_SIZE": 10,
        "REFRESH_S": 300,
        "MAX_CONTENT_LENGTH": 64 * 1024,
        "MAX_SKEW_S": 300,
        **extra,
    }


@pytest.fixture
def notifier(tmp_path: Path, store: LocalStorage,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifierServer]:
    """A running notifier on 127.0.0.1 reading images from ``store``, secret NOTIFIER_SECRET."""
    _isolate_network(monkeypatch)
    server = NotifierServer(notifier_config(tmp_path, store.root))
    try:
        yield server
    finally:
        server.stop()


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
