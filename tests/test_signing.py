"""HMAC signing of the callback: round trip, every rejection code, and no secret in messages."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest

from superres.config import Secret
from superres.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    Verified,
    digest,
    sign,
    verify,
)

SECRET = "unit-test-secret-7c1d"
BODY = b'{"run_id": "manual__1", "ds": "2026-01-05"}'
NOW = 1_767_571_200  # 2026-01-05T00:00:00Z


def _code(body: bytes, headers: dict[str, str], secret: str = SECRET, now: float = NOW) -> str:
    with pytest.raises(SignatureError) as info:
        verify(body, headers, secret, max_skew_s=300, now=now)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    return info.value.code


def test_sign_produces_documented_headers() -> None:
    headers = sign(BODY, SECRET, timestamp=NOW)
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert headers == {TIMESTAMP_HEADER: str(NOW), SIGNATURE_HEADER: f"sha256={expected}"}
    assert digest(BODY, SECRET, NOW) == expected


def test_sign_defaults_to_now() -> None:
    before = int(time.time())
    ts = int(sign(BODY, SECRET)[TIMESTAMP_HEADER])
    assert before <= ts <= int(time.time())


def test_round_trip_returns_timestamp_and_normalised_signature() -> None:
    headers = sign(BODY, SECRET, timestamp=NOW)
    result = verify(BODY, headers, SECRET, max_skew_s=300, now=NOW + 5)
    assert result == Verified(timestamp=NOW, signature=headers[SIGNATURE_HEADER].removeprefix("sha256="))


def test_headers_are_case_insensitive_and_hex_case_is_ignored() -> None:
    headers = sign(BODY, SECRET, timestamp=NOW)
    lowered = {k.lower(): v for k, v in headers.items()}
    lowered["x-superres-signature"] = "sha256=" + lowered["x-superres-signature"][7:].upper()
    assert verify(BODY, lowered, SECRET, 300, now=NOW).timestamp == NOW


def test_masked_secret_type_signs_like_its_value() -> None:
    assert sign(BODY, Secret(SECRET), NOW) == sign(BODY, SECRET, NOW)
    verify(BODY, sign(BODY, SECRET, NOW), Secret(SECRET), 300, now=NOW)


def test_missing_signature() -> None:
    assert _code(BODY, {TIMESTAMP_HEADER: str(NOW)}) == SignatureError.MISSING_SIGNATURE
    assert (
        _code(BODY, {TIMESTAMP_HEADER: str(NOW), SIGNATURE_HEADER: "  "}) == SignatureError.MISSING_SIGNATURE
    )


@pytest.mark.parametrize(
    "value",
    ["abc", "sha1=" + "0" * 40, "sha256=" + "0" * 63, "sha256=" + "g" * 64, "sha256:" + "0" * 64, "0" * 64],
)
def test_malformed_signature(value: str) -> None:
    assert (
        _code(BODY, {TIMESTAMP_HEADER: str(NOW), SIGNATURE_HEADER: value})
        == SignatureError.MALFORMED_SIGNATURE
    )


def test_missing_timestamp() -> None:
    headers = sign(BODY, SECRET, NOW)
    del headers[TIMESTAMP_HEADER]
    assert _code(BODY, headers) == SignatureError.MISSING_TIMESTAMP


@pytest.mark.parametrize("value", ["-5", "1.5", "abc", "1e9", "0x10", "1" * 13])
def test_malformed_timestamp(value: str) -> None:
    headers = sign(BODY, SECRET, NOW)
    headers[TIMESTAMP_HEADER] = value
    assert _code(BODY, headers) == SignatureError.MALFORMED_TIMESTAMP


def test_bad_signature_for_tampered_body_timestamp_or_wrong_secret() -> None:
    headers = sign(BODY, SECRET, NOW)
    assert _code(BODY + b" ", headers) == SignatureError.BAD_SIGNATURE
    moved = dict(headers, **{TIMESTAMP_HEADER: str(NOW + 1)})
    assert _code(BODY, moved) == SignatureError.BAD_SIGNATURE
    assert _code(BODY, sign(BODY, "another-secret", NOW)) == SignatureError.BAD_SIGNATURE


@pytest.mark.parametrize("offset", [-301, 301, -86_400])
def test_stale_timestamp_either_direction(offset: int) -> None:
    headers = sign(BODY, SECRET, NOW + offset)
    assert _code(BODY, headers) == SignatureError.STALE_TIMESTAMP


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_timestamp_at_the_skew_boundary_is_accepted(offset: int) -> None:
    verify(BODY, sign(BODY, SECRET, NOW + offset), SECRET, max_skew_s=300, now=NOW)


def test_forgery_is_reported_as_bad_signature_even_when_stale() -> None:
    """The HMAC is checked first: 'stale' only ever describes an authentic request."""
    headers = sign(BODY, "not-the-secret", NOW - 10_000)
    assert _code(BODY, headers) == SignatureError.BAD_SIGNATURE


def test_empty_secret_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="secret is empty"):
        sign(BODY, "")
    with pytest.raises(ValueError, match="secret is empty"):
        verify(BODY, sign(BODY, SECRET, NOW), Secret(""), 300, now=NOW)


def test_error_messages_never_contain_secret_or_expected_signature() -> None:
    good = sign(BODY, SECRET, NOW)[SIGNATURE_HEADER]
    with pytest.raises(SignatureError) as info:
        verify(
            BODY, {TIMESTAMP_HEADER: str(NOW), SIGNATURE_HEADER: "sha256=" + "0" * 64}, SECRET, 300, now=NOW
        )
    text = f"{info.value} {info.value!r} {info.value.message}"
    assert SECRET not in text
    assert good.removeprefix("sha256=") not in text
