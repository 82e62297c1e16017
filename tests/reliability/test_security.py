"""Security: the signed callback, path traversal, HTML/JS injection, secrets, where URLs come from,
and the stack's generated passwords.

Requests go over real HTTP to the notifier on 127.0.0.1 (raw ``http.client`` where the exact
bytes of a path matter, since ``requests`` would normalise ``..`` away).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import stat
import time
import uuid
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from superres import fetch, signing
from superres.config import Settings
from superres.fetch import fetch_partition
from superres.orchestration import notify as notify_mod
from superres.orchestration import services, stack, tasks
from superres.orchestration.run import RUN_PARAMS, describe_run, settings_of
from superres.pipeline import layout
from superres.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER
from superres.storage import LocalStorage, open_storage
from tests.conftest import _isolate_network
from tests.notifier.helpers import XSS, make_event, png_bytes, write_images
from tests.reliability.faulty_picsum import Fault, FaultyPicsum
from tests.reliability.io_fixtures import (
    DS,
    NOTIFIER_SECRET,
    NotifierServer,
    bounded,
    notifier_config,
    settings_for,
)

RUN_ID = "scheduled__2026-01-05T00:00:00+00:00"


def sign_and_post(url: str, body: bytes, key: str | None = "k", secret: str = NOTIFIER_SECRET,
                  timestamp: int | None = None, headers: dict[str, str] | None = None,
                  signed: bool = True) -> requests.Response:
    sent = {"Content-Type": "application/json"}
    if signed:
        sent.update(signing.sign(body, secret, timestamp))
    if key is not None:
        sent["X-Idempotency-Key"] = key
    sent.update(headers or {})
    return requests.post(url + "/api/callbacks", data=body, headers=sent, timeout=10)


def raw_get(url: str, path: str) -> tuple[int, bytes, dict[str, str]]:
    """GET ``path`` byte for byte (no client-side normalisation of ``..`` or ``%2e``)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def body_of(event: dict[str, Any] | None = None) -> bytes:
    return json.dumps(make_event() if event is None else event, sort_keys=True).encode()


# --------------------------------------------------------------------------- the signed callback


def test_unsigned_callback_is_rejected(notifier: NotifierServer) -> None:
    response = sign_and_post(notifier.url, body_of(), signed=False)
    assert response.status_code == 401
    assert response.json() == {"error": "missing_signature", "message": f"missing {SIGNATURE_HEADER} header"}
    assert notifier.events() == 0


def test_tampered_body_is_a_bad_signature(notifier: NotifierServer) -> None:
    body = body_of()
    headers = signing.sign(body, NOTIFIER_SECRET)
    tampered = body.replace(b'"state": "success"', b'"state": "failed"')
    assert tampered != body
    response = sign_and_post(notifier.url, tampered, signed=False, headers=headers)
    assert (response.status_code, response.json()["error"]) == (401, "bad_signature")
    assert notifier.events() == 0


def test_signature_with_the_wrong_secret_is_rejected(notifier: NotifierServer) -> None:
    response = sign_and_post(notifier.url, body_of(), secret="guessed-secret")
    assert (response.status_code, response.json()["error"]) == (401, "bad_signature")
    assert notifier.events() == 0


@pytest.mark.parametrize(("headers", "code"), [
    ({SIGNATURE_HEADER: "md5=abc"}, "malformed_signature"),
    ({SIGNATURE_HEADER: "sha256=" + "0" * 63}, "malformed_signature"),
    ({TIMESTAMP_HEADER: "yesterday"}, "malformed_timestamp"),
    ({TIMESTAMP_HEADER: "-5"}, "malformed_timestamp"),
])
def test_malformed_signature_headers_are_rejected(notifier: NotifierServer, headers: dict[str, str],
                                                  code: str) -> None:
    response = sign_and_post(notifier.url, body_of(), headers=headers)
    assert (response.status_code, response.json()["error"]) == (401, code)


@pytest.mark.parametrize("offset", [-301, 301, -7 * 86_400])
def test_stale_timestamp_is_rejected(notifier: NotifierServer, offset: int) -> None:
    response = sign_and_post(notifier.url, body_of(), timestamp=int(time.time()) + offset)
    assert (response.status_code, response.json()["error"]) == (401, "stale_timestamp")
    assert notifier.events() == 0


def test_replay_under_another_key_is_rejected(notifier: NotifierServer) -> None:
    """A captured signed request cannot be re-filed as a new event by changing the unsigned key."""
    body = body_of()
    headers = signing.sign(body, NOTIFIER_SECRET)
    assert sign_and_post(notifier.url, body, key="run-a", signed=False, headers=headers).status_code == 201
    response = sign_and_post(notifier.url, body, key="run-b", signed=False, headers=headers)
    assert (response.status_code, response.json()["error"]) == (409, "replay")
    assert notifier.events() == 1


def test_oversized_body_is_rejected_with_413(notifier: NotifierServer) -> None:
    event = make_event()
    event["padding"] = "x" * (64 * 1024)
    response = sign_and_post(notifier.url, body_of(event))
    assert (response.status_code, response.json()["error"]) == (413, "body_too_large")
    assert "65536 bytes" in response.json()["message"]
    assert notifier.events() == 0


def test_oversized_chunked_body_is_413_not_truncated(notifier: NotifierServer) -> None:
    """No Content-Length to refuse up front: the limit is enforced while reading."""
    event = make_event()
    event["padding"] = "x" * 100_000
    body = body_of(event)
    headers = {"Content-Type": "application/json", "X-Idempotency-Key": "k",
               **signing.sign(body, NOTIFIER_SECRET)}
    conn = http.client.HTTPConnection("127.0.0.1", notifier.port, timeout=10)
    try:
        chunks = (body[i:i + 4096] for i in range(0, len(body), 4096))
        conn.request("POST", "/api/callbacks", body=chunks, headers=headers, encode_chunked=True)
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())["error"]) == (413, "body_too_large")
    finally:
        conn.close()
    assert notifier.events() == 0


# --------------------------------------------------------------------------- path traversal


@pytest.fixture
def published(notifier: NotifierServer, store: LocalStorage) -> dict[str, Any]:
    """One stored event whose images exist; a file nobody referenced sits in the same storage."""
    write_images(store.root, DS, ["101", "102"])
    (store.root / "private").mkdir()
    (store.root / "private" / "unreferenced.png").write_bytes(png_bytes(8, 8))
    event = make_event()
    assert sign_and_post(notifier.url, body_of(event), key="published").status_code == 201
    return event


TRAVERSALS = [
    "/images/../../etc/passwd",
    "/images/%2e%2e/%2e%2e/etc/passwd",
    "/images/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "/images/sr/ds=2026-01-05/../../../../etc/passwd",
    "/images/sr/ds=2026-01-05/%2e%2e/101.png",
    "/images/sr/ds=2026-01-05/%2e%2e%2f%2e%2e%2fprivate/unreferenced.png",
    "/images//etc/passwd",
    "/images/%2Fetc%2Fpasswd",
    "/images/etc/passwd",
    "/images/..%5C..%5Cetc%5Cpasswd",
    "/images/sr%00/101.png",
    "/images/",
    "/runs/../../etc/passwd",
    "/runs/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/api/runs/../../etc/passwd",
    "/static/../api.py",
    "/static/%2e%2e/api.py",
    "/static/..%2fapi.py",
    "/static/%2e%2e%2f%2e%2e%2fsuperres%2fconfig.py",
    "/static//etc/passwd",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_attempts_are_refused(notifier: NotifierServer, published: dict[str, Any],
                                        path: str) -> None:
    status, body, headers = raw_get(notifier.url, path)
    if status in (301, 308):  # Werkzeug merging "//": only ever to a path on the notifier itself
        location = headers["Location"].removeprefix(notifier.url)
        assert location.startswith("/") and not location.startswith("//"), location
        status, body, _ = raw_get(notifier.url, location)
    assert status in (400, 404), (path, status)
    assert b"root:" not in body and b"import " not in body and b"\x89PNG" not in body


def test_absolute_paths_to_real_files_are_refused(notifier: NotifierServer, published: dict[str, Any],
                                                  store: LocalStorage) -> None:
    real = store.root / "sr" / f"ds={DS}" / "101.png"
    for path in ("/images/" + str(real), "/images" + str(real), "/images/" + str(real).lstrip("/")):
        status, body, _ = raw_get(notifier.url, path)
        assert status == 404 and b"\x89PNG" not in body, path


def test_ids_outside_the_whitelist_are_refused(notifier: NotifierServer, published: dict[str, Any],
                                               store: LocalStorage) -> None:
    write_images(store.root, "2026-01-06", ["201"])  # on disk, never reported
    for path in ("/images/private/unreferenced.png", "/images/sr/ds=2026-01-06/201.png",
                 "/images/sr/ds=2026-01-05/999.png", "/runs/no-such-run", "/api/runs/no-such-run"):
        status, body, _ = raw_get(notifier.url, path)
        assert status == 404 and b"\x89PNG" not in body, path
    # the control: a whitelisted key over the same route works
    status, body, headers = raw_get(notifier.url, "/images/" + published["images"][0]["sr"])
    assert status == 200 and body.startswith(b"\x89PNG") and headers["Content-Type"] == "image/png"
    assert headers["X-Content-Type-Options"] == "nosniff"


# --------------------------------------------------------------------------- HTML/JS injection


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.handlers: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts.append(dict(attrs))
        self.handlers += [name for name, _ in attrs if name.startswith("on")]


def assert_inert(html: str) -> None:
    """Only our own external script, no inline event handler, no raw payload anywhere."""
    page = _Page()
    page.feed(html)
    assert [s.get("src") for s in page.scripts] == ["/static/notifier.js"]
    assert page.handlers == []
    for raw in (XSS, "<img src=x onerror=alert(2)>", "<script>alert(3)</script>"):
        assert raw not in html


EVIL_AUTHORS = {"1": XSS, "2": '"><img src=x onerror=alert(2)>', "3": "Ann <b>Bold</b> & Co"}
EVIL_CONTENT_TYPE = "text/<script>alert(3)</script>"


def _notify_context() -> dict[str, Any]:
    ti = SimpleNamespace(get_task_states=lambda dag_id, run_ids: {run_ids[0]: {}})
    return {"ti": ti, "dag_run": SimpleNamespace(dag_id="superres_daily", run_id=RUN_ID, clear_number=0)}


def _pretend_compute(storage: Any, manifest: dict[str, Any]) -> None:
    """What the Spark jobs would publish for the accepted photos: SR PNGs (the notifier shows them),
    and the evaluate stage's summary saying this run published them."""
    storage.replace_partition(f"sr/ds={DS}", {f"{i['image_id']}.png": png_bytes(32, 24, n)
                                               for n, i in enumerate(manifest["images"])})
    storage.write_json(layout.report_key(DS, "stages/evaluate.json"),
                       {"stage": "evaluate", "ds": DS, "seconds": 0.1, "published": True})


def test_author_names_and_server_text_are_escaped_end_to_end(
        photos_dir: Path, store: LocalStorage, notifier: NotifierServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Picsum author names and a Content-Type holding markup travel fetch -> event -> notifier pages
    and come out as text."""
    for name in ("SUPERRES_CALLBACK_SECRET", "SUPERRES_STORAGE_URI"):
        monkeypatch.delenv(name, raising=False)
    conn = {"conn_type": "http", "host": "127.0.0.1", "port": notifier.port, "schema": "http",
            "password": NOTIFIER_SECRET}
    monkeypatch.setenv("AIRFLOW_CONN_NOTIFIER_DEFAULT", json.dumps(conn))
    with FaultyPicsum(photos_dir, authors=EVIL_AUTHORS) as source:
        source.faults["4"] = Fault("body", headers={"Content-Type": EVIL_CONTENT_TYPE},
                                   body=b"<script>alert(3)</script>")
        settings = settings_for(source.url, num_images=len(source.photos), storage_uri=str(store.root))
        manifest = bounded(lambda: fetch_partition(settings, DS, store))
    store.write_json(layout.owner_key(DS), {"ds": DS, "run_id": RUN_ID})  # as the fetch task records it
    authors = {i["image_id"]: i["author"] for i in manifest["images"]}
    assert {k: authors[k] for k in EVIL_AUTHORS} == EVIL_AUTHORS  # stored as given, escaped on output
    _pretend_compute(store, manifest)
    run = {"ds": DS, "run_id": RUN_ID, "token": "x", "settings": settings.public()}
    assert bounded(lambda: notify_mod.notify(run, _notify_context()))["status"] == 201

    for path in ("/", "/runs/" + RUN_ID):
        response = requests.get(notifier.url + path, timeout=10)
        assert response.status_code == 200
        html = response.text
        assert_inert(html)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "Ann &lt;b&gt;Bold&lt;/b&gt; &amp; Co" in html
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    run_page = requests.get(notifier.url + "/runs/" + RUN_ID, timeout=10).text
    assert "text/&lt;script&gt;alert(3)&lt;/script&gt;" in run_page  # the quarantine message, as text
    api = requests.get(notifier.url + "/api/runs/" + RUN_ID, timeout=10)
    assert api.headers["Content-Type"] == "application/json"  # never rendered as HTML


def test_other_event_text_is_escaped(notifier: NotifierServer, store: LocalStorage) -> None:
    event = make_event(run_id="manual__<img src=x onerror=alert(2)>")
    event["failed_tasks"] = ["<b>upscale</b>"]
    event["quality"]["suites"][0]["name"] = "<i>tiles</i>"
    assert sign_and_post(notifier.url, body_of(event), key="x").status_code == 201
    for path in ("/", "/runs/" + requests.utils.quote(event["run_id"], safe="")):
        response = requests.get(notifier.url + path, timeout=10)
        assert response.status_code == 200
        html = response.text
        assert_inert(html)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "<b>" not in html and "<i>tiles" not in html
    run_page = requests.get(notifier.url + "/runs/" + requests.utils.quote(event["run_id"], safe=""),
                            timeout=10).text
    assert "&lt;b&gt;upscale&lt;/b&gt;" in run_page
    assert "cannot identify image &lt;b&gt;x&lt;/b&gt;" in run_page


@pytest.mark.browser
def test_injected_text_runs_no_script_in_chromium(notifier: NotifierServer, store: LocalStorage) -> None:
    from tests.notifier.test_gallery_browser import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists() and not os.environ.get("CI"):
        pytest.skip("needs Debian's /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    write_images(store.root, DS, ["101", "102"])
    event = make_event(authors=(XSS, '"><img src=x onerror=alert(2)>'))
    event["quarantine"][0]["message"] = "<img src=x onerror=alert(3)>"
    assert sign_and_post(notifier.url, body_of(event), key="browser").status_code == 201
    dialogs: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(notifier.url)
                       else route.abort())
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            for path in ("/", "/runs/" + event["run_id"]):
                assert page.goto(notifier.url + path, wait_until="load").status == 200
                page.wait_for_timeout(200)  # give an injected onerror handler its chance to fire
            assert XSS in page.locator("body").inner_text()
        finally:
            browser.close()
    assert dialogs == []


# --------------------------------------------------------------------------- secrets


S3_SECRET = "s3-Secret-Key-0b7d1f3a-NEVER-SHOWN"
S3_KEY_ID = "AKIARELIABILITY0TEST"


def test_secrets_never_appear_in_logs_reports_or_pages(
        photos_dir: Path, aws_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    """fetch -> (compute stand-in) -> report -> notify -> pages, with S3 and the notifier reached
    through Airflow connections whose passwords are distinctive; then grep everything written."""
    pytest.importorskip("airflow.providers.amazon.aws.hooks.s3")
    import boto3

    caplog.set_level(logging.DEBUG)
    bucket = f"sec-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "SUPERRES_CALLBACK_SECRET",
                 "SUPERRES_STORAGE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_RELIABILITY_S3", json.dumps({
        "conn_type": "aws", "login": S3_KEY_ID, "password": S3_SECRET,
        "extra": {"region_name": "us-east-1", "endpoint_url": aws_env}}))
    storage_uri = f"s3://{bucket}/pipeline"
    pipeline_storage = open_storage(storage_uri, aws_conn_id="reliability_s3")

    server = NotifierServer(notifier_config(tmp_path, tmp_path / "unused", STORAGE=pipeline_storage))
    monkeypatch.setenv("AIRFLOW_CONN_NOTIFIER_DEFAULT", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": server.port, "schema": "http",
        "password": NOTIFIER_SECRET}))
    secrets = (S3_SECRET, NOTIFIER_SECRET)
    try:
        with FaultyPicsum(photos_dir) as source:
            source.faults["5"] = Fault("status", status=503)
            base = settings_for(source.url, num_images=6, storage_uri=storage_uri,
                                aws_conn_id="reliability_s3")
            run = describe_run({"ds": DS, "num_images": 6}, RUN_ID, None, None, base=base)
            assert not any(s in json.dumps(run) for s in secrets)  # the XCom every task reads
            fetched = bounded(lambda: tasks.fetch(run))
        manifest = pipeline_storage.read_json(f"raw/ds={DS}/_manifest.json")
        assert fetched["images"] == len(manifest["images"]) > 0
        _pretend_compute(pipeline_storage, manifest)
        bounded(lambda: tasks.report(run))
        assert bounded(lambda: notify_mod.notify(run, _notify_context()))["status"] == 201
        with pytest.raises(Exception) as refused:  # and a failure path: a wrong secret
            notify_mod.redeliver(DS, server.url, "wrong-" + NOTIFIER_SECRET[::-1], pipeline_storage)

        pages = [requests.get(server.url + p, timeout=10) for p in
                 ("/", "/runs/" + RUN_ID, "/api/runs", "/api/runs/" + RUN_ID, "/healthz", "/nope",
                  "/images/sr/ds=2026-01-05/0.png", "/images/../etc")]
        event = pipeline_storage.read_json(f"reports/ds={DS}/event.json")
        pages += [requests.get(server.url + "/images/" + i["sr"], timeout=10) for i in event["images"]]
        assert any(p.status_code == 200 and p.headers["Content-Type"] == "image/png" for p in pages)
        written = {key: pipeline_storage.read_bytes(key) for key in pipeline_storage.list("")}
        assert {f"reports/ds={DS}/run.json", f"reports/ds={DS}/event.json",
                f"reports/ds={DS}/quarantine.json", f"raw/ds={DS}/_manifest.json"} <= set(written)
        database = Path(server.config["DATABASE"]).read_bytes()
    finally:
        server.stop()

    out = capsys.readouterr()
    texts = {"logs": caplog.text, "stdout": out.out, "stderr": out.err, "error": str(refused.value),
             "pages": "".join(p.text for p in pages if not p.headers["Content-Type"].startswith("image/"))}
    for secret in secrets:
        for where, text in texts.items():
            assert secret not in text, f"secret found in {where}"
        for key, data in written.items():
            assert secret.encode() not in data, f"secret found in {key}"
        assert secret.encode() not in database
        for page in pages:
            assert all(secret not in v for v in page.headers.values())
    assert "***" in written[f"reports/ds={DS}/run.json"].decode() or '"callback_secret": ""' in \
        written[f"reports/ds={DS}/run.json"].decode()
    assert caplog.text  # the check above looked at real log output


def test_credentials_in_configured_urls_are_redacted_in_the_run_description(
        monkeypatch: pytest.MonkeyPatch) -> None:
    picsum = "http://picsum-user:PICSUM-URL-PASSWORD@127.0.0.1:8899"
    settings = Settings(picsum_url=picsum, notifier_url="http://n:NOTIFIER-URL-PASSWORD@127.0.0.1:8090")
    run = describe_run({}, RUN_ID, None, "2026-01-05", base=settings)
    public = json.dumps(run)
    assert "PICSUM-URL-PASSWORD" not in public and "NOTIFIER-URL-PASSWORD" not in public
    assert run["settings"]["picsum_url"] == "http://picsum-user:***@127.0.0.1:8899"
    # Tasks rebuild the real URL from their own environment, never from the XCom.
    monkeypatch.setenv("SUPERRES_PICSUM_URL", picsum)
    assert settings_of(run).picsum_url == picsum


def test_credentials_in_the_picsum_url_stay_out_of_fetch_output(
        faulty: FaultyPicsum, store: LocalStorage, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    password = "PICSUM-URL-PASSWORD-7731"
    url = faulty.url.replace("http://", f"http://reader:{password}@")
    faulty.faults["1"] = Fault("status", status=500)
    settings = settings_for(url, num_images=4, fetch_retries=1)
    manifest = bounded(lambda: fetch_partition(settings, DS, store))
    assert manifest["source"] == faulty.url
    for key in store.list(""):
        assert password.encode() not in store.read_bytes(key), key
    assert password not in caplog.text


# --------------------------------------------------------------------------- URLs come from configuration


def test_download_urls_in_the_listing_are_ignored(photos_dir: Path, store: LocalStorage,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The listing's ``download_url``/``url`` point at another server: it is never contacted."""
    _isolate_network(monkeypatch)
    with FaultyPicsum(photos_dir) as source, FaultyPicsum(photos_dir) as decoy:
        listing = [dict(p.info(decoy.url), url=f"{decoy.url}/page/{p.id}") for p in source.photos]
        source.set_listing(json.dumps(listing).encode())
        manifest = bounded(lambda: fetch_partition(settings_for(source.url, num_images=3), DS, store))
        assert len(manifest["images"]) == 3
        assert all(i["source_url"].startswith(source.url + "/id/") for i in manifest["images"])
        assert decoy.paths == []


def test_run_params_cannot_redirect_the_source_storage_or_notifier() -> None:
    """Trigger-form params reach only the run's shape; endpoints come from the deployment's config."""
    base = Settings(picsum_url="http://127.0.0.1:8899", notifier_url="http://127.0.0.1:8090")
    params = {"picsum_url": "http://evil.invalid", "notifier_url": "http://evil.invalid",
              "storage_uri": "/tmp/evil", "notifier_conn_id": "evil", "aws_conn_id": "evil",
              "picsum_allowed_hosts": "evil.invalid", "num_images": 3}
    run = describe_run(params, RUN_ID, None, "2026-01-05", base=base)
    assert set(RUN_PARAMS) == {"num_images", "scale", "tile_size", "image_width", "image_height", "mode"}
    settings = run["settings"]
    assert settings["num_images"] == 3
    for name in ("picsum_url", "notifier_url", "storage_uri", "notifier_conn_id", "aws_conn_id",
                 "picsum_allowed_hosts"):
        assert settings[name] == getattr(base, name), name


def test_redelivery_posts_only_to_the_configured_notifier(store: LocalStorage, notifier: NotifierServer,
                                                         photos_dir: Path) -> None:
    """URLs inside the saved event (outputs, a planted callback_url) never decide where it goes."""
    with FaultyPicsum(photos_dir) as decoy:
        event = dict(make_event(), idempotency_key="k-redeliver", callback_url=decoy.url + "/api/callbacks")
        event["outputs"] = {"sr": decoy.url + "/sr", "reports": decoy.url + "/reports"}
        store.write_json(f"reports/ds={DS}/event.json", event)
        assert notify_mod.redeliver(DS, notifier.url, NOTIFIER_SECRET, store) == 201
        assert decoy.paths == [] and notifier.events() == 1


def test_redirect_off_the_configured_hosts_is_refused(faulty: FaultyPicsum, photos_dir: Path,
                                                      store: LocalStorage) -> None:
    with FaultyPicsum(photos_dir) as decoy:  # another port on loopback: a different origin
        for photo in faulty.photos:
            faulty.faults[photo.id] = Fault("redirect", location=decoy.url + "/id/{pid}/64/48")
        manifest = bounded(lambda: fetch_partition(settings_for(faulty.url, num_images=2), DS, store))
        assert {q["reason"] for q in manifest["quarantined"]} == {"redirect_refused"}
        assert decoy.url.removeprefix("http://") in manifest["quarantined"][0]["message"]
        assert decoy.paths == []  # refused before connecting

        allowed = settings_for(faulty.url, num_images=2, picsum_allowed_hosts="127.0.0.1")
        manifest = bounded(lambda: fetch_partition(allowed, DS, store))
        assert len(manifest["images"]) == 2 and len(decoy.paths) == 2  # allow-listed: followed


def test_host_allow_list_rules() -> None:
    allowed = fetch.parse_allowed_hosts(" fastly.picsum.photos, *.cdn.example ,")
    base = "https://picsum.photos"
    assert fetch.host_allowed("https://picsum.photos/id/1/2/3", base, allowed)
    assert fetch.host_allowed("https://fastly.picsum.photos/id/1/2/3.jpg?hmac=x", base, allowed)
    assert fetch.host_allowed("https://eu.cdn.example/x", base, allowed)
    assert not fetch.host_allowed("https://cdn.example.evil.com/x", base, allowed)
    assert not fetch.host_allowed("https://evil.com/x", base, allowed)
    assert not fetch.host_allowed("https://picsum.photos.evil.com/x", base, allowed)
    assert not fetch.host_allowed("http://fastly.picsum.photos/x", base, allowed)  # no https downgrade
    assert not fetch.host_allowed("file:///etc/passwd", base, allowed)
    assert not fetch.host_allowed("ftp://fastly.picsum.photos/x", base, allowed)
    assert not fetch.host_allowed("http://127.0.0.1:9/x", "http://127.0.0.1:8899", allowed)  # other port


def test_redact_url() -> None:
    assert fetch.redact_url("https://user:pw@host:8443/x?q=1") == "https://host:8443/x?q=1"
    assert fetch.redact_url("http://host/x") == "http://host/x"


# --------------------------------------------------------------------------- generated passwords


WELL_KNOWN = {"", "admin", "airflow", "password", "changeme", "secret", "test"}


def test_make_up_generates_the_admin_password_once_and_keeps_it_private(tmp_path: Path) -> None:
    home = tmp_path / "airflow-home"
    password, new = stack.admin_password(home)
    assert new and password not in WELL_KNOWN and len(password) >= 16
    path = home / "simple_auth_manager_passwords.json.generated"
    assert json.loads(path.read_text()) == {"admin": password}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # only the owner can read it
    assert stack.admin_password(home) == (password, False)  # shown once: later calls say "not new"
    other, _ = stack.admin_password(tmp_path / "another-home")
    assert other != password  # generated, not a constant


def test_a_damaged_password_file_is_replaced_by_a_fresh_password(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "simple_auth_manager_passwords.json.generated").write_text("{not json")
    password, new = stack.admin_password(home)
    assert new and password not in WELL_KNOWN and len(password) >= 16


def test_the_embedded_callback_secret_is_generated_and_private(tmp_path: Path) -> None:
    secret = services.callback_secret(tmp_path)
    assert len(secret) >= 32 and secret == services.callback_secret(tmp_path)
    assert stat.S_IMODE((tmp_path / "callback_secret").stat().st_mode) == 0o600
    assert services.callback_secret(tmp_path / "elsewhere") != secret


def test_the_notifier_never_shows_its_secret(notifier: NotifierServer, store: LocalStorage,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """Every answer the notifier gives, accepted or rejected, and its log: no secret in any of it."""
    caplog.set_level(logging.DEBUG)
    write_images(store.root, DS, ["101", "102"])
    event = make_event()
    body = body_of(event)
    headers = signing.sign(body, NOTIFIER_SECRET)
    big = dict(event, padding="x" * 70_000)
    url = notifier.url
    responses = [
        sign_and_post(url, body, key="a", signed=False, headers=headers),  # stored
        sign_and_post(url, body, key="a", signed=False, headers=headers),  # duplicate
        sign_and_post(url, body, key="b", signed=False, headers=headers),  # replay
        sign_and_post(url, body + b" ", key="c", signed=False, headers=headers),  # bad signature
        sign_and_post(url, body, signed=False),  # unsigned
        sign_and_post(url, body, timestamp=1),  # stale
        sign_and_post(url, b"{", key="d"),  # malformed JSON
        sign_and_post(url, b"{}", key="e"),  # invalid event
        sign_and_post(url, body_of(big), key="f"),  # too large
        sign_and_post(url, body, key=None),  # no idempotency key
    ]
    for path in ("/", "/runs/" + event["run_id"], "/runs/unknown", "/api/runs",
                 "/api/runs/" + event["run_id"], "/healthz", "/images/sr/ds=2026-01-05/101.png",
                 "/no-such-page"):
        responses.append(requests.get(url + path, timeout=10))
    assert [r.status_code for r in responses[:10]] == [201, 200, 409, 401, 401, 401, 400, 400, 413, 400]
    for response in responses:
        assert NOTIFIER_SECRET.encode() not in response.content
        assert all(NOTIFIER_SECRET not in value for value in response.headers.values())
    assert "callback rejected" in caplog.text and NOTIFIER_SECRET not in caplog.text
    assert NOTIFIER_SECRET not in repr(notifier.app.config)
