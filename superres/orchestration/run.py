"""Resolving a DAG run into a plain, JSON-able run description (no secrets).

The run date is, in order: an explicit ``ds`` param, the run's
``logical_date``, then its ``run_after``.  So scheduled runs, backfills and
manual triggers without a logical date all get a date.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from superres.config import Settings, is_masked, load
from superres.pipeline.layout import check_ds

# The params a user can set in the trigger form, and the Settings fields they map to.
RUN_PARAMS = ("num_images", "scale", "tile_size", "image_width", "image_height", "mode")


def resolve_ds(param_ds: str | None, logical_date: Any, run_after: Any) -> str:
    """The partition date for this run (UTC calendar date, ``YYYY-MM-DD``)."""
    if param_ds:
        return check_ds(str(param_ds))
    for when in (logical_date, run_after):
        if when is not None:
            if isinstance(when, dt.datetime):
                if when.tzinfo is not None:
                    when = when.astimezone(dt.UTC)
                return when.date().isoformat()
            if isinstance(when, dt.date):
                return when.isoformat()
            return check_ds(str(when)[:10])
    raise ValueError("the run has no ds param, logical_date or run_after to take a date from")


def describe_run(params: dict[str, Any], run_id: str, logical_date: Any, run_after: Any,
                 base: Settings | None = None) -> dict[str, Any]:
    """Settings (env + params) and the run's identity, as the XCom every task reads."""
    settings = (base or load()).override({k: params.get(k) for k in RUN_PARAMS})
    ds = resolve_ds(params.get("ds"), logical_date, run_after)
    # run_id is unique within one Airflow, not across two (e.g. dag.test in two homes):
    # the token makes the date lease's owner unique everywhere.
    return {"ds": ds, "run_id": run_id, "token": uuid.uuid4().hex[:12], "settings": settings.public()}


def lease_owner(run: dict[str, Any]) -> str:
    """Who holds the date's lease: this DAG run (see superres.orchestration.lease)."""
    return f"{run['run_id']}#{run.get('token', '')}"


def spark_session_id(run: dict[str, Any]) -> str:
    """The Spark Connect session the run's Spark tasks share (``superres.pipeline.spark``).

    Made from the lease owner, so it is the same for every task of the run and
    differs between runs, and between two Airflows that reuse a run_id.
    """
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"superres-pipeline:{lease_owner(run)}"))


def settings_of(run: dict[str, Any]) -> Settings:
    """Rebuild Settings from a run description; secrets come back from the environment."""
    public = {k: v for k, v in run["settings"].items() if not is_masked(v) and k != "callback_secret"}
    return load().override(public)
