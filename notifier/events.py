"""The callback's event schema: parse and validate the JSON the Airflow task sends.

Everything is checked before anything is stored, and a body that fails any
check is refused with one :class:`EventError` (a 400 with a one-line reason).

The body as a whole (whatever the field):

* at most ``MAX_DEPTH`` levels of arrays and objects, checked on the text
  before it is parsed (Python's parser recurses, so a deep body would raise
  RecursionError instead of failing cleanly): ``too_deep``;
* integers within the signed 64-bit range, checked while parsing (Python's
  parser raises ValueError past 4300 digits, and SQLite takes nothing wider
  than 64 bits): ``number_too_large``;
* strings and member names with no NUL and no lone surrogate (a ``\\udXXX``
  escape without its pair cannot be stored or shown as UTF-8), strings of at
  most ``MAX_MESSAGE`` characters, names of at most ``MAX_MEMBER``, arrays of
  at most ``MAX_ITEMS`` items.  The byte size is bounded before this by the
  app's ``MAX_CONTENT_LENGTH`` (413).

The fields, strictly typed.  Required: ``run_id``, ``ds`` (YYYY-MM-DD, ASCII
digits, a real date), ``state`` ("success" | "failed") and ``counts``
({fetched, processed, quarantined}, integers in 0..``MAX_COUNT``).  Everything
else may be null or absent, but when present it has the documented shape;
unknown extra fields are kept (forward compatible) but ignored, within the
bounds above.

* Ids (``run_id``, image ids, failed task ids): printable characters only
  (``str.isprintable``: no control, format, separator other than the space,
  surrogate or unassigned code points), no leading or trailing space.  Image
  ids may also be integers.  ``dag_id`` follows Airflow's rule ``[\\w.-]+``;
  ``idempotency_key`` the ``X-Idempotency-Key`` header's (printable ASCII);
  ``sent_at`` is an ISO 8601 time.
* Storage keys: relative '/'-separated paths of printable characters without
  '.', '..' or empty segments, because they become the whitelist of what
  ``/images/`` may serve.
* Metric values are numbers or null: PSNR in ``PSNR_RANGE`` dB or
  ``Infinity`` (an exact reconstruction), SSIM in ``SSIM_RANGE``; NaN is read
  as null.  Timings are finite seconds within ``±MAX_SECONDS``.
* ``source``: what the run asked of the photo source, or null/absent (events
  sent before it existed): ``{requested, available}``, each an integer in
  0..``MAX_COUNT`` or null.  ``requested`` is the photos asked for,
  ``available`` how many the source listed; when it lists fewer, ``counts.fetched``
  is all of them and the run page says so (:func:`source_shortfall`).
* ``metrics.images[].flags``: the evaluate stage's per-image gate
  (``superres.pipeline.evaluate.image_flags``, e.g. ``sr_below_bicubic``,
  ``near_constant_output``), an array of at most ``MAX_FLAGS`` ids of at most
  ``MAX_FLAG`` characters, or null.  A flagged image is left out of
  ``metrics.mean``; the pages show its flags (:func:`image_flags`).
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
SOURCE_FIELDS = ("requested", "available")
METRIC_FIELDS = ("psnr", "ssim", "psnr_bicubic", "ssim_bicubic")
KEY_FIELDS = ("original", "bicubic", "sr", "comparison")
TRANSPORT_FIELDS = ("sent_at",)  # differ between re-deliveries of the same event

MAX_DEPTH = 32  # the pipeline's events nest 4 levels; extras (e.g. full GE results) a few more
MAX_INT = 2**63 - 1
MAX_COUNT = 10**9
MAX_TEXT = 1000
MAX_MESSAGE = 100_000
MAX_NAME = 250
MAX_MEMBER = 256
MAX_KEY = 1024
MAX_ITEMS = 100_000
MAX_PROBLEMS = 20
MAX_SECONDS = 1e9
MAX_FLAGS = 16
MAX_FLAG = 64
PSNR_RANGE = (0.0, 1000.0)
SSIM_RANGE = (-1.0, 1.0)
_SSIM_BOUNDS = (SSIM_RANGE[0] - 1e-6, SSIM_RANGE[1] + 1e-6)  # float rounding of a perfect score

_DS_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DAG_ID_RE = re.compile(rf"[\w.-]{{1,{MAX_NAME}}}")
IDEMPOTENCY_RE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,198}[\x21-\x7e])?")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_UNSTORABLE_RE = re.compile("[\x00\ud800-\udfff]")
_SIMPLE_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_STRING_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET_RE = re.compile(r"[^\[\]{}]+")


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
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY or not key.isprintable():
        return False
    if key.startswith("/") or "\\" in key:
        return False
    return all(part not in ("", ".", "..") for part in key.split("/"))


def is_id(value: object, limit: int = MAX_NAME) -> bool:
    """An id as the pages and URLs carry it: printable, trimmed, 1 to ``limit`` characters."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= limit
        and value.isprintable()
        and value == value.strip()
    )


def _member(path: str, name: str) -> str:
    """``path.name`` for a plain member name, else the name JSON-escaped (one line, ASCII)."""
    if _SIMPLE_NAME_RE.fullmatch(name):
        return f"{path}.{name}" if path else name
    return f"{path}[{json.dumps(name[:64])}]"


class _Checker:
    """Collects problems instead of stopping at the first, so the sender sees them (up to a bound)."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.dropped = 0

    def fail(self, path: str, expected: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{path or '$'}: expected {expected}")
        else:
            self.dropped += 1

    def listed(self) -> list[str]:
        return self.problems + ([f"... and {self.dropped} more"] if self.dropped else [])

    # -- the whole document -------------------------------------------------------------------

    def document(self, value: Any, path: str = "") -> None:
        """Bounds every value, known field or not (depth is bounded before parsing)."""
        if isinstance(value, str):
            if len(value) > MAX_MESSAGE or _UNSTORABLE_RE.search(value):
                self.fail(path, f"a string of at most {MAX_MESSAGE} characters, "
                                "without NUL or lone surrogates")
        elif isinstance(value, dict):
            for name, item in value.items():
                if len(name) > MAX_MEMBER or _UNSTORABLE_RE.search(name):
                    self.fail(_member(path, name), f"a member name of at most {MAX_MEMBER} characters, "
                                                   "without NUL or lone surrogates")
                self.document(item, _member(path, name))
        elif isinstance(value, list):
            if len(value) > MAX_ITEMS:
                self.fail(path, f"an array of at most {MAX_ITEMS} items")
            for i, item in enumerate(value[:MAX_ITEMS]):
                self.document(item, f"{path}[{i}]")

    # -- field types --------------------------------------------------------------------------

    def text(self, value: Any, path: str, *, required: bool = False, limit: int = MAX_TEXT) -> str | None:
        if value is None and not required:
            return None
        if not isinstance(value, str) or (required and not value.strip()) or len(value) > limit:
            self.fail(path, f"{'a non-empty' if required else 'a'} string of at most {limit} characters")
            return None
        return value

    def name(self, value: Any, path: str, *, limit: int = MAX_NAME) -> str | None:
        if not is_id(value, limit):
            self.fail(path, f"an id of 1-{limit} printable characters without leading or trailing space")
            return None
        return value

    def ident(self, value: Any, path: str) -> str | None:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT:
            return str(value)
        return self.name(value, path, limit=200)

    def uri(self, value: Any, path: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > MAX_KEY or _CONTROL_RE.search(value):
            self.fail(path, f"a string of at most {MAX_KEY} characters without control characters, or null")
            return None
        return value

    def count(self, value: Any, path: str, *, nullable: bool = False) -> int | None:
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
            self.fail(path, f"an integer from 0 to {MAX_COUNT}" + (", or null" if nullable else ""))
            return None
        return value

    def number(self, value: Any, path: str, lo: float, hi: float, *, infinite: bool = False) -> float | None:
        """A number in [lo, hi] (or +Infinity when ``infinite``), NaN read as null."""
        if value is None:
            return None
        if not isinstance(value, bool) and isinstance(value, int | float):
            value = float(value)  # integers are within 64 bits here, so this cannot overflow
            if math.isnan(value):
                return None
            if lo <= value <= hi or (infinite and value == math.inf):
                return value
        self.fail(path, f"a number from {lo:g} to {hi:g}{' or Infinity' if infinite else ''}, or null")
        return None

    def key(self, value: Any, path: str, *, nullable: bool = True) -> str | None:
        if value is None and nullable:
            return None
        if not is_safe_key(value):
            self.fail(path, "a relative storage key of printable characters "
                            "without '.', '..' or empty segments")
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
        return value[:MAX_ITEMS]

    def flag(self, value: Any, path: str, *, nullable: bool = True) -> None:
        if not (isinstance(value, bool) or (value is None and nullable)):
            self.fail(path, "a boolean" + (" or null" if nullable else ""))

    def flags(self, value: Any, path: str) -> None:
        if value is not None and (not isinstance(value, list) or len(value) > MAX_FLAGS):
            self.fail(path, f"an array of at most {MAX_FLAGS} flags, or null")
            return
        for i, flag in enumerate(value or []):
            self.name(flag, f"{path}[{i}]", limit=MAX_FLAG)

    def metrics(self, value: Any, path: str) -> dict[str, float | None] | None:
        data = self.obj(value, path)
        if data is None:
            return None
        return {
            name: self.number(data.get(name), f"{path}.{name}", *_SSIM_BOUNDS)
            if name.startswith("ssim")
            else self.number(data.get(name), f"{path}.{name}", *PSNR_RANGE, infinite=True)
            for name in METRIC_FIELDS
        }


class _NumberTooLarge(Exception):
    pass


def _parse_int(text: str) -> int:
    # Checked on the digits before int() converts them: a 5000-digit literal is refused, not parsed.
    if len(text.lstrip("-")) > 19 or not -MAX_INT - 1 <= (value := int(text)) <= MAX_INT:
        raise _NumberTooLarge
    return value


def nesting_exceeds(text: str, limit: int = MAX_DEPTH) -> bool:
    """True when ``text`` opens more than ``limit`` arrays/objects at once, strings not counted.

    For valid JSON the string pattern matches exactly the string tokens; for
    broken JSON it may miscount past the point where the parser fails anyway.
    """
    depth = 0
    for bracket in _NOT_BRACKET_RE.sub("", _STRING_RE.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _parse_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise EventError("malformed_json", "body is not valid UTF-8") from None
    too_deep = EventError("too_deep", f"the body nests arrays and objects more than {MAX_DEPTH} levels deep")
    if nesting_exceeds(text):
        raise too_deep
    try:
        return json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise EventError(
            "malformed_json", f"body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except _NumberTooLarge:
        raise EventError(
            "number_too_large", "the body has an integer outside the signed 64-bit range"
        ) from None
    except RecursionError:  # not reachable past nesting_exceeds; kept so it can never be a 500
        raise too_deep from None


def parse_event(body: bytes) -> Event:
    """Parse and validate a callback body, or raise :class:`EventError`."""
    data = _parse_json(body)
    if not isinstance(data, dict):
        raise EventError("invalid_event", "the event must be a JSON object", ["$: expected an object"])
    c = _Checker()
    c.document(data)

    run_id = c.name(data.get("run_id"), "run_id")
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

    source = c.obj(data.get("source"), "source")
    for name in SOURCE_FIELDS:
        if source is not None:
            c.count(source.get(name), f"source.{name}", nullable=True)

    key = data.get("idempotency_key")
    if key is not None and not (isinstance(key, str) and IDEMPOTENCY_RE.fullmatch(key)):
        c.fail("idempotency_key",
               "1-200 printable ASCII characters, as in the X-Idempotency-Key header, or null")
    dag_id = data.get("dag_id")
    if dag_id is not None and not (isinstance(dag_id, str) and _DAG_ID_RE.fullmatch(dag_id)):
        c.fail("dag_id", f"an Airflow DAG id (1-{MAX_NAME} letters, digits, '_', '.' or '-') or null")
        dag_id = None
    mode = data.get("mode")
    if mode is not None and mode not in MODES:
        c.fail("mode", " or ".join(repr(m) for m in MODES) + " or null")
        mode = None
    scale = data.get("scale")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= 16):
        c.fail("scale", "an integer between 1 and 16 or null")
        scale = None
    sent_at = data.get("sent_at")
    if sent_at is not None and not _is_time(sent_at):
        c.fail("sent_at", "an ISO 8601 time of at most 64 characters, or null")
        sent_at = None
    for i, task in enumerate(c.array(data.get("failed_tasks"), "failed_tasks")):
        c.name(task, f"failed_tasks[{i}]")

    metrics = c.obj(data.get("metrics"), "metrics") or {}
    mean = c.metrics(metrics.get("mean"), "metrics.mean")
    per_image: dict[str, dict[str, float | None]] = {}
    for i, item in enumerate(c.array(metrics.get("images"), "metrics.images")):
        path = f"metrics.images[{i}]"
        if (entry := c.obj(item, path, nullable=False)) is not None:
            image_id = c.ident(entry.get("image_id"), f"{path}.image_id")
            values = c.metrics(entry, path)
            c.flags(entry.get("flags"), f"{path}.flags")
            if image_id is not None and values is not None:
                per_image[image_id] = values

    images = []
    for i, item in enumerate(c.array(data.get("images"), "images")):
        path = f"images[{i}]"
        if (entry := c.obj(item, path, nullable=False)) is None:
            continue
        image_id = c.ident(entry.get("image_id"), f"{path}.image_id")
        author = c.text(entry.get("author"), f"{path}.author")
        keys = {name: c.key(entry.get(name), f"{path}.{name}") for name in KEY_FIELDS}
        if image_id is not None:
            images.append(ImageRecord(image_id, author, metrics=per_image.get(image_id, {}), **keys))

    outputs = c.obj(data.get("outputs"), "outputs") or {}
    for name, value in outputs.items():
        c.name(name, _member("outputs", name), limit=MAX_MEMBER)
        c.uri(value, _member("outputs", name))
    quality = c.obj(data.get("quality"), "quality")
    if quality is not None:
        c.flag(quality.get("success"), "quality.success", nullable=False)
        for i, item in enumerate(c.array(quality.get("suites"), "quality.suites")):
            if (suite := c.obj(item, f"quality.suites[{i}]", nullable=False)) is not None:
                c.text(suite.get("name"), f"quality.suites[{i}].name", limit=MAX_NAME)
                c.flag(suite.get("success"), f"quality.suites[{i}].success")
    for i, item in enumerate(c.array(data.get("quarantine"), "quarantine")):
        if (entry := c.obj(item, f"quarantine[{i}]", nullable=False)) is not None:
            c.ident(entry.get("image_id"), f"quarantine[{i}].image_id")
            c.text(entry.get("reason"), f"quarantine[{i}].reason", limit=MAX_NAME)
            c.text(entry.get("message"), f"quarantine[{i}].message", limit=MAX_MESSAGE)
    timings = c.obj(data.get("timings"), "timings") or {}
    for name, value in timings.items():
        c.name(name, _member("timings", name), limit=MAX_MEMBER)
        c.number(value, _member("timings", name), -MAX_SECONDS, MAX_SECONDS)

    if c.problems:
        raise EventError("invalid_event", "the event does not match the callback schema", c.listed())
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


def _is_time(value: Any) -> bool:
    if not (isinstance(value, str) and 0 < len(value) <= 64 and value.isascii() and value.isprintable()):
        return False
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _plain_count(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT
    return value if ok else None


def source_shortfall(document: Any) -> dict[str, int] | None:
    """``{fetched, requested, available}`` when the source listed fewer photos than requested.

    From a stored event document; None for a run that got what it asked for, or an
    event that does not say (sent before ``source`` existed).
    """
    source = document.get("source") if isinstance(document, dict) else None
    counts = document.get("counts") if isinstance(document, dict) else None
    if not isinstance(source, dict) or not isinstance(counts, dict):
        return None
    requested, available = _plain_count(source.get("requested")), _plain_count(source.get("available"))
    fetched = _plain_count(counts.get("fetched"))
    if requested is None or available is None or fetched is None or available >= requested:
        return None
    return {"fetched": fetched, "requested": requested, "available": available}


def image_flags(document: Any) -> dict[str, tuple[str, ...]]:
    """image_id -> the per-image gate's flags, from a stored event document (flagged images only).

    The document was validated when it arrived; this still takes only what has the
    documented shape, so an event stored before flags existed simply has none.
    """
    metrics = document.get("metrics") if isinstance(document, dict) else None
    entries = metrics.get("images") if isinstance(metrics, dict) else None
    out: dict[str, tuple[str, ...]] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("flags"), list):
            continue
        image_id = entry.get("image_id")
        if isinstance(image_id, int) and not isinstance(image_id, bool):
            image_id = str(image_id)
        flags = tuple(f for f in entry["flags"][:MAX_FLAGS] if is_id(f, MAX_FLAG))
        if isinstance(image_id, str) and flags:
            out[image_id] = flags
    return out
