"""Signed but malformed callbacks: refused with a one-line 400 before anything is stored.

The signature only says who sent a body, not that it is sane: every case here is
correctly signed, so it reaches the parser and the schema.  The app runs with
the default 1 MiB body limit, so size alone cannot be what refuses them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from notifier import create_app, db
from notifier.config import DEFAULTS
from superres.orchestration import notify as notify_mod
from superres.storage import LocalStorage
from tests.notifier.helpers import encode, make_event, png_bytes, post_event, variant


@pytest.fixture
def big_app(app_config: dict[str, Any]) -> Flask:
    return create_app({**app_config, "MAX_CONTENT_LENGTH": DEFAULTS["MAX_CONTENT_LENGTH"]})


@pytest.fixture
def big_client(big_app: Flask) -> FlaskClient:
    return big_app.test_client()


def _stored(app: Flask) -> int:
    with app.app_context():
        conn = db.get_db()
        return sum(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("events", "images"))


def _refused(response: Any, app: Flask, code: str | None = None) -> dict[str, Any]:
    """A 400 whose body is one line of JSON naming the reason, and nothing stored."""
    assert response.status_code == 400, response.data[:300]
    assert response.mimetype == "application/json"
    text = response.get_data(as_text=True).strip()
    assert "\n" not in text
    answer = json.loads(text)
    assert isinstance(answer["error"], str) and isinstance(answer["message"], str)
    assert "\n" not in answer["message"]
    if code is not None:
        assert answer["error"] == code, answer
    assert _stored(app) == 0
    return answer


def _with_field(value: bytes, name: bytes = b"extra") -> bytes:
    """A valid event's body with one more top-level member, written verbatim."""
    body = encode(make_event())
    assert body.endswith(b"}")
    return body[:-1] + b', "' + name + b'": ' + value + b"}"


def test_json_nested_100k_deep_is_refused(big_client: FlaskClient, big_app: Flask) -> None:
    depth = 100_000
    body = _with_field(b"[" * depth + b"]" * depth)
    assert len(body) < DEFAULTS["MAX_CONTENT_LENGTH"]
    answer = _refused(post_event(big_client, body=body, key="deep"), big_app, "too_deep")
    assert "nest" in answer["message"]


def test_deep_nesting_is_refused_however_it_is_spelled(big_client: FlaskClient, big_app: Flask) -> None:
    for n, inner in enumerate((b'{"a":' * 5000 + b"1" + b"}" * 5000, b"[" * 5000, b'[{"x":[' * 3000)):
        _refused(post_event(big_client, body=_with_field(inner), key=f"deep-{n}"), big_app)
    # Brackets inside strings are text, not nesting.
    event = variant(make_event(), note="[" * 5000 + "{" * 5000)
    assert post_event(big_client, event).status_code == 201


def test_count_of_10_to_the_400_is_refused(big_client: FlaskClient, big_app: Flask) -> None:
    event = make_event()
    event["counts"]["fetched"] = 10**400
    answer = _refused(post_event(big_client, event), big_app)
    assert answer["error"] in ("number_too_large", "invalid_event")


def test_5000_digit_integer_is_refused(big_client: FlaskClient, big_app: Flask) -> None:
    # Python's json refuses to read it at all (int max str digits), with a ValueError.
    body = _with_field(b"9" * 5000, b"timings_total")
    _refused(post_event(big_client, body=body, key="digits"), big_app, "number_too_large")
    body = encode(make_event()).replace(b'"fetched": 3', b'"fetched": ' + b"9" * 5000)
    _refused(post_event(big_client, body=body, key="digits-count"), big_app, "number_too_large")


@pytest.mark.parametrize("where", ["run_id", "author", "extra", "key_name"])
def test_lone_surrogate_in_a_string_is_refused(big_client: FlaskClient, big_app: Flask, where: str) -> None:
    event = make_event()
    if where == "run_id":
        event["run_id"] += "\ud800"
    elif where == "author":
        event["images"][0]["author"] = "Ann \udfff"
    elif where == "extra":
        event["extra"] = {"note": ["fine", "\ud83d alone"]}
    else:
        event["outputs"]["\udc80"] = "/data/x"
    body = encode(event)  # ensure_ascii: written as a \\uXXXX escape, valid JSON text
    assert b"\\ud" in body
    answer = _refused(post_event(big_client, event, body=body, key="surrogate"), big_app)
    assert "surrogate" in answer["message"] or any("surrogate" in p for p in answer.get("problems", []))


def test_a_surrogate_pair_is_a_character_and_is_accepted(client: FlaskClient) -> None:
    event = make_event(authors=("Zoë 😀",))
    assert b"\\ud83d\\ude00" in encode(event)
    assert post_event(client, event).status_code == 201
    assert "Zoë 😀" in client.get("/runs/" + event["run_id"]).get_data(as_text=True)


def test_nul_in_run_id_is_refused(big_client: FlaskClient, big_app: Flask) -> None:
    event = make_event(run_id="scheduled__2026-01-05\x00T00:00:00+00:00")
    answer = _refused(post_event(big_client, event, key="nul"), big_app, "invalid_event")
    assert any(p.startswith("run_id:") for p in answer["problems"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("run_id", "tab\there"),
        ("run_id", "line\nbreak"),
        ("run_id", " leading-space"),
        ("run_id", "bidi\u202eoverride"),
        ("dag_id", "superres daily"),
        ("dag_id", "dag\x00"),
        ("ds", "２０２６-01-05"),
        ("sent_at", "yesterday"),
        ("idempotency_key", 42),
        ("idempotency_key", "caf\u00e9"),
    ],
)
def test_ids_dates_and_keys_allow_only_their_characters(client: FlaskClient, app: Flask, field: str,
                                                        value: Any) -> None:
    response = post_event(client, variant(make_event(), **{field: value}), key="k")
    answer = _refused(response, app, "invalid_event")
    assert any(p.startswith(field + ":") for p in answer["problems"]), answer


_OUT_OF_BOUNDS = {
    "image_id_nul": (("images", 0, "image_id"), "1\x002"),
    "key_control": (("images", 0, "sr"), "sr/ds=2026-01-05/\x01.png"),
    "key_zero_width": (("images", 0, "sr"), "sr/ds=2026-01-05/\u200b.png"),
    "task_newline": (("failed_tasks",), ["up\nscale"]),
    "quarantine_id_cr": (("quarantine", 0, "image_id"), "9\r9"),
    "metric_id_del": (("metrics", "images", 0, "image_id"), "10\x7f1"),
    "count_2_63": (("counts", "processed"), 2**63),
    "count_10_12": (("counts", "quarantined"), 10**12),
    "scale_10_30": (("scale",), 10**30),
    "psnr_10_400": (("metrics", "mean", "psnr"), 10**400),
    "psnr_negative": (("metrics", "mean", "psnr"), -1.0),
    "ssim_1e300": (("metrics", "mean", "ssim"), 1e300),
    "psnr_1e308": (("metrics", "images", 0, "psnr_bicubic"), 1e308),
    "timing_10_20": (("timings", "fetch"), 10**20),
    "timing_inf": (("timings", "fetch"), float("inf")),
    "suite_name_int": (("quality", "suites", 0, "name"), 7),
    "suite_success_str": (("quality", "suites", 0, "success"), "yes"),
    "output_nul": (("outputs", "sr"), "/data/\x00sr"),
    "message_too_long": (("quarantine", 0, "message"), "x" * 100_001),
    "flags_not_an_array": (("metrics", "images", 0, "flags"), "sr_below_bicubic"),
    "flag_not_an_id": (("metrics", "images", 0, "flags"), ["near_constant\noutput"]),
    "flags_too_many": (("metrics", "images", 0, "flags"), ["f"] * 17),
}


@pytest.mark.parametrize(("path", "value"), list(_OUT_OF_BOUNDS.values()), ids=list(_OUT_OF_BOUNDS))
def test_values_out_of_range_or_with_forbidden_characters(big_client: FlaskClient, big_app: Flask,
                                                          path: tuple[Any, ...], value: Any) -> None:
    event = make_event()
    target: Any = event
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    _refused(post_event(big_client, event, key="range"), big_app)


def test_problem_list_is_bounded_and_paths_are_escaped(big_client: FlaskClient, big_app: Flask) -> None:
    event = make_event()
    event["timings"] = {f"t{i}\n": "slow" for i in range(500)}
    answer = _refused(post_event(big_client, event, key="many"), big_app, "invalid_event")
    assert len(answer["problems"]) <= 21
    assert all("\n" not in p for p in answer["problems"])
    assert "more" in answer["problems"][-1]


def test_a_top_level_array_or_scalar_is_refused(client: FlaskClient, app: Flask) -> None:
    for body in (b"[]", b"1", b'"event"', b"null", b"NaN"):
        _refused(post_event(client, body=body, key="k"), app, "invalid_event")


def test_infinity_and_nan_stay_accepted_where_they_mean_something(client: FlaskClient) -> None:
    """Exact reconstruction has infinite PSNR; NaN is read as no value."""
    event = make_event()
    event["metrics"]["mean"]["psnr"] = float("inf")
    event["metrics"]["images"][0]["ssim"] = float("nan")
    assert post_event(client, event, body=json.dumps(event).encode()).status_code == 201


def test_unknown_fields_are_kept_within_the_same_bounds(client: FlaskClient) -> None:
    event = variant(make_event(), future={"nested": [[{"a": 1}]], "big": 2**62, "text": "ok\n"})
    assert post_event(client, event).status_code == 201
    assert client.get("/api/runs/" + event["run_id"]).json["event"]["future"]["big"] == 2**62


# --------------------------------------------------------------------------- what the pipeline sends


def _seed(root: Path, ds: str, run_id: str, mode: str) -> dict[str, Any]:
    """What a finished run leaves in storage, in the shapes the pipeline's stages write them."""
    from superres.config import Settings

    storage = LocalStorage(root)
    ids = ("10", "11")
    manifest = {
        "ds": ds, "requested": 3,
        "images": [{"image_id": i, "author": "Paul Jarvis", "key": f"raw/ds={ds}/{i}.jpg"} for i in ids],
        "quarantined": [{"image_id": "12", "source": "fetch", "reason": "bad_content_type",
                         "message": "JPEG body served as 'text/plain; charset=\"x\"'", "http_status": 200}],
    }
    storage.replace_partition(f"raw/ds={ds}", {"_manifest.json": json.dumps(manifest).encode(),
                                                **{f"{i}.jpg": png_bytes(16, 16) for i in ids}})
    storage.replace_partition(f"sr/ds={ds}", {f"{i}.png": png_bytes(32, 32) for i in ids})
    reports = f"reports/ds={ds}"
    storage.write_json(f"{reports}/owner.json", {"ds": ds, "run_id": run_id})
    storage.write_json(f"{reports}/stages/evaluate.json", {"stage": "evaluate", "published": True})
    for i in ids:
        storage.write_bytes(f"{reports}/bicubic/{i}.png", png_bytes(32, 32))
        storage.write_bytes(f"{reports}/compare/{i}.png", png_bytes(64, 32))
    keys = ("psnr", "ssim", "psnr_bicubic", "ssim_bicubic")
    rows = [dict(image_id=i, **dict(zip(keys, (31.5, 0.91, 29.25, 0.88), strict=True))) for i in ids]
    rows[0]["psnr"] = 200.0  # the report's cap for an exact reconstruction
    if mode == "evaluate":  # the scores of an evaluate run (upscale has no ground truth)
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
        storage.write_json(f"{reports}/metrics.json", {"ds": ds, "scale": 3, "images": rows, "mean": mean})
    storage.write_json(f"{reports}/quality.json", {"success": False, "suites": [
        {"name": "tiles", "success": True}, {"name": "sr_outputs", "success": False}, {"success": None}]})
    storage.write_json(f"{reports}/run.json", {
        "counts": {"fetched": 3, "processed": 2, "quarantined": 1},
        "timings": {"fetch": 1.25, "split": 0.5, "inference": 12.0, "evaluate": -0.003},
        "quarantine": manifest["quarantined"],
    })
    settings = Settings(storage_uri=str(root), mode=mode, scale=3)
    return {"ds": ds, "run_id": run_id, "token": "tok", "settings": settings.public()}


@pytest.mark.parametrize("mode", ["evaluate", "upscale"])
@pytest.mark.parametrize("run_id", ["scheduled__2026-03-01T00:00:00+00:00",
                                    "manual__2026-03-01T10:11:12.123456+00:00"])
def test_events_the_notify_task_builds_are_accepted(tmp_path: Path, app_config: dict[str, Any], mode: str,
                                                    run_id: str) -> None:
    ds = "2026-03-01"
    run = _seed(tmp_path / "store", ds, run_id, mode)
    storage = LocalStorage(tmp_path / "store")
    key = f"{run_id}#0"
    event = notify_mod.build_event(run, storage, ["evaluate"], "superres_daily", key)
    body = notify_mod.encode(event)
    client = create_app(app_config).test_client()
    response = client.post(notify_mod.CALLBACK_PATH, data=body,
                           headers=notify_mod.signed_headers(body, app_config["CALLBACK_SECRET"], key))
    assert response.status_code == 201, response.json
    assert client.get("/runs/" + run_id).status_code == 200


# --------------------------------------------------------------------------- requested versus available


@pytest.mark.parametrize("source", [{"requested": 64, "available": 9}, {"requested": 4, "available": 9},
                                    {"requested": 64, "available": None}, None, "absent"])
def test_source_counts_are_accepted_and_events_without_them_stay_valid(client: FlaskClient,
                                                                       source: Any) -> None:
    event = make_event()
    if source != "absent":
        event["source"] = source
    assert post_event(client, event).status_code == 201
    stored = client.get("/api/runs/" + event["run_id"]).json["event"]
    assert stored.get("source") == (None if source == "absent" else source)


@pytest.mark.parametrize("source", [
    {"requested": -1, "available": 9}, {"requested": 64, "available": 10**12},
    {"requested": "64", "available": 9}, {"requested": 64, "available": True},
    {"requested": 64.0, "available": 9}, [64, 9], "64 of 9", 64,
])
def test_source_counts_out_of_range_or_of_the_wrong_type_are_refused(client: FlaskClient, app: Flask,
                                                                     source: Any) -> None:
    answer = _refused(post_event(client, variant(make_event(), source=source), key="src"), app,
                      "invalid_event")
    assert all(p.startswith("source") for p in answer["problems"]), answer


def test_the_notify_task_sends_requested_versus_available(tmp_path: Path) -> None:
    """The event carries run.json's ``source`` (or the manifest's, for an older run.json)."""
    ds, run_id = "2026-03-01", "manual__2026-03-01T10:11:12+00:00"
    run = _seed(tmp_path / "store", ds, run_id, "upscale")
    storage = LocalStorage(tmp_path / "store")
    event = notify_mod.build_event(run, storage, [], "superres_daily", "k")
    assert event["source"] == {"requested": 3, "available": None}  # an older manifest: no `available`
    report = storage.read_json(f"reports/ds={ds}/run.json")
    storage.write_json(f"reports/ds={ds}/run.json", dict(report, source={
        "requested": 64, "available": 3, "fetched": 3,
        "shortfall": "3 of 64 requested: the source has only 3 photos"}))
    event = notify_mod.build_event(run, storage, [], "superres_daily", "k")
    assert event["source"] == {"requested": 64, "available": 3}
    assert event["counts"]["fetched"] == 3
