"""JSON API: the signed callback endpoint, the runs feed and a health check.

``POST /api/callbacks`` checks, in this order, answering with the first failure:

1. 503 ``not_configured``: the notifier has no secret, so it can verify nothing.
2. 413 ``body_too_large``: the body exceeds ``MAX_CONTENT_LENGTH`` (NOTIFIER_MAX_BODY).
3. 401 ``missing_signature`` | ``malformed_signature`` | ``missing_timestamp`` |
   ``malformed_timestamp`` | ``bad_signature`` | ``stale_timestamp``: see
   :mod:`superres.signing`; the HMAC covers ``f"{timestamp}." + body``.
4. 400 ``missing_idempotency_key``: ``X-Idempotency-Key`` is required (the
   sender uses the Airflow run id + ds); 1-200 printable ASCII characters.
5. 400 ``malformed_json`` | ``too_deep`` | ``number_too_large`` | ``invalid_event``:
   the body against the schema in :mod:`notifier.events` (nesting, integer range,
   characters of ids, dates and keys, types, ranges and lengths of every field).
   400 ``idempotency_key_mismatch``: the signed body names an ``idempotency_key``
   (the pipeline's events do) and the unsigned header says another.
6. The delivery decision, atomically in one SQLite transaction:

   * **replay**, 409 ``replay``: the (timestamp, signature) pair was accepted
     before, and this request differs from that delivery: another
     ``X-Idempotency-Key`` (or, impossible without the secret, another body).
     A captured request cannot be re-filed under a new key.
   * **duplicate**, 200 ``{"status": "duplicate"}``: the same event again, i.e.
     the same idempotency key and the same content. Either the byte-identical
     request re-sent (same signature), or a fresh signature over the same
     event: the content digest ignores ``sent_at``, so a retried Airflow task
     that rebuilt and re-signed the event counts as a duplicate. Nothing new
     is stored (only the new signature is remembered, for replay detection).
   * **conflict**, 409 ``idempotency_conflict``: the key was already used for
     an event with different content. Keys name one event; a run that must be
     reported again with new results (e.g. cleared and re-run) needs a new key.
   * **stored**, 201 ``{"status": "stored"}``: first delivery of this key.

Signatures are remembered for twice the skew window; anything older is
rejected as stale at step 3 anyway.  Rejections are logged with their code,
never with the secret or the signature.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, request, url_for

from superres.signing import SignatureError, verify

from . import db
from .events import IDEMPOTENCY_RE, METRIC_FIELDS, EventError, parse_event

bp = Blueprint("api", __name__)

IDEMPOTENCY_HEADER = "X-Idempotency-Key"
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000


def _error(status: int, code: str, message: str, **extra: Any) -> tuple[Response, int]:
    """One line of ASCII JSON (in debug mode too, where ``jsonify`` would indent it)."""
    body = json.dumps({"error": code, "message": message, **extra}, separators=(",", ":"), ensure_ascii=True)
    return current_app.response_class(body + "\n", mimetype="application/json"), status


def _reject(status: int, code: str, message: str, **extra: Any) -> tuple[Response, int]:
    current_app.logger.warning("callback rejected: %s %s (from %s)", status, code, request.remote_addr or "?")
    return _error(status, code, message, **extra)


@bp.post("/api/callbacks")
def callbacks() -> tuple[Response, int]:
    """Receive one signed pipeline event."""
    secret = current_app.config["CALLBACK_SECRET"]
    if not secret:
        return _reject(503, "not_configured", "the notifier has no callback secret configured")
    body = _read_body(int(current_app.config["MAX_CONTENT_LENGTH"]))
    max_skew = int(current_app.config["MAX_SKEW_S"])
    try:
        verified = verify(body, request.headers, secret, max_skew)
    except SignatureError as exc:
        return _reject(401, exc.code, exc.message)

    key = (request.headers.get(IDEMPOTENCY_HEADER) or "").strip()
    if not IDEMPOTENCY_RE.fullmatch(key):
        return _reject(
            400, "missing_idempotency_key", f"{IDEMPOTENCY_HEADER} must be 1-200 printable ASCII characters"
        )
    try:
        event = parse_event(body)
    except EventError as exc:
        return _reject(400, exc.code, exc.message, problems=exc.problems)
    signed_key = event.data.get("idempotency_key")
    if signed_key is not None and signed_key != key:
        # The header is not signed; the body's key is.  Without this a captured request could be
        # filed under a key of the capturer's choosing before the real delivery arrives.
        return _reject(400, "idempotency_key_mismatch",
                       f"{IDEMPOTENCY_HEADER} differs from the signed event's idempotency_key")

    delivery = db.Delivery(
        idempotency_key=key,
        signature=verified.signature,
        signed_at=verified.timestamp,
        body_sha256=hashlib.sha256(body).hexdigest(),
        raw_json=body.decode("utf-8"),
    )
    outcome = db.record(db.get_db(), event, delivery, max_skew)
    links = {
        "run": url_for("gallery.run", run_id=event.run_id),
        "api": url_for("api.run", run_id=event.run_id),
    }
    if outcome == db.STORED:
        current_app.logger.info("stored event %s for run %s (ds %s)", key, event.run_id, event.ds)
        return jsonify(status="stored", idempotency_key=key, run_id=event.run_id, links=links), 201
    if outcome == db.DUPLICATE:
        current_app.logger.info("duplicate delivery of event %s ignored", key)
        return jsonify(status="duplicate", idempotency_key=key, run_id=event.run_id, links=links), 200
    if outcome == db.REPLAY:
        return _reject(409, "replay", "this signed request was already delivered; it cannot be re-filed")
    return _reject(
        409,
        "idempotency_conflict",
        f"{IDEMPOTENCY_HEADER} was already used for an event with different content; use a new key",
    )


def _read_body(limit: int) -> bytes:
    """The request body, never buffering more than ``limit`` bytes.

    Werkzeug rejects an oversized Content-Length itself, but a chunked request
    has none and ``get_data()`` would silently truncate it at the limit (then
    fail as a bad signature), so the limit is enforced while reading.  A chunked
    body of exactly ``limit`` bytes counts as too large: Werkzeug cannot tell it
    from a longer one without reading past the limit.
    """
    stream = request.stream  # raises 413 for a declared Content-Length over the limit
    chunks, size = [], 0
    while size <= limit:
        chunk = stream.read(min(64 * 1024, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        abort(413)
    return b"".join(chunks)


@bp.errorhandler(413)
def too_large(_exc: Exception) -> tuple[Response, int]:
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    return _reject(413, "body_too_large", f"the request body exceeds {limit} bytes")


@bp.get("/api/runs")
def runs() -> Response:
    """Runs as JSON, newest run date first (``?limit=``, default 100)."""
    limit = min(max(request.args.get("limit", DEFAULT_LIMIT, type=int) or DEFAULT_LIMIT, 1), MAX_LIMIT)
    return jsonify(runs=[_summary(row) for row in db.recent_runs(db.get_db(), limit)])


@bp.get("/api/runs/<path:run_id>")
def run(run_id: str) -> tuple[Response, int]:
    """The newest stored event of one run, as received."""
    row = db.latest_for_run(db.get_db(), run_id)
    if row is None:
        return _error(404, "not_found", "no such run")
    return jsonify(run=_summary(row), event=_finite(db.event_document(row))), 200


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    try:
        events = db.count_events(db.get_db())
    except sqlite3.Error:
        current_app.logger.exception("health check: database unavailable")
        return jsonify(status="error", database="unavailable"), 503
    return jsonify(
        status="ok",
        database="ok",
        events=events,
        callbacks_enabled=bool(current_app.config["CALLBACK_SECRET"]),
    ), 200


def _summary(row: sqlite3.Row) -> dict[str, Any]:
    mean = {m: _finite(row[f"mean_{m}"]) for m in METRIC_FIELDS}
    gain = None
    if mean["psnr"] is not None and mean["psnr_bicubic"] is not None:
        gain = round(mean["psnr"] - mean["psnr_bicubic"], 6)
    return {
        "run_id": row["run_id"],
        "dag_id": row["dag_id"],
        "ds": row["ds"],
        "mode": row["mode"],
        "scale": row["scale"],
        "state": row["state"],
        "counts": {k: row[k] for k in ("fetched", "processed", "quarantined")},
        "mean": mean if any(v is not None for v in mean.values()) else None,
        "psnr_gain": gain,
        "idempotency_key": row["idempotency_key"],
        "sent_at": row["sent_at"],
        "received_at": row["received_at"],
        "links": {"html": url_for("gallery.run", run_id=row["run_id"])},
    }


def _finite(value: Any) -> Any:
    """Strict JSON has no Infinity/NaN: those become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
