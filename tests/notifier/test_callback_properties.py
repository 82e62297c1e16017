"""Property: a correctly signed callback body, whatever it holds, is answered 2xx or 4xx, never 5xx.

Hypothesis builds two kinds of bodies and signs each with the right secret, so
every one gets past the signature check to the parser and the schema:

* arbitrary JSON-ish documents (nested arrays and objects, huge and tiny
  numbers, NaN and Infinity, strings with NUL, lone surrogates, controls,
  bidi and zero-width characters), written with or without ``ensure_ascii``,
  plus raw bytes, deep brackets and cut-off JSON;
* mutations of a valid event: fields deleted, retyped, set to huge numbers or
  odd strings, and unknown fields added, anywhere in the document.

Besides the status: a 4xx stores nothing (no event, image, whitelisted key or
remembered signature), and after a 2xx the pages and JSON of that run render
without a 5xx too.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from notifier import create_app, db
from notifier.events import IDEMPOTENCY_RE
from superres.signing import sign
from tests.notifier.helpers import SECRET, make_event, write_images

PROPERTY = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TABLES = ("events", "images", "image_keys", "deliveries")
ODD_PIECES = ["\x00", "\ud800", "\udbff", "\udc00", "\udfff", "\u202e", "\u200b", "\ufeff", "\n", "\t", "\r",
              "\x1b", "\x7f", "\x85", "\u2028", "é", "😀", "<", '"', "\\", "/", "..", "%00", " "]
HUGE_NUMBERS = [10**400, -(10**400), 2**63, -(2**63) - 1, 2**63 - 1, 10**19, 1e308, -1e308, 5e-324,
                float("inf"), float("-inf"), float("nan"), -0.0, 0, -1, 2**53 + 1]

ACTIONS = ["alike", "alike", "delete", "value", "number", "text", "extra", "wrap"]

_counter = itertools.count()


@pytest.fixture(scope="module")
def prop_app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    root = tmp_path_factory.mktemp("callback-properties")
    write_images(root / "storage", "2026-01-05", ["101", "102"], size=8)
    return create_app({
        "TESTING": True,  # an unhandled exception propagates out of the client: a 5xx cannot hide
        "DATABASE": str(root / "notifier.sqlite"),
        "CALLBACK_SECRET": SECRET,
        "STORAGE_URI": str(root / "storage"),
        "MAX_CONTENT_LENGTH": 256 * 1024,
        "MAX_SKEW_S": 300,
        "REFRESH_S": 0,
    })


@pytest.fixture(scope="module")
def prop_client(prop_app: Flask) -> Iterator[FlaskClient]:
    yield prop_app.test_client()


# --------------------------------------------------------------------------- strategies


odd_text = st.lists(st.one_of(st.characters(), st.sampled_from(ODD_PIECES)), max_size=30).map("".join)
numbers = st.one_of(
    st.integers(min_value=-(10**25), max_value=10**25),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(HUGE_NUMBERS),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, odd_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(odd_text, inner, max_size=5)),
    max_leaves=30,
)


def _dump(value: Any, ascii_only: bool) -> bytes:
    """JSON text as a sender might write it; unpaired surrogates become invalid UTF-8 when not escaped."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def arbitrary_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["document", "document", "object", "bytes", "deep", "cut"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        depth = draw(st.integers(1, 20_000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"b":', b"}]")]))
        tail = draw(st.sampled_from([b"1", b"", b'"x"', b"9" * 5000]))
        return opener * depth + tail + closer * draw(st.integers(0, depth))
    value = draw(json_values)
    if kind == "object":  # an object that has the required members, with arbitrary values
        value = {"run_id": draw(json_values), "ds": draw(st.one_of(odd_text, st.just("2026-01-05"))),
                 "state": draw(st.sampled_from(["success", "failed", None, 1])),
                 "counts": draw(json_values), "extra": value}
    body = _dump(value, draw(st.booleans()))
    if kind == "cut":
        return body[: draw(st.integers(0, len(body)))]
    return body


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every member and item of a document, containers included."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield (*prefix, name)
            yield from _paths(item, (*prefix, name))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield (*prefix, i)
            yield from _paths(item, (*prefix, i))


BASE_EVENT = make_event()
PATHS = sorted(_paths(BASE_EVENT), key=repr)


def _alike(value: Any) -> st.SearchStrategy[Any]:
    if isinstance(value, bool) or value is None:
        return st.sampled_from([True, False, None])
    if isinstance(value, int):
        return st.integers(min_value=0, max_value=2**40)
    if isinstance(value, float):
        return st.floats(min_value=-1e6, max_value=1e6) | st.sampled_from([0.0, 1.0, 200.0, float("inf")])
    if isinstance(value, str):
        return st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=20)
    if isinstance(value, list):
        return st.just(value[:1] * 3)
    return st.just({})


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes:
    event = copy.deepcopy(BASE_EVENT)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent: Any = event
        try:
            for part in path[:-1]:
                parent = parent[part]
            parent[path[-1]]  # noqa: B018 - an earlier mutation may have removed it
        except (KeyError, IndexError, TypeError):
            continue
        action = draw(st.sampled_from(ACTIONS))
        last = path[-1]
        if action == "alike":  # the same type, another value: often still a valid event
            parent[last] = draw(_alike(parent[last]))
        elif action == "delete":
            del parent[last]
        elif action == "value":
            parent[last] = draw(json_values)
        elif action == "number":
            parent[last] = draw(numbers)
        elif action == "text":
            parent[last] = draw(odd_text)
        elif action == "wrap":
            parent[last] = [parent[last]] if draw(st.booleans()) else {"value": parent[last]}
        elif isinstance(parent, dict):
            parent[draw(odd_text)] = draw(json_values)
        else:
            parent.append(draw(json_values))
    if draw(st.booleans()):
        event[draw(odd_text)] = draw(json_values)
    return _dump(event, draw(st.booleans()))


# --------------------------------------------------------------------------- the property


def _rows(app: Flask) -> dict[str, int]:
    with app.app_context():
        conn = db.get_db()
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}


def _key_for(body: bytes) -> str:
    """The body's own key when it names a usable one (so it is no mismatch), else a fresh one."""
    try:
        named = json.loads(body).get("idempotency_key")
    except Exception:  # noqa: BLE001 - any body at all; the notifier decides what it is
        named = None
    if isinstance(named, str) and IDEMPOTENCY_RE.fullmatch(named):
        return named
    return f"prop-{next(_counter)}"


def _check(client: FlaskClient, app: Flask, body: bytes) -> int:
    before = _rows(app)
    headers = {"Content-Type": "application/json", "X-Idempotency-Key": _key_for(body), **sign(body, SECRET)}
    response = client.post("/api/callbacks", data=body, headers=headers)
    status = response.status_code
    assert 200 <= status < 300 or 400 <= status < 500, (status, body[:200])
    assert response.mimetype == "application/json"
    answer = response.get_json()
    if status >= 400:
        assert isinstance(answer.get("error"), str) and "\n" not in answer.get("message", "")
        assert _rows(app) == before, (status, answer, body[:200])
        return status
    for link in (answer["links"]["run"], answer["links"]["api"], "/", "/api/runs"):
        page = client.get(link)
        assert page.status_code == 200, (link, page.status_code, body[:200])
    return status


@PROPERTY
@given(body=arbitrary_bodies())
def test_arbitrary_signed_bodies_never_get_a_5xx(prop_client: FlaskClient, prop_app: Flask,
                                                  body: bytes) -> None:
    event(f"HTTP {_check(prop_client, prop_app, body)}")


@PROPERTY
@given(body=mutated_events())
def test_mutated_events_never_get_a_5xx(prop_client: FlaskClient, prop_app: Flask, body: bytes) -> None:
    event(f"HTTP {_check(prop_client, prop_app, body)}")


def test_the_unmutated_event_is_stored(prop_client: FlaskClient, prop_app: Flask) -> None:
    """The mutations start from an event the notifier takes, so what they find is the mutation's doing."""
    before = _rows(prop_app)["events"]
    assert _check(prop_client, prop_app, json.dumps(BASE_EVENT).encode()) == 201
    assert _rows(prop_app)["events"] == before + 1
    assert ("images", 0, "sr") in PATHS and ("quality", "suites", 0, "results", 1) in PATHS
