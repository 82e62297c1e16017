"""The run's last task: a signed REST callback to the notifier, success or failure.

The event is built from what the run left in storage (manifest, run/quality/
metrics reports, published files), saved as ``reports/ds=…/event.json`` before
it is sent, so a notifier outage loses nothing: clearing the task, or
``make notify DATE=…``, delivers it again.  The body is signed with
HMAC-SHA256 (superres.signing) and carries a timestamp and an idempotency key,
so a retried delivery is stored once.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from typing import Any

from superres import signing
from superres.config import Settings, load
from superres.pipeline import layout
from superres.storage import ObjectNotFound, Storage, open_storage

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "X-Idempotency-Key"
CALLBACK_PATH = "/api/callbacks"
# Answers worth retrying: the notifier is down, overloaded or restarting.  Any other refusal
# (400 bad event, 401 signature/secret, 404 wrong URL, 409 conflict, 413 too large, a 3xx)
# will be the same next time, so the task fails at once instead of retrying for minutes.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
PIPELINE_TASKS = ("resolve", "fetch", "split", "inference", "reconstruct", "quality", "evaluate", "report")


class DeliveryFailed(RuntimeError):
    """The notifier did not take the event; ``retryable`` says whether trying again can help."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def _maybe_json(storage: Storage, key: str) -> Any:
    try:
        return storage.read_json(key)
    except ObjectNotFound:
        return None


def build_event(run: dict[str, Any], storage: Storage, failed_tasks: list[str], dag_id: str,
                idempotency_key: str) -> dict[str, Any]:
    """The callback body: identity, state, counts, metrics, quality and where outputs are.

    Only what this run wrote is reported.  A run that never took the date (its fetch
    failed before clearing the reports, e.g. on another run's lease) reports nothing of
    the files it finds.  ``sr/`` keeps the last *published* outputs, so a rerun that
    failed before its evaluate published lists no images rather than an earlier run's.
    """
    from superres.fetch import source_counts

    ds = run["ds"]
    empty: dict[str, Any] = {"images": [], "quarantined": []}
    owned = (_maybe_json(storage, layout.owner_key(ds)) or {}).get("run_id") == run["run_id"]

    def ours(key: str) -> Any:
        return _maybe_json(storage, key) if owned else None

    manifest = ours(layout.manifest_key(ds)) or empty
    report = ours(layout.report_key(ds, "run.json")) or {}
    metrics = ours(layout.report_key(ds, "metrics.json"))
    quality = ours(layout.report_key(ds, "quality.json"))
    evaluate = ours(layout.report_key(ds, "stages/evaluate.json")) or {}
    published = set(storage.list(layout.sr_prefix(ds))) if evaluate.get("published") is True else set()
    artifacts = set(storage.list(layout.reports_prefix(ds)))
    images = []
    for img in manifest["images"]:
        iid = img["image_id"]
        sr_key = f"{layout.sr_prefix(ds)}/{iid}.png"
        bic = layout.report_key(ds, f"bicubic/{iid}.png")
        cmp_key = layout.report_key(ds, f"compare/{iid}.png")
        if sr_key not in published:
            continue
        images.append({
            "image_id": iid, "author": img.get("author"), "original": img["key"], "sr": sr_key,
            "bicubic": bic if bic in artifacts else None,
            "comparison": cmp_key if cmp_key in artifacts else None,
        })
    quarantine = report.get("quarantine") or manifest.get("quarantined", [])
    # Requested versus what the source has (``source.available``), so a short source is not
    # mistaken for a short run; an old run.json without it is read from the manifest.
    source = report.get("source") or (source_counts(manifest) if manifest is not empty else None)
    counts = report.get("counts") or {
        "fetched": source["fetched"] if source else 0,
        "processed": len(images), "quarantined": len(quarantine),
    }
    return {
        "run_id": run["run_id"],
        "idempotency_key": idempotency_key,
        "dag_id": dag_id,
        "ds": ds,
        "mode": run["settings"]["mode"],
        "scale": run["settings"]["scale"],
        "state": "failed" if failed_tasks else "success",
        "failed_tasks": failed_tasks,
        "counts": counts,
        "source": {"requested": source["requested"], "available": source["available"]} if source else None,
        "metrics": {"mean": metrics.get("mean"), "images": metrics.get("images", [])} if metrics else None,
        "images": images,
        "outputs": {"sr": storage.uri(layout.sr_prefix(ds)),
                    "reports": storage.uri(layout.reports_prefix(ds))},
        "quality": {"success": quality.get("success"), "suites": [
            {"name": s.get("name"), "success": s.get("success")} for s in quality.get("suites", [])]}
        if quality else None,
        "quarantine": [{"image_id": q.get("image_id"), "reason": q.get("reason"),
                        "message": q.get("message")} for q in quarantine],
        "timings": report.get("timings", {}),
    }


def encode(event: dict[str, Any]) -> bytes:
    body = dict(event, sent_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    return json.dumps(body, sort_keys=True, allow_nan=False, default=str).encode()


def signed_headers(body: bytes, secret: str, idempotency_key: str) -> dict[str, str]:
    return {"Content-Type": "application/json", IDEMPOTENCY_HEADER: idempotency_key,
            **signing.sign(body, secret)}


def resolve_secret(settings: Settings, conn_password: str | None) -> str:
    """The shared HMAC secret: SUPERRES_CALLBACK_SECRET, else the HTTP connection's password."""
    secret = settings.callback_secret.reveal() or (conn_password or "")
    if not secret:
        raise RuntimeError(
            "no callback secret: set SUPERRES_CALLBACK_SECRET or the password of the "
            f"'{settings.notifier_conn_id}' HTTP connection"
        )
    return secret


def deliver_via_airflow(event: dict[str, Any], settings: Settings) -> int:
    """POST through the Airflow HTTP connection; :class:`DeliveryFailed` unless 2xx."""
    import requests
    from airflow.providers.http.hooks.http import HttpHook

    hook = HttpHook(method="POST", http_conn_id=settings.notifier_conn_id)
    conn = hook.get_connection(settings.notifier_conn_id)
    secret = resolve_secret(settings, conn.password)
    body = encode(event)
    try:
        resp = hook.run(
            endpoint=CALLBACK_PATH, data=body,
            headers=signed_headers(body, secret, event["idempotency_key"]),
            extra_options={"timeout": 15, "allow_redirects": False, "check_response": False},
        )
    except requests.exceptions.RequestException as exc:
        raise DeliveryFailed(f"cannot reach the notifier ({settings.notifier_conn_id} connection, "
                             f"host {conn.host}): {type(exc).__name__}", retryable=True) from exc
    return _check(resp)


def _check(resp: Any) -> int:
    if 200 <= resp.status_code < 300:
        log.info("notifier answered %s: %s", resp.status_code, resp.text[:200])
        return resp.status_code
    retryable = resp.status_code in RETRYABLE_STATUSES or resp.status_code >= 500
    raise DeliveryFailed(f"notifier refused the callback: HTTP {resp.status_code} {resp.text[:300].strip()}",
                         retryable=retryable)


def failed_tasks_of(ti: Any, dag_id: str, run_id: str) -> list[str]:
    """Pipeline tasks of this run that failed (Airflow 3 task-SDK query).

    Tasks that never ran because an upstream failed (``upstream_failed``) are
    not listed: the event names the cause, not its consequences.
    """
    states = ti.get_task_states(dag_id=dag_id, run_ids=[run_id]).get(run_id, {})
    return sorted(t for t, s in states.items()
                  if t in PIPELINE_TASKS and str(getattr(s, "value", s)) == "failed")


def notify(run: dict[str, Any] | None, context: dict[str, Any]) -> dict[str, Any]:
    """Airflow task body: build, persist and deliver the event (trigger rule: all_done)."""
    ti, dag_run = context["ti"], context["dag_run"]
    dag_id, run_id = dag_run.dag_id, dag_run.run_id
    failed = failed_tasks_of(ti, dag_id, run_id)
    settings = load()
    if run is None:  # resolve itself failed: there is no date, so no event can ever be built
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"run {run_id} failed before its date was resolved, so there is "
                                   f"no event to send; tasks failed: {failed}")
    from superres.orchestration.lease import LeaseHeld
    from superres.orchestration.tasks import hold_date, release_date, storage_for

    storage = storage_for(run)
    key = f"{run_id}#{getattr(dag_run, 'clear_number', 0) or 0}"
    try:
        hold_date(run, storage, wait_s=0)
    except LeaseHeld as exc:
        # This run never got the date (its fetch timed out waiting): the date's reports
        # belong to the other run, so there is nothing of ours to record or announce.
        log.warning("not notifying: %s", exc)
        return {"state": "skipped", "failed_tasks": failed, "status": None}
    keep_date = False
    try:
        event = build_event(run, storage, failed, dag_id, key)
        storage.write_json(layout.report_key(run["ds"], "event.json"), event)
        try:
            status = deliver_via_airflow(event, settings)
        except DeliveryFailed as exc:
            saved = storage.uri(layout.report_key(run["ds"], "event.json"))
            if exc.retryable:  # Airflow retries the task (retries and backoff: see the DAG)
                # Hold the date while a retry is coming: a next run of it would clear
                # reports/ (this event included) before the event got through.
                keep_date = ti.try_number <= ti.max_tries
                raise DeliveryFailed(f"{exc}; the event is saved in {saved}", retryable=True) from exc
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(
                f"{exc}. Retrying cannot help; the event is saved in {saved}: fix the notifier or the "
                f"secret, then run `make notify DATE={run['ds']}`") from exc
    finally:
        if not keep_date:  # the run's last write is done: the next run of this date may start
            release_date(run, storage)
    return {"state": event["state"], "failed_tasks": failed, "status": status}


def redeliver(ds: str, url: str, secret: str, storage: Storage) -> int:
    """Send a date's saved event again, straight over HTTP (``make notify DATE=…``)."""
    import requests

    event = storage.read_json(layout.report_key(layout.check_ds(ds), "event.json"))
    body = encode(event)
    resp = requests.post(url.rstrip("/") + CALLBACK_PATH, data=body, timeout=15, allow_redirects=False,
                         headers=signed_headers(body, secret, event["idempotency_key"]))
    return _check(resp)


def main(argv: list[str] | None = None) -> int:
    import requests

    p = argparse.ArgumentParser(description="Re-deliver a run's saved callback event to the notifier.")
    p.add_argument("--date", required=True)
    p.add_argument("--url", default=None, help="notifier base URL (default: SUPERRES_NOTIFIER_URL)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    s = load()
    url = args.url or s.notifier_url
    storage = open_storage(s.storage_uri, aws_conn_id=None)
    try:
        status = redeliver(args.date, url, resolve_secret(s, None), storage)
    except ObjectNotFound:
        print(f"error: no saved event for ds={args.date} in {storage.uri(layout.reports_prefix(args.date))}/ "
              "(the run has not reached its notify task)", file=sys.stderr)
        return 1
    except (DeliveryFailed, requests.exceptions.RequestException) as exc:
        print(f"error: event for ds={args.date} not delivered to {url}: {exc}", file=sys.stderr)
        return 1
    print(f"event for ds={args.date} delivered to {url}: HTTP {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
