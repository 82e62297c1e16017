"""HMAC-SHA256 signing of the pipeline's REST callback, shared by sender and receiver.

The Airflow callback task signs the exact bytes it POSTs; the notifier verifies
them before it parses anything.  The signed message is ``f"{timestamp}.".encode()
+ body`` so a captured signature cannot be re-used with another timestamp, and
the timestamp must lie within ``±max_skew_s`` of the receiver's clock so a
captured request goes stale (replays inside the window are the receiver's job:
see ``notifier.api``).

Both sides use only the standard library so the notifier never imports Airflow.
Error messages never contain the secret, nor the expected signature.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

TIMESTAMP_HEADER = "X-Superres-Timestamp"
SIGNATURE_HEADER = "X-Superres-Signature"
SCHEME = "sha256"

_SIGNATURE_RE = re.compile(r"sha256=([0-9a-fA-F]{64})")
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")  # unix seconds; no sign, spaces or fractions


class SignatureError(Exception):
    """A request that failed verification; ``code`` is stable and machine-readable."""

    MISSING_SIGNATURE = "missing_signature"
    MALFORMED_SIGNATURE = "malformed_signature"
    BAD_SIGNATURE = "bad_signature"
    MISSING_TIMESTAMP = "missing_timestamp"
    MALFORMED_TIMESTAMP = "malformed_timestamp"
    STALE_TIMESTAMP = "stale_timestamp"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"SignatureError({self.code!r}, {self.message!r})"


@dataclass(frozen=True)
class Verified:
    """What a successful :func:`verify` vouches for: the timestamp and normalised signature."""

    timestamp: int
    signature: str  # lower-case hex digest, without the ``sha256=`` prefix


def _key(secret: str) -> bytes:
    # ``Secret`` (superres.config) is a str subclass; str.__str__ gets the raw value either way.
    raw = str.__str__(secret)
    if not raw:
        raise ValueError("the callback secret is empty; set SUPERRES_CALLBACK_SECRET")
    return raw.encode("utf-8")


def digest(body: bytes, secret: str, timestamp: int) -> str:
    """Hex HMAC-SHA256 of ``f"{timestamp}." + body`` under ``secret``."""
    return hmac.new(_key(secret), f"{int(timestamp)}.".encode("ascii") + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    """Headers that authenticate ``body``; ``timestamp`` defaults to now (unix seconds)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    if ts < 0:
        raise ValueError("timestamp must be non-negative unix seconds")
    return {
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: f"{SCHEME}={digest(body, secret, ts)}",
    }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup that works for plain dicts as well as Werkzeug headers."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for k, v in headers.items():
            if k.lower() == lowered:
                value = v
                break
    return None if value is None else str(value).strip()


def verify(
    body: bytes,
    headers: Mapping[str, str],
    secret: str,
    max_skew_s: int,
    now: float | None = None,
) -> Verified:
    """Check ``body`` against its signature headers or raise :class:`SignatureError`.

    The HMAC is checked before the clock, so ``stale_timestamp`` means "authentic
    but too old/new" (usually clock skew or a replay), never "forged".
    """
    key = _key(secret)  # a receiver without a secret is misconfigured, not attacked

    raw_sig = _header(headers, SIGNATURE_HEADER)
    if not raw_sig:
        raise SignatureError(SignatureError.MISSING_SIGNATURE, f"missing {SIGNATURE_HEADER} header")
    match = _SIGNATURE_RE.fullmatch(raw_sig)
    if match is None:
        raise SignatureError(
            SignatureError.MALFORMED_SIGNATURE,
            f"{SIGNATURE_HEADER} must be 'sha256=' followed by 64 hex digits",
        )
    given = match.group(1).lower()

    raw_ts = _header(headers, TIMESTAMP_HEADER)
    if not raw_ts:
        raise SignatureError(SignatureError.MISSING_TIMESTAMP, f"missing {TIMESTAMP_HEADER} header")
    if _TIMESTAMP_RE.fullmatch(raw_ts) is None:
        raise SignatureError(
            SignatureError.MALFORMED_TIMESTAMP, f"{TIMESTAMP_HEADER} must be integer unix seconds"
        )
    ts = int(raw_ts)

    expected = hmac.new(key, f"{ts}.".encode("ascii") + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, given):
        raise SignatureError(SignatureError.BAD_SIGNATURE, "signature does not match the body")

    current = time.time() if now is None else now
    if abs(current - ts) > max_skew_s:
        raise SignatureError(
            SignatureError.STALE_TIMESTAMP,
            f"timestamp is {int(current - ts)} s away from the receiver's clock (allowed ±{max_skew_s} s)",
        )
    return Verified(timestamp=ts, signature=given)
