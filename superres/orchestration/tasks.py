"""The Python tasks of ``superres_daily``: fetch and the run report.

Each task is a transaction over one date's partition: it reads and writes only
``ds=<date>`` keys, and a rerun replaces what an earlier attempt wrote.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from superres.orchestration import lease
from superres.orchestration.run import lease_owner, settings_of
from superres.pipeline import layout
from superres.storage import ObjectNotFound, Storage, open_storage

log = logging.getLogger(__name__)

STAGES = ("split", "inference", "reconstruct", "quality", "evaluate")


def storage_for(run: dict[str, Any]) -> Storage:
    s = settings_of(run)
    conn = s.aws_conn_id if s.storage_uri.startswith("s3://") else None
    return open_storage(s.storage_uri, aws_conn_id=conn)


def hold_date(run: dict[str, Any], storage: Storage | None = None,
              wait_s: float | None = None) -> dict[str, Any]:
    """Take (or renew) the date's lease before writing anything for it; waits for another run."""
    s = settings_of(run)
    return lease.hold(storage or storage_for(run), run["ds"], lease_owner(run), ttl_s=s.lease_ttl_s,
                      wait_s=s.lease_wait_s if wait_s is None else wait_s, poll_s=s.lease_poll_s,
                      process_scoped=s.lease_process_scoped)


def release_date(run: dict[str, Any], storage: Storage | None = None) -> bool:
    return lease.release(storage or storage_for(run), run["ds"], lease_owner(run))


def fetch(run: dict[str, Any]) -> dict[str, Any]:
    """Fetch the date's photos into ``raw/ds=…`` (see superres.fetch)."""
    from superres.fetch import fetch_partition, source_counts

    t0 = time.time()
    storage = storage_for(run)
    hold_date(run, storage)
    # This run owns the date's reports from here on: drop every report a previous
    # run of the same date left, so nothing stale can be mistaken for this run's.
    storage.delete_prefix(layout.reports_prefix(run["ds"]))
    storage.write_json(layout.owner_key(run["ds"]), {"ds": run["ds"], "run_id": run["run_id"]})
    manifest = fetch_partition(settings_of(run), run["ds"], storage)
    seconds = round(time.time() - t0, 3)
    src = source_counts(manifest)
    storage.write_json(layout.report_key(run["ds"], "stages/fetch.json"), {
        "stage": "fetch", "ds": run["ds"], "seconds": seconds, "requested": src["requested"],
        "available": src["available"], "fetched": src["fetched"],
        "images": len(manifest["images"]), "quarantined": len(manifest["quarantined"]),
    })
    return {"requested": src["requested"], "available": src["available"], "fetched": src["fetched"],
            "images": len(manifest["images"]), "quarantined": len(manifest["quarantined"])}


def _read_stage(storage: Storage, ds: str, stage: str) -> dict[str, Any] | None:
    try:
        return storage.read_json(layout.report_key(ds, f"stages/{stage}.json"))
    except ObjectNotFound:
        return None


def _metrics_summary(storage: Storage, ds: str) -> dict[str, Any] | None:
    try:
        m = storage.read_json(layout.report_key(ds, "metrics.json"))
    except ObjectNotFound:
        return None
    return {"mean": m.get("mean"), "images": len(m.get("images", []))}


def _quality_summary(storage: Storage, ds: str) -> dict[str, Any] | None:
    try:
        q = storage.read_json(layout.report_key(ds, "quality.json"))
    except ObjectNotFound:
        return None
    suites = {s.get("name"): s.get("success") for s in q.get("suites", [])}
    return {"success": q.get("success"), "suites": suites}


def build_report(run: dict[str, Any], storage: Storage) -> dict[str, Any]:
    """``run.json``: counts that must reconcile, per-stage timings and the (public) config.

    ``source`` says how many photos were requested, how many the source lists and
    how many were fetched, with a ``shortfall`` sentence when the source had fewer
    than requested; ``counts.fetched`` is what was taken, so the counts reconcile either way.
    """
    from superres.fetch import source_counts

    ds = run["ds"]
    manifest = storage.read_json(layout.manifest_key(ds))
    source = source_counts(manifest)
    stages = {name: _read_stage(storage, ds, name) for name in ("fetch", *STAGES)}
    split_q = (stages["split"] or {}).get("quarantine", [])
    quarantined = list(manifest["quarantined"]) + [dict(q, source="split") for q in split_q]
    outputs = [k for k in storage.list(layout.sr_prefix(ds)) if k.endswith(".png")]
    counts = {
        "fetched": source["fetched"],
        "processed": len(outputs),
        "quarantined": len(quarantined),
    }
    report = {
        "ds": ds,
        "run_id": run["run_id"],
        "mode": run["settings"]["mode"],
        "scale": run["settings"]["scale"],
        "counts": counts,
        "source": source,
        "reconciled": counts["fetched"] == counts["processed"] + counts["quarantined"],
        "timings": {k: v["seconds"] for k, v in stages.items() if v},
        "quarantine": quarantined,
        "metrics": _metrics_summary(storage, ds),
        "quality": _quality_summary(storage, ds),
        "stages": stages,
        "outputs": {
            "raw": storage.uri(layout.raw_prefix(ds)),
            "sr": storage.uri(layout.sr_prefix(ds)),
            "reports": storage.uri(layout.reports_prefix(ds)),
            "images": outputs,
        },
        "config": run["settings"],
    }
    return report


def report(run: dict[str, Any]) -> dict[str, Any]:
    """Write ``reports/ds=…/run.json``; fail the run if the counts do not reconcile."""
    storage = storage_for(run)
    hold_date(run, storage)
    rep = build_report(run, storage)
    storage.write_json(layout.report_key(run["ds"], "run.json"), rep)
    c = rep["counts"]
    log.info("ds=%s: fetched %d = processed %d + quarantined %d", run["ds"], c["fetched"],
             c["processed"], c["quarantined"])
    if not rep["reconciled"]:
        raise RuntimeError(
            f"counts do not reconcile for ds={run['ds']}: fetched {c['fetched']} != processed "
            f"{c['processed']} + quarantined {c['quarantined']}"
        )
    return {"counts": c, "sr": rep["outputs"]["sr"], "reports": rep["outputs"]["reports"]}
