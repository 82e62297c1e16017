"""Fetch the run date's photos from a Picsum-compatible source into the raw partition.

The choice of photos is a pure function of the date (same ``ds``, same ids,
whatever the run or machine), so reruns and backfills reproduce a day exactly.
Every body is validated with :func:`superres.images.decode` *before* it is
stored: good photos land in ``raw/ds=…/<image_id>.<ext>``; anything else goes
to ``quarantine/ds=…/<image_id>.bin`` with a record saying why.  Nothing is
dropped silently: ``fetched == len(images) + len(quarantined)``.

A source may list fewer photos than the run asks for (the offline source has
9): then every listed photo is fetched, and the manifest says so.  It records
``requested`` (``num_images``), ``available`` (how many the source lists),
``fetched`` (how many were taken: the smaller of the two) and ``shortfall``, a
sentence when the source is short and null otherwise (:func:`source_counts`).

Network hygiene: connect/read timeouts, a deadline for the whole body (a
server trickling bytes just inside the read timeout cannot hold a worker
forever), bounded retries with exponential backoff (``Retry-After`` honoured,
capped), a concurrency limit, a body-size cap, and redirects followed only to
the source's own host or an allow-listed CDN host
(``Settings.picsum_allowed_hosts``).

What counts as usable depends on the run: :func:`min_side` is the smallest
photo the configured mode and scale can process end to end, so nothing that
would fail in Spark is let through to it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import hashlib
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import requests
import urllib3

from superres import __version__, images
from superres.config import Settings
from superres.pipeline import layout
from superres.storage import Storage

log = logging.getLogger(__name__)

LIST_PAGE_LIMIT = 100  # photos per /v2/list page (Picsum's maximum)
MAX_LIST_PAGES = 50  # bound on listing: 5,000 photos is far more than Picsum has
MAX_REDIRECTS = 5
MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 60.0  # a server asking for longer than this gets this
MAX_BODY_BYTES = 64 * 1024 * 1024
SSIM_WINDOW = 11  # superres.metrics.ssim's Gaussian window: evaluate mode needs room for one
BODY_DEADLINE_FACTOR = 6  # a body must be complete within this many read timeouts
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif", "PPM": "ppm"}
USER_AGENT = f"superres-pipeline/{__version__} (+fetch)"


class FetchError(RuntimeError):
    """The fetch as a whole failed; ``manifest`` is set when one was written first."""

    def __init__(self, message: str, manifest: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.manifest = manifest


class RequestFailed(Exception):
    """One request failed for good; ``reason`` is a stable code for quarantine records."""

    def __init__(self, reason: str, message: str, body: bytes = b"", retryable: bool = False,
                 retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.body = body
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status  # the HTTP status, when a response (or part of one) arrived


@dataclass(frozen=True)
class Listed:
    """One photo as the source lists it."""

    picsum_id: str
    author: str
    width: int
    height: int
    page_url: str


@dataclass
class Reply:
    status: int
    headers: requests.structures.CaseInsensitiveDict
    body: bytes
    url: str  # after redirects


# --------------------------------------------------------------------------- pure helpers


def validate_ds(ds: str) -> str:
    """``YYYY-MM-DD`` or ValueError: ``ds`` becomes part of storage keys."""
    return layout.check_ds(ds)


def redact_url(url: str) -> str:
    """The URL without any ``user:password@`` part, for manifests and messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def parse_allowed_hosts(raw: str) -> frozenset[str]:
    return frozenset(h.strip().lower().rstrip(".") for h in raw.split(",") if h.strip())


def host_allowed(url: str, base_url: str, allowed: frozenset[str]) -> bool:
    """May a request (or redirect) go to ``url``?  The base's host or an allow-listed one.

    ``*.example.com`` in the allow-list matches sub-domains.  A redirect may not
    downgrade an https source to http.
    """
    target, base = urlsplit(url), urlsplit(base_url)
    if target.scheme not in ("http", "https") or not target.hostname:
        return False
    if base.scheme == "https" and target.scheme != "https":
        return False
    host = target.hostname.lower().rstrip(".")
    if host == (base.hostname or "").lower() and target.port == base.port:
        return True
    for pattern in allowed:
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
        if host == pattern:
            return True
    return False


def redirect_target(url: str, location: str, status: int) -> str:
    """The absolute URL a redirect from ``url`` points to; ``bad_redirect`` if it is not one.

    A malformed Location (a non-numeric port, an unclosed IPv6 bracket) makes the
    standard library raise ``ValueError``, which would otherwise escape the fetch loop.
    """
    try:
        target = urljoin(url, location)
        urlsplit(target).port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        raise RequestFailed("bad_redirect", f"a redirect (HTTP {status}) from {redact_url(url)} is to an "
                            f"invalid URL: {exc}", status=status) from exc
    return target


def id_sort_key(picsum_id: str) -> tuple[int, int, str]:
    """Numeric ids numerically (2 before 10), then any others as text."""
    return (0, int(picsum_id), "") if picsum_id.isdigit() else (1, 0, picsum_id)


def date_seed(ds: str) -> int:
    return int.from_bytes(hashlib.sha256(ds.encode("utf-8")).digest()[:8], "big")


def select(photos: list[Listed], ds: str, n: int) -> list[Listed]:
    """The date's photos: ``n`` (or all, if fewer) drawn by a RNG seeded from sha256(ds)."""
    ordered = sorted(photos, key=lambda p: id_sort_key(p.picsum_id))
    chosen = random.Random(date_seed(ds)).sample(ordered, min(n, len(ordered)))
    return sorted(chosen, key=lambda p: id_sort_key(p.picsum_id))


def shortfall(requested: int, available: int | None) -> str | None:
    """A sentence saying the source lists fewer photos than requested; None when it does not."""
    if available is None or available >= requested:
        return None
    return (f"{available} of {requested} requested: the source has only {available} "
            f"photo{'s' if available != 1 else ''}")


def source_counts(manifest: dict[str, Any]) -> dict[str, Any]:
    """``requested``/``available``/``fetched``/``shortfall`` of a manifest, whatever its age.

    Manifests written before ``fetched`` existed called the photos taken ``requested``
    and the photos asked for ``wanted``; those are read in that sense.
    """
    if "fetched" in manifest:
        fetched, requested = int(manifest["fetched"]), int(manifest["requested"])
    else:
        taken = len(manifest.get("images", [])) + len(manifest.get("quarantined", []))
        fetched = int(manifest.get("requested", taken))
        requested = int(manifest.get("wanted", fetched))
    available = manifest.get("available")
    available = int(available) if isinstance(available, int) and not isinstance(available, bool) else None
    return {"requested": requested, "available": available, "fetched": fetched,
            "shortfall": shortfall(requested, available)}


def parse_listing(payload: Any, where: str) -> list[Listed]:
    """Validate one /v2/list page; anything unexpected is a clear FetchError."""
    if not isinstance(payload, list):
        raise FetchError(f"malformed /v2/list response from {where}: expected a JSON list, "
                         f"got {type(payload).__name__}")
    out = []
    for i, item in enumerate(payload):
        if not isinstance(item, dict):
            raise FetchError(f"malformed /v2/list response from {where}: item {i} is not an object")
        pid = item.get("id")
        if isinstance(pid, int) and not isinstance(pid, bool):
            pid = str(pid)
        if not isinstance(pid, str) or not _ID_RE.match(pid):
            raise FetchError(f"malformed /v2/list response from {where}: item {i} has invalid id {pid!r}")
        width, height, author = item.get("width"), item.get("height"), item.get("author")
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise FetchError(f"malformed /v2/list response from {where}: "
                                 f"item {i} (id {pid}) has invalid {name} {value!r}")
        if not isinstance(author, str):
            raise FetchError(f"malformed /v2/list response from {where}: item {i} (id {pid}) has no author")
        page_url = item.get("url")
        out.append(Listed(pid, author, width, height, page_url if isinstance(page_url, str) else ""))
    return out


def min_side(mode: str, scale: int) -> int:
    """The smallest side (px) a photo may have to be processable in ``mode`` at ``scale``.

    ``upscale`` runs any decodable image (a 1x1 photo becomes scale x scale).
    ``evaluate`` crops the photo to a multiple of ``scale``, and PSNR/SSIM shave
    ``scale`` pixels off every border of that: an SSIM window must still fit, or
    the Spark evaluate stage would fail on the photo.
    """
    if mode == "upscale":
        return 1
    need = SSIM_WINDOW + 2 * scale
    return -(-need // scale) * scale


def backoff_delay(attempt: int, base_s: float, retry_after: float | None, rng: random.Random) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): Retry-After if given, else jittered 2^n."""
    if retry_after is not None:
        return max(0.0, min(retry_after, MAX_RETRY_AFTER_S))
    delay = min(MAX_BACKOFF_S, base_s * (2 ** attempt))
    return delay * rng.uniform(0.5, 1.0)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP-date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# --------------------------------------------------------------------------- HTTP


class Client:
    """HTTP GETs with timeouts, bounded retries, a body cap and a redirect allow-list.

    One ``requests.Session`` per worker thread (sessions are not thread-safe).
    """

    def __init__(self, settings: Settings, sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = settings.picsum_url.rstrip("/")
        if urlsplit(self.base_url).scheme not in ("http", "https") or not urlsplit(self.base_url).hostname:
            raise ValueError(f"picsum_url must be an http(s) URL, got {redact_url(self.base_url)!r}")
        self.timeout = (settings.fetch_timeout_s, settings.fetch_timeout_s)
        self.body_deadline_s = settings.fetch_timeout_s * BODY_DEADLINE_FACTOR
        self.retries = max(0, settings.fetch_retries)
        self.backoff_s = max(0.0, settings.fetch_backoff_s)
        self.allowed = parse_allowed_hosts(settings.picsum_allowed_hosts)
        self.sleep = sleep
        self._rng = random.Random()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def get(self, url: str) -> Reply:
        """GET with retries; raises RequestFailed with a reason code when it finally fails."""
        attempt = 0
        while True:
            try:
                return self._get_once(url)
            except RequestFailed as exc:
                if not exc.retryable or attempt >= self.retries:
                    if exc.retryable and self.retries:
                        exc.args = (f"{exc} (gave up after {attempt + 1} attempts)",)
                    raise
                delay = backoff_delay(attempt, self.backoff_s, exc.retry_after, self._rng)
                log.info("retrying %s in %.1fs after %s (attempt %d of %d)", redact_url(url), delay,
                         exc.reason, attempt + 1, self.retries + 1)
                self.sleep(delay)
                attempt += 1

    def _get_once(self, url: str) -> Reply:
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            if not host_allowed(current, self.base_url, self.allowed):
                raise RequestFailed("redirect_refused",
                                    f"refusing to fetch {redact_url(current)}: host is neither the source "
                                    f"({urlsplit(self.base_url).hostname}) nor in picsum_allowed_hosts")
            try:
                resp = self._session().get(current, timeout=self.timeout, allow_redirects=False, stream=True)
            except requests.exceptions.Timeout as exc:
                raise RequestFailed("timeout", f"timed out: {redact_url(current)}: {exc}",
                                    retryable=True) from exc
            except requests.exceptions.RequestException as exc:
                raise RequestFailed("connection_error", f"cannot connect to {redact_url(current)}: {exc}",
                                    retryable=True) from exc
            except ValueError as exc:  # requests parses a redirect's Location even when not following it
                raise RequestFailed("bad_redirect", f"a redirect from {redact_url(current)} is to an "
                                    f"invalid URL: {exc}") from exc
            with resp:
                if resp.is_redirect:
                    current = redirect_target(current, resp.headers["Location"], resp.status_code)
                    continue
                body = self._read_body(resp, current)
                if resp.status_code != 200:
                    raise RequestFailed(
                        f"http_{resp.status_code}", f"HTTP {resp.status_code} from {redact_url(current)}",
                        body=body, retryable=resp.status_code in RETRY_STATUSES,
                        retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                        status=resp.status_code,
                    )
                return Reply(resp.status_code, resp.headers, body, current)
        raise RequestFailed("too_many_redirects",
                            f"more than {MAX_REDIRECTS} redirects from {redact_url(url)}")

    def _read_body(self, resp: requests.Response, url: str) -> bytes:
        status = resp.status_code
        declared = resp.headers.get("Content-Length")
        expected = int(declared) if declared and declared.isdigit() else None
        if expected is not None and expected > MAX_BODY_BYTES:
            raise RequestFailed("too_large", f"{redact_url(url)} declares {expected} bytes "
                                f"(limit {MAX_BODY_BYTES})", status=status)
        # The read timeout bounds each wait for bytes, not the body: a server sending a byte
        # just inside it would never time out.  At the deadline the socket's read side is
        # shut down (urllib3's HTTPResponse.shutdown), which ends the blocked read at once.
        expired = threading.Event()

        def stop_reading() -> None:
            expired.set()
            with contextlib.suppress(Exception):  # already finished or released: nothing to stop
                resp.raw.shutdown()

        def too_slow(body: bytes) -> RequestFailed:
            return RequestFailed("timeout", f"{redact_url(url)}: the body was not complete within "
                                 f"{self.body_deadline_s:g} s (got {len(body)} bytes)",
                                 body=body, retryable=True, status=status)

        watchdog = threading.Timer(self.body_deadline_s, stop_reading)
        watchdog.daemon = True
        watchdog.start()
        chunks, size = [], 0
        try:
            for chunk in resp.iter_content(chunk_size=65536):
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise RequestFailed("too_large",
                                        f"{redact_url(url)} sent more than {MAX_BODY_BYTES} bytes",
                                        status=status)
                chunks.append(chunk)
        except requests.exceptions.RequestException as exc:
            body = b"".join(chunks)
            if expired.is_set():
                raise too_slow(body) from exc
            cause = exc.args[0] if exc.args else None
            if isinstance(cause, urllib3.exceptions.ReadTimeoutError):
                raise RequestFailed("timeout", f"{redact_url(url)}: timed out reading the body: {exc}",
                                    body=body, retryable=True, status=status) from exc
            if isinstance(exc, requests.exceptions.ChunkedEncodingError):
                raise RequestFailed("truncated", f"{redact_url(url)}: body ended early: {exc}",
                                    body=body, retryable=True, status=status) from exc
            raise RequestFailed("connection_error", f"{redact_url(url)}: reading the body failed: {exc}",
                                body=body, retryable=True, status=status) from exc
        finally:
            watchdog.cancel()
        body = b"".join(chunks)
        if expired.is_set():
            raise too_slow(body)
        if expected is not None and not resp.headers.get("Content-Encoding") and len(body) < expected:
            raise RequestFailed("truncated", f"{redact_url(url)}: got {len(body)} of {expected} bytes",
                                body=body, retryable=True, status=status)
        return body


@contextmanager
def client(settings: Settings, sleep: Callable[[float], None] = time.sleep) -> Iterator[Client]:
    c = Client(settings, sleep)
    try:
        yield c
    finally:
        c.close()


# --------------------------------------------------------------------------- listing and download


def list_photos(http: Client, max_pages: int = MAX_LIST_PAGES, limit: int = LIST_PAGE_LIMIT) -> list[Listed]:
    """Every photo the source lists, by id; stops at an empty/short page or ``max_pages``."""
    seen: dict[str, Listed] = {}
    for page in range(1, max_pages + 1):
        url = f"{http.base_url}/v2/list?page={page}&limit={limit}"
        try:
            reply = http.get(url)
        except RequestFailed as exc:
            raise FetchError(f"cannot list photos at {redact_url(url)}: {exc.reason}: {exc}") from exc
        try:
            payload = json.loads(reply.body)
        except ValueError as exc:
            raise FetchError(f"malformed /v2/list response from {redact_url(url)}: not JSON "
                             f"({reply.headers.get('Content-Type', 'no content-type')})") from exc
        items = parse_listing(payload, redact_url(url))
        new = [item for item in items if item.picsum_id not in seen]
        seen.update((item.picsum_id, item) for item in new)
        if not new or len(items) < limit:  # last page (or a server ignoring ?page)
            break
    else:
        log.warning("photo listing stopped at %d pages (%d photos)", max_pages, len(seen))
    if not seen:
        raise FetchError(f"the source {redact_url(http.base_url)} lists no photos")
    return sorted(seen.values(), key=lambda p: id_sort_key(p.picsum_id))


@dataclass
class Outcome:
    """One selected photo: either an image record (with body) or a quarantine record."""

    image: dict[str, Any] | None = None
    quarantine: dict[str, Any] | None = None
    body: bytes = field(default=b"", repr=False)


def _quarantine(photo: Listed, url: str, reason: str, message: str, body: bytes,
                status: int | None = None) -> Outcome:
    record = {
        "image_id": photo.picsum_id,
        "picsum_id": photo.picsum_id,
        "author": photo.author,
        "source": redact_url(url),
        "reason": reason,
        "message": message,
        "http_status": status,
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    log.warning("quarantined photo %s: %s: %s", photo.picsum_id, reason, message)
    return Outcome(quarantine=record, body=body)


def check_body(photo: Listed, reply: Reply, settings: Settings) -> images.Decoded:
    """Decode and sanity-check one response body; ImageError says why it is unusable.

    Everything the later (Spark) stages would reject is rejected here, so no
    Spark work is spent on it: undecodable or odd bodies, a missing or non-image
    Content-Type, the wrong photo, and photos too small for the run's mode.
    It is also where the work is bounded: over ``max_pixels`` or thinner than
    ``max_aspect_ratio`` (the Spark stages decode what it admitted without that check).
    """
    ctype = (reply.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    try:
        dec = images.decode(reply.body, max_pixels=settings.max_pixels,
                            max_aspect_ratio=settings.max_aspect_ratio)
    except images.ImageError as exc:
        raise images.ImageError(exc.reason, f"{exc} (Content-Type {ctype or 'missing'})") from exc
    if not ctype:
        raise images.ImageError("missing_content_type", f"{dec.format} body without a Content-Type")
    if not ctype.startswith("image/"):
        raise images.ImageError("bad_content_type", f"{dec.format} body served as {ctype!r}")
    smallest = min_side(settings.mode, settings.scale)
    if min(dec.width, dec.height) < smallest:
        raise images.ImageError("too_small", f"{dec.width}x{dec.height} is smaller than {smallest} px a "
                                f"side, the least {settings.mode} mode can use at x{settings.scale}")
    served = reply.headers.get("Picsum-ID")
    if served is not None and served.strip() != photo.picsum_id:
        raise images.ImageError("wrong_photo", f"asked for photo {photo.picsum_id}, got Picsum-ID {served!r}")
    return dec


def fetch_one(http: Client, settings: Settings, ds: str, photo: Listed) -> Outcome:
    """Download and validate one photo; never raises for a bad photo (it is quarantined)."""
    size = f"{settings.image_width}/{settings.image_height}"
    url = f"{http.base_url}/id/{quote(photo.picsum_id, safe='')}/{size}"
    try:
        reply = http.get(url)
    except RequestFailed as exc:
        return _quarantine(photo, url, exc.reason, str(exc), exc.body, exc.status)
    except Exception as exc:  # a client bug on a hostile response: keep the evidence, fetch the rest
        log.exception("unexpected error fetching photo %s", photo.picsum_id)
        return _quarantine(photo, url, "fetch_error", f"{type(exc).__name__}: {exc}", b"")
    try:
        dec = check_body(photo, reply, settings)
    except images.ImageError as exc:
        return _quarantine(photo, reply.url, exc.reason, str(exc), reply.body, reply.status)
    except Exception as exc:  # a decoder bug on hostile bytes: keep the evidence, fetch the rest
        log.exception("unexpected error decoding photo %s", photo.picsum_id)
        return _quarantine(photo, reply.url, "decode_error", f"{type(exc).__name__}: {exc}",
                           reply.body, reply.status)
    ext = _EXT.get(dec.format, "img")
    record = {
        "image_id": photo.picsum_id,
        "picsum_id": photo.picsum_id,
        "author": photo.author,
        "page_url": photo.page_url,
        "source_url": redact_url(url),
        "sha256": hashlib.sha256(reply.body).hexdigest(),
        "bytes": len(reply.body),
        "width": dec.width,
        "height": dec.height,
        "format": dec.format,
        "mode": dec.source_mode,
        "key": f"{raw_prefix(ds)}{photo.picsum_id}.{ext}",
    }
    return Outcome(image=record, body=reply.body)


# --------------------------------------------------------------------------- the task


def raw_prefix(ds: str) -> str:
    return layout.raw_prefix(ds) + "/"


def quarantine_prefix(ds: str) -> str:
    return layout.quarantine_prefix(ds) + "/"


def report_key(ds: str) -> str:
    return layout.report_key(ds, "quarantine.json")


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def fetch_partition(settings: Settings, ds: str, storage: Storage,
                    sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Fetch the date's photos into ``raw/ds=…`` (replacing any earlier run) and return the manifest.

    Raises FetchError after writing the manifest and quarantine records when
    fewer than ``min_success_ratio`` of the fetched photos are usable (a source
    listing fewer photos than requested is not a failure: it is recorded).
    """
    validate_ds(ds)
    with client(settings, sleep) as http:
        listed = list_photos(http)
        chosen = select(listed, ds, settings.num_images)
        short = shortfall(settings.num_images, len(listed))
        if short:
            log.warning("%s; fetching all of them", short)
        log.info("fetching %d photos for ds=%s from %s: ids %s", len(chosen), ds,
                 redact_url(http.base_url), [p.picsum_id for p in chosen])
        with ThreadPoolExecutor(max_workers=max(1, settings.fetch_concurrency),
                                thread_name_prefix="fetch") as pool:
            outcomes = list(pool.map(lambda p: fetch_one(http, settings, ds, p), chosen))

    good = [o for o in outcomes if o.image is not None]
    bad = [o for o in outcomes if o.quarantine is not None]
    # Whatever the source answered is kept for inspection, even an empty 200 body; a photo
    # that never got an answer (connection refused, redirect refused) has nothing to keep.
    kept = [o for o in bad if o.quarantine and (o.body or o.quarantine.get("http_status") is not None)]
    kept_ids = {id(o) for o in kept}
    for o in bad:
        assert o.quarantine is not None
        o.quarantine["key"] = (f"{quarantine_prefix(ds)}{o.quarantine['image_id']}.bin"
                               if id(o) in kept_ids else None)
    quarantined = [o.quarantine for o in bad]
    fetched = len(chosen)
    ratio = len(good) / fetched if fetched else 0.0
    manifest: dict[str, Any] = {
        "ds": ds,
        "source": redact_url(http.base_url),
        "size": {"width": settings.image_width, "height": settings.image_height},
        "requested": settings.num_images,
        "available": len(listed),
        "fetched": fetched,
        "shortfall": short,
        "selected": [p.picsum_id for p in chosen],
        "images": [o.image for o in good],
        "quarantined": quarantined,
        "success_ratio": round(ratio, 6),
        "min_success_ratio": settings.min_success_ratio,
    }
    assert fetched == len(manifest["images"]) + len(quarantined), "fetch lost track of a photo"

    # Quarantine and its report first, so a failing run still leaves the evidence.
    q_files = {f"{o.quarantine['image_id']}.bin": o.body for o in kept if o.quarantine}
    q_files["_quarantine.json"] = _json_bytes({"ds": ds, "quarantined": quarantined})
    storage.replace_partition(quarantine_prefix(ds), q_files)
    storage.write_json(report_key(ds), {"ds": ds, "requested": settings.num_images, "fetched": fetched,
                                        "quarantined": quarantined})

    raw_files = {o.image["key"][len(raw_prefix(ds)):]: o.body for o in good if o.image}
    raw_files["_manifest.json"] = _json_bytes(manifest)
    storage.replace_partition(raw_prefix(ds), raw_files)
    log.info("ds=%s: %d of %d photos stored in %s, %d quarantined", ds, len(good), fetched,
             storage.uri(raw_prefix(ds)), len(bad))

    if ratio < settings.min_success_ratio:
        reasons = sorted({str(q["reason"]) for q in quarantined})
        raise FetchError(
            f"only {len(good)} of {fetched} photos for ds={ds} are usable "
            f"({ratio:.0%} < min_success_ratio {settings.min_success_ratio:.0%}); "
            f"quarantine reasons: {', '.join(reasons) or 'none'}; see {storage.uri(report_key(ds))}",
            manifest,
        )
    return manifest
