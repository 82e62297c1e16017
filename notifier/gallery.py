"""HTML pages: the gallery of recent images with the trend chart, and one page per run.

Views only gather rows and shape loosely structured parts of the event (quality
suites, timings, each image's flags) into simple lists; all formatting and
escaping is left to the templates (autoescaped, nothing marked safe).

An image the evaluate stage's per-image gate flagged (``metrics.images[].flags``
in the event: SR far below its bicubic, a near-constant output) is shown with
its flags, and the run's mean says how many flagged images it leaves out.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, abort, current_app, render_template

from . import db
from .chart import trend_chart
from .events import image_flags, source_shortfall

bp = Blueprint("gallery", __name__)


@bp.get("/")
def index() -> str:
    """Newest processed images side by side with their metrics, the runs and the PSNR-gain trend."""
    conn = db.get_db()
    cfg = current_app.config
    runs = db.recent_runs(conn, int(cfg["RUNS_ON_INDEX"]))
    return render_template(
        "gallery.html",
        images=_flagged(conn, db.recent_images(conn, int(cfg["GALLERY_SIZE"]))),
        runs=runs,
        latest_flagged=len(image_flags(db.event_document(runs[0]))) if runs else 0,
        chart=trend_chart(db.psnr_gain_trend(conn, int(cfg["TREND_POINTS"]))),
        refresh_s=int(cfg["REFRESH_S"]),
        gallery_size=int(cfg["GALLERY_SIZE"]),
        now=time.time(),
    )


@bp.get("/runs/<path:run_id>")
def run(run_id: str) -> str:
    """Everything one run reported: counts, failures, quarantine, quality, timings, images."""
    conn = db.get_db()
    row = db.latest_for_run(conn, run_id)
    if row is None:
        abort(404, description="No report has been received for this run.")
    doc = db.event_document(row)
    flags = image_flags(doc)
    return render_template(
        "run.html",
        run=row,
        doc=doc,
        images=[{**dict(img), "flags": flags.get(img["image_id"], ())}
                for img in db.images_of(conn, row["idempotency_key"])],
        flagged=len(flags),
        shortfall=source_shortfall(doc),
        reports=db.reports_for_run(conn, run_id),
        failed_tasks=[t for t in doc.get("failed_tasks") or [] if isinstance(t, str)],
        quarantine=[q for q in doc.get("quarantine") or [] if isinstance(q, dict)],
        quality=_quality(doc.get("quality")),
        timings=_timings(doc.get("timings")),
        outputs=sorted((doc.get("outputs") or {}).items()),
    )


def _flagged(conn: Any, rows: list[Any]) -> list[dict[str, Any]]:
    """Image rows as dicts with their ``flags``, read from each row's (latest) event once."""
    by_event: dict[str, dict[str, tuple[str, ...]]] = {}
    out = []
    for row in rows:
        key = row["idempotency_key"]
        if key not in by_event:
            event = db.latest_for_run(conn, row["run_id"])
            by_event[key] = image_flags(db.event_document(event)) \
                if event is not None and event["idempotency_key"] == key else {}
        out.append({**dict(row), "flags": by_event[key].get(row["image_id"], ())})
    return out


def _timings(raw: Any) -> list[dict[str, Any]]:
    """Task durations, longest first, with each bar's share of the longest."""
    if not isinstance(raw, dict):
        return []
    items = [
        (str(name), float(v))
        for name, v in raw.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and v == v and v >= 0
    ]
    longest = max((v for _, v in items), default=0.0) or 1.0
    return [{"task": n, "seconds": v, "share": v / longest} for n, v in sorted(items, key=lambda t: -t[1])]


def _quality(raw: Any) -> dict[str, Any] | None:
    """Great Expectations results in a shape the template can show, whatever the suite layout."""
    if not isinstance(raw, dict):
        return None
    suites = []
    for i, suite in enumerate(raw.get("suites") or []):
        if not isinstance(suite, dict):
            suites.append(
                {"name": f"suite {i + 1}", "success": None, "statistics": [], "checks": [], "raw": suite}
            )
            continue
        name = next(
            (
                suite[k]
                for k in ("name", "suite_name", "expectation_suite_name")
                if isinstance(suite.get(k), str)
            ),
            f"suite {i + 1}",
        )
        stats = suite.get("statistics")
        suites.append(
            {
                "name": name,
                "success": suite.get("success") if isinstance(suite.get("success"), bool) else None,
                "statistics": [
                    (k, v) for k, v in sorted(stats.items()) if isinstance(v, str | int | float | bool)
                ]
                if isinstance(stats, dict)
                else [],
                "checks": _checks(suite.get("results") or suite.get("expectations") or []),
                "raw": suite,
            }
        )
    return {"success": raw.get("success") if isinstance(raw.get("success"), bool) else None, "suites": suites}


def _checks(results: Any) -> list[dict[str, Any]]:
    checks = []
    for item in results if isinstance(results, list) else []:
        if not isinstance(item, dict):
            continue
        config = item.get("expectation_config") if isinstance(item.get("expectation_config"), dict) else item
        kwargs = config.get("kwargs") if isinstance(config.get("kwargs"), dict) else {}
        kind = (
            config.get("type") or config.get("expectation_type") or item.get("expectation") or "expectation"
        )
        column = kwargs.get("column", item.get("column"))
        success = item.get("success")
        checks.append(
            {
                "type": str(kind),
                "column": None if column is None else str(column),
                "success": success if isinstance(success, bool) else None,
            }
        )
    return checks
