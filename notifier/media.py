"""``GET /images/<key>``: image bytes from pipeline storage, for whitelisted keys only.

A key is served only if a stored event referenced it (``image_keys`` table), so
the URL can never name anything else: traversal (``..``, ``%2e%2e``, absolute
paths) finds no whitelist row and gets 404 before storage is touched.  The
content type comes from the bytes' magic number, not the name, and only raster
formats are served, so nothing the browser could execute (HTML, SVG) leaves here.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

from flask import Blueprint, Flask, Response, abort, current_app, send_file

from . import db
from .events import is_safe_key

bp = Blueprint("media", __name__)

CACHE_MAX_AGE_S = 300
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def sniff(data: bytes) -> str | None:
    """The image MIME type of ``data``, or None for anything that is not a raster image."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def get_storage(app: Flask | None = None) -> Any:
    """The app's storage, opened once: an injected ``STORAGE`` or ``open_storage(STORAGE_URI)``."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    storage = app.extensions.get("notifier_storage")
    if storage is None:
        storage = app.config.get("STORAGE")
        if storage is None:
            from superres.storage import open_storage  # deferred: only image requests need it

            uri = app.config.get("STORAGE_URI")
            if not uri:
                raise RuntimeError("no storage configured (NOTIFIER_STORAGE_URI / SUPERRES_STORAGE_URI)")
            storage = open_storage(uri)
        app.extensions["notifier_storage"] = storage
    return storage


@bp.get("/images/<path:key>", merge_slashes=False)  # "//etc" must not redirect to "/etc"
def image(key: str) -> Response:
    """Serve one whitelisted image; every other path is a plain 404."""
    if not is_safe_key(key) or not db.is_known_key(db.get_db(), key):
        abort(404)
    try:
        data = get_storage().read_bytes(key)
    except (FileNotFoundError, LookupError):
        current_app.logger.warning("image %s is referenced by an event but missing from storage", key)
        abort(404)
    except Exception:
        current_app.logger.exception("storage error while reading image %s", key)
        abort(503, description="storage is unavailable")
    mime = sniff(data)
    if mime is None:
        current_app.logger.warning("refusing to serve %s: not a PNG, JPEG, GIF or WebP image", key)
        abort(404)
    response = send_file(
        io.BytesIO(data),
        mimetype=mime,
        etag=hashlib.sha256(data).hexdigest()[:32],
        max_age=CACHE_MAX_AGE_S,
        conditional=True,
    )
    response.headers["Content-Disposition"] = "inline"
    return response
