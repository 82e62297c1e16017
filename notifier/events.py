"""The callback's event schema: parse and validate the JSON the Airflow task sends.

Required (strictly typed): ``run_id`` (non-empty string), ``ds`` (YYYY-MM-DD),
``state`` ("success" | "failed") and ``counts`` ({fetched, processed,
quarantined} as non-negative integers).  Everything else is optional and may be
null or absent, but when present it must have the documented shape; unknown
extra fields are kept (forward compatible) but ignored.

Metric values are numbers or null; ``Infinity`` is accepted because PSNR of an
exact reconstruction is infinite, and NaN is read as null.  Storage keys must be
relative '/'-separated paths without '.', '..' or empty segments, because they
become the whitelist of what ``/images/`` may serve.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from superres.config import MODES

STATES = ("success", "failed")
COUNT_FIELDS = ("fetched", "processed", "quarantined")
METRIC_FIELDS = ("psnr", "ssim", "psnr_bicubic", "ssim_bicubic")
KEY_FIELDS = ("original", "bicubic", "sr", "comparison")
TRANSPORT_FIELDS = ("sent_at",)  # differ between re-deliveries of the same event

MAX_TEXT = 1000
MAX_KEY = 1024
_DS_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class EventError(ValueError):
    """An event the notifier refuses; ``problems`` lists each offending field."""

    def __init__(self, code: str, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.problems = problems or []


@dataclass(frozen=True)
class ImageRecord:
    """One processed image: its storage keys and, in evaluate mode, its metrics."""

    image_id: str
    author: str | None
    original: str | None
    bicubic: str | None
    sr: str | None
    comparison: str | None
    metrics: dict[str, float | None] = field(default_factory=dict)

    def storage_keys(self) -> list[str]:
        return [k for k in (self.original, self.bicubic, self.sr, self.comparison) if k]


@dataclass(frozen=True)
class Event:
    """A validated callback; ``data`` is the whole parsed document."""

    run_id: str
    ds: str
    state: str
    counts: dict[str, int]
    dag_id: str | None
    mode: str | None
    scale: int | None
    mean: dict[str, float | None] | None
    images: tuple[ImageRecord, ...]
    sent_at: str | None
    data: dict[str, Any]

    def content_sha256(self) -> str:
        """Digest of the event minus transport fields: equal for re-deliveries of one event."""
        content = {k: v for k, v in self.data.items() if k not in TRANSPORT_FIELDS}
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def is_safe_key(key: object) -> bool:
    """A relative storage key that cannot climb out of the storage root."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY:
        return False
    if key.startswith("/") or "\\" in key or _CONTROL_RE.search(key):
        return False
    return all(part not in ("", ".", "..") for part in key.split("/"))


class _Checker:
    """Collects every problem instead of stopping at the first, so the sender sees them all."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, expected: str) -> None:
        self.problems.append(f"{path}: expected {expected}")

    def text(self, value: Any, path: str, *, required: bool = False, limit: int = MAX_TEXT) -> str | None:
        if value is None and not required:
            return None
        if not isinstance(value, str) or (required and not value.strip()) or len(value) > limit:
            self.fail(path, f"{'a non-empty' if required else 'a'} string of at most {limit} characters")
            return None
        return value

    def ident(self, value: Any, path: str) -> str | None:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return self.text(value, path, required=True, limit=200)

    def count(self, value: Any, path: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(path, "a non-negative integer")
            return None
        return value

    def number(self, value: Any, path: str) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(path, "a number or null")
            return None
        value = float(value)
        return None if math.isnan(value) else value

    def key(self, value: Any, path: str, *, nullable: bool = True) -> str | None:
        if value is None and nullable:
            return None
        if not is_safe_key(value):
            self.fail(path, "a relative storage key without '.', '..' or empty segments")
            return None
        return value

    def obj(self, value: Any, path: str, *, nullable: bool = True) -> dict[str, Any] | None:
        if value is None and nullable:
            return None
        if not isinstance(value, dict):
            self.fail(path, "an object" + (" or null" if nullable else ""))
            return None
        return value

    def array(self, value: Any, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, "an array or null")
            return []
        return value

    def metrics(self, value: Any, path: str) -> dict[str, float | None] | None:
        data = self.obj(value, path)
        if data is None:
            return None
        return {name: self.number(data.get(name), f"{path}.{name}") for name in METRIC_FIELDS}


def _parse_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise EventError("malformed_json", "body is not valid UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise EventError(
            "malformed_json", f"body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None


def parse_event(body: bytes) -> Event:
    """Parse and validate a callback body, or raise :class:`EventError`."""
    data = _parse_json(body)
    if not isinstance(data, dict):
        raise EventError("invalid_event", "the event must be a JSON object", ["$: expected an object"])
    c = _Checker()

    run_id = c.text(data.get("run_id"), "run_id", required=True, limit=250)
    ds = data.get("ds")
    if not (isinstance(ds, str) and _DS_RE.fullmatch(ds) and _is_date(ds)):
        c.fail("ds", "a date as YYYY-MM-DD")
    state = data.get("state")
    if state not in STATES:
        c.fail("state", " or ".join(repr(s) for s in STATES))
    counts: dict[str, int] = {}
    raw_counts = c.obj(data.get("counts"), "counts", nullable=False)
    if raw_counts is not None:
        for name in COUNT_FIELDS:
            value = c.count(raw_counts.get(name), f"counts.{name}")
            if value is not None:
                counts[name] = value

    dag_id = c.text(data.get("dag_id"), "dag_id", limit=250)
    mode = data.get("mode")
    if mode is not None and mode not in MODES:
        c.fail("mode", " or ".join(repr(m) for m in MODES) + " or null")
        mode = None
    scale = data.get("scale")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= 16):
        c.fail("scale", "an integer between 1 and 16 or null")
        scale = None
    sent_at = c.text(data.get("sent_at"), "sent_at", limit=64)
    for i, task in enumerate(c.array(data.get("failed_tasks"), "failed_tasks")):
        c.text(task, f"failed_tasks[{i}]", required=True, limit=250)

    metrics = c.obj(data.get("metrics"), "metrics") or {}
    mean = c.metrics(metrics.get("mean"), "metrics.mean")
    per_image: dict[str, dict[str, float | None]] = {}
    for i, item in enumerate(c.array(metrics.get("images"), "metrics.images")):
        path = f"metrics.images[{i}]"
        if (entry := c.obj(item, path, nullable=False)) is not None:
            image_id = c.ident(entry.get("image_id"), f"{path}.image_id")
            values = c.metrics(entry, path)
            if image_id is not None and values is not None:
                per_image[image_id] = values

    images = []
    for i, item in enumerate(c.array(data.get("images"), "images")):
        path = f"images[{i}]"
        if (entry := c.obj(item, path, nullable=False)) is None:
            continue
        image_id = c.ident(entry.get("image_id"), f"{path}.image_id")
        author = c.text(entry.get("author"), f"{path}.author", limit=250)
        keys = {name: c.key(entry.get(name), f"{path}.{name}") for name in KEY_FIELDS}
        if image_id is not None:
            images.append(ImageRecord(image_id, author, metrics=per_image.get(image_id, {}), **keys))

    outputs = c.obj(data.get("outputs"), "outputs") or {}
    for name, value in outputs.items():
        c.text(value, f"outputs.{name}", limit=MAX_KEY)
    quality = c.obj(data.get("quality"), "quality")
    if quality is not None:
        if not isinstance(quality.get("success"), bool):
            c.fail("quality.success", "a boolean")
        c.array(quality.get("suites"), "quality.suites")
    for i, item in enumerate(c.array(data.get("quarantine"), "quarantine")):
        if (entry := c.obj(item, f"quarantine[{i}]", nullable=False)) is not None:
            c.ident(entry.get("image_id"), f"quarantine[{i}].image_id")
            c.text(entry.get("reason"), f"quarantine[{i}].reason", limit=250)
            c.text(entry.get("message"), f"quarantine[{i}].message")
    timings = c.obj(data.get("timings"), "timings") or {}
    for name, value in timings.items():
        c.number(value, f"timings.{name}")

    if c.problems:
        raise EventError(
            "invalid_event", "the event is missing required fields or has wrong types", c.problems
        )
    assert run_id is not None and isinstance(ds, str) and isinstance(state, str)
    return Event(
        run_id=run_id,
        ds=ds,
        state=state,
        counts=counts,
        dag_id=dag_id,
        mode=mode,
        scale=scale,
        mean=mean,
        images=tuple(images),
        sent_at=sent_at,
        data=data,
    )


def _is_date(ds: str) -> bool:
    try:
        dt.date.fromisoformat(ds)
    except ValueError:
        return False
    return True
