"""SQLite persistence: one file, created on first use, so events survive restarts.

Tables:

* ``events``: one row per idempotency key, with the raw JSON as received plus
  the columns the pages query (ds, state, counts, mean metrics).
* ``images``: one row per image of an event, metrics merged in.
* ``image_keys``: every storage key any event referenced; the whitelist of
  ``/images/<key>``.
* ``deliveries``: each accepted signature, to tell duplicates from replays.
  Rows older than the signature's validity window are pruned: such a request
  is rejected as stale before it gets here.

``latest_events`` shows, per ``run_id``, only the newest report, so a run
reported twice under different keys appears once in the gallery.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, current_app, g

from .events import METRIC_FIELDS, Event

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    idempotency_key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    dag_id TEXT,
    ds TEXT NOT NULL,
    mode TEXT,
    scale INTEGER,
    state TEXT NOT NULL,
    fetched INTEGER NOT NULL,
    processed INTEGER NOT NULL,
    quarantined INTEGER NOT NULL,
    mean_psnr REAL,
    mean_ssim REAL,
    mean_psnr_bicubic REAL,
    mean_ssim_bicubic REAL,
    sent_at TEXT,
    signed_at INTEGER NOT NULL,
    received_at REAL NOT NULL,
    content_sha256 TEXT NOT NULL,
    raw_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id, received_at);
CREATE INDEX IF NOT EXISTS events_by_date ON events (ds, received_at);

CREATE TABLE IF NOT EXISTS images (
    idempotency_key TEXT NOT NULL REFERENCES events (idempotency_key) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    image_id TEXT NOT NULL,
    author TEXT,
    original_key TEXT,
    bicubic_key TEXT,
    sr_key TEXT,
    comparison_key TEXT,
    psnr REAL,
    ssim REAL,
    psnr_bicubic REAL,
    ssim_bicubic REAL,
    PRIMARY KEY (idempotency_key, position)
);

CREATE TABLE IF NOT EXISTS image_keys (storage_key TEXT PRIMARY KEY);

CREATE TABLE IF NOT EXISTS deliveries (
    signature TEXT PRIMARY KEY,
    signed_at INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL,
    body_sha256 TEXT NOT NULL,
    received_at REAL NOT NULL
);

CREATE VIEW IF NOT EXISTS latest_events AS
SELECT e.rowid AS seq, e.* FROM events e
WHERE NOT EXISTS (
    SELECT 1 FROM events n
    WHERE n.run_id = e.run_id
      AND (n.received_at > e.received_at OR (n.received_at = e.received_at AND n.rowid > e.rowid))
);
"""

STORED, DUPLICATE, REPLAY, CONFLICT = "stored", "duplicate", "replay", "idempotency_conflict"


@dataclass(frozen=True)
class Delivery:
    """What the API verified about one request, for the duplicate/replay decision."""

    idempotency_key: str
    signature: str
    signed_at: int
    body_sha256: str
    raw_json: str


def connect(path: str) -> sqlite3.Connection:
    """A connection in autocommit mode; writers open their own ``BEGIN IMMEDIATE``."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=15, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 15000")
    return conn


def init_schema(conn: sqlite3.Connection) -> None:
    """Create missing tables; idempotent, so every start may call it."""
    if path_of(conn) != "":
        conn.execute("PRAGMA journal_mode = WAL")  # readers never block the callback writer
    conn.executescript(SCHEMA)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def path_of(conn: sqlite3.Connection) -> str:
    row = conn.execute("PRAGMA database_list").fetchone()
    return row["file"] if row else ""


def get_db() -> sqlite3.Connection:
    """The request's connection, opened lazily (the flaskr pattern)."""
    if "db" not in g:
        g.db = connect(current_app.config["DATABASE"])
    return g.db


def close_db(_exc: BaseException | None = None) -> None:
    conn = g.pop("db", None)
    if conn is not None:
        conn.close()


def init_app(app: Flask) -> None:
    """Create the schema now (first use of the file) and close connections after requests."""
    conn = connect(app.config["DATABASE"])
    try:
        init_schema(conn)
    finally:
        conn.close()
    app.teardown_appcontext(close_db)


def record(conn: sqlite3.Connection, event: Event, delivery: Delivery, max_skew_s: int) -> str:
    """Store ``event`` unless it is a duplicate; returns STORED, DUPLICATE, REPLAY or CONFLICT.

    Runs in one ``BEGIN IMMEDIATE`` transaction, so two concurrent deliveries
    of the same event cannot both be stored.
    """
    now = time.time()
    key = delivery.idempotency_key
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM deliveries WHERE signed_at < ?", (int(now) - 2 * max_skew_s - 60,))
        seen = conn.execute(
            "SELECT idempotency_key, body_sha256 FROM deliveries WHERE signature = ?", (delivery.signature,)
        ).fetchone()
        if seen is not None:
            same = seen["idempotency_key"] == key and seen["body_sha256"] == delivery.body_sha256
            outcome = DUPLICATE if same else REPLAY
            conn.execute("COMMIT")
            return outcome

        existing = conn.execute(
            "SELECT content_sha256 FROM events WHERE idempotency_key = ?", (key,)
        ).fetchone()
        if existing is not None and existing["content_sha256"] != event.content_sha256():
            conn.execute("ROLLBACK")
            return CONFLICT
        conn.execute(
            "INSERT INTO deliveries (signature, signed_at, idempotency_key, body_sha256, received_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (delivery.signature, delivery.signed_at, key, delivery.body_sha256, now),
        )
        if existing is not None:
            conn.execute("COMMIT")
            return DUPLICATE
        _insert_event(conn, event, delivery, now)
        conn.execute("COMMIT")
        return STORED
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _insert_event(conn: sqlite3.Connection, event: Event, delivery: Delivery, now: float) -> None:
    mean = event.mean or {}
    conn.execute(
        """INSERT INTO events (idempotency_key, run_id, dag_id, ds, mode, scale, state,
               fetched, processed, quarantined, mean_psnr, mean_ssim, mean_psnr_bicubic, mean_ssim_bicubic,
               sent_at, signed_at, received_at, content_sha256, raw_json)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (
            delivery.idempotency_key,
            event.run_id,
            event.dag_id,
            event.ds,
            event.mode,
            event.scale,
            event.state,
            event.counts["fetched"],
            event.counts["processed"],
            event.counts["quarantined"],
            *(_real(mean.get(m)) for m in METRIC_FIELDS),
            event.sent_at,
            delivery.signed_at,
            now,
            event.content_sha256(),
            delivery.raw_json,
        ),
    )
    for position, image in enumerate(event.images):
        conn.execute(
            """INSERT INTO images (idempotency_key, position, image_id, author, original_key, bicubic_key,
                   sr_key, comparison_key, psnr, ssim, psnr_bicubic, ssim_bicubic)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                delivery.idempotency_key,
                position,
                image.image_id,
                image.author,
                image.original,
                image.bicubic,
                image.sr,
                image.comparison,
                *(_real(image.metrics.get(m)) for m in METRIC_FIELDS),
            ),
        )
        conn.executemany(
            "INSERT OR IGNORE INTO image_keys (storage_key) VALUES (?)", [(k,) for k in image.storage_keys()]
        )


def _real(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


# --- queries for the pages and the API -----------------------------------------------------------


_IMAGE_COLUMNS = "i.*, e.run_id, e.ds, e.state, e.mode, e.scale, e.received_at"


def recent_runs(conn: sqlite3.Connection, limit: int) -> list[sqlite3.Row]:
    """The newest report of each run, newest run date first."""
    return conn.execute(
        "SELECT * FROM latest_events ORDER BY ds DESC, received_at DESC LIMIT ?", (limit,)
    ).fetchall()


def latest_for_run(conn: sqlite3.Connection, run_id: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM latest_events WHERE run_id = ?", (run_id,)).fetchone()


def reports_for_run(conn: sqlite3.Connection, run_id: str) -> int:
    return conn.execute("SELECT COUNT(*) FROM events WHERE run_id = ?", (run_id,)).fetchone()[0]


def images_of(conn: sqlite3.Connection, idempotency_key: str) -> list[sqlite3.Row]:
    return conn.execute(
        f"SELECT {_IMAGE_COLUMNS} FROM images i JOIN events e USING (idempotency_key)"
        " WHERE i.idempotency_key = ? ORDER BY i.position",
        (idempotency_key,),
    ).fetchall()


def recent_images(conn: sqlite3.Connection, limit: int) -> list[sqlite3.Row]:
    """The last ``limit`` processed (super-resolved) images across runs, newest first."""
    return conn.execute(
        f"""SELECT {_IMAGE_COLUMNS}
           FROM images i JOIN latest_events e USING (idempotency_key)
           WHERE i.sr_key IS NOT NULL
           ORDER BY e.ds DESC, e.received_at DESC, i.position ASC
           LIMIT ?""",
        (limit,),
    ).fetchall()


def psnr_gain_trend(conn: sqlite3.Connection, limit: int) -> list[tuple[str, float]]:
    """(ds, mean PSNR of SR minus bicubic) for the latest ``limit`` dates that have both means."""
    rows = conn.execute(
        """SELECT ds, mean_psnr - mean_psnr_bicubic AS gain FROM latest_events e
           WHERE mean_psnr IS NOT NULL AND mean_psnr_bicubic IS NOT NULL
             AND NOT EXISTS (
                 SELECT 1 FROM latest_events n
                 WHERE n.ds = e.ds AND n.mean_psnr IS NOT NULL AND n.mean_psnr_bicubic IS NOT NULL
                   AND (n.received_at > e.received_at OR (n.received_at = e.received_at AND n.seq > e.seq)))
           ORDER BY ds DESC LIMIT ?""",
        (limit,),
    ).fetchall()
    points = [(r["ds"], r["gain"]) for r in rows if r["gain"] is not None and math.isfinite(r["gain"])]
    return sorted(points)


def is_known_key(conn: sqlite3.Connection, key: str) -> bool:
    """True when some stored event referenced ``key``: the /images whitelist."""
    return conn.execute("SELECT 1 FROM image_keys WHERE storage_key = ?", (key,)).fetchone() is not None


def count_events(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]


def event_document(row: sqlite3.Row) -> dict[str, Any]:
    """The stored raw JSON of an event row, parsed back."""
    return json.loads(row["raw_json"])
