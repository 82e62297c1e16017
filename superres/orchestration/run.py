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


class RunParamsError(ValueError):
    """A run's params or settings that no retry can fix: the run fails at once."""


def resolve_ds(param_ds: str | None, logical_date: Any, run_after: Any) -> str:
    """The partition date for this run (UTC calendar date, ``YYYY-MM-DD``)."""
    if param_ds:
        try:
            return check_ds(str(param_ds))
        except ValueError as exc:
            raise RunParamsError(f"param ds: {exc}") from None
    for when in (logical_date, run_after):
        if when is not None:
            if isinstance(when, dt.datetime):
                if when.tzinfo is not None:
                    when = when.astimezone(dt.UTC)
                return when.date().isoformat()
            if isinstance(when, dt.date):
                return when.isoformat()
            return check_ds(str(when)[:10])
    raise RunParamsError("the run has no ds param, logical_date or run_after to take a date from")


def run_params(params: dict[str, Any]) -> dict[str, Any]:
    """The run-shape params that are set, type-checked: an integer param takes an integer
    (``3.0`` is one, ``True`` and ``"3"`` are not) and ``mode`` a string.  The trigger form's
    schema refuses these first; this catches what reaches a run another way."""
    out: dict[str, Any] = {}
    for name in RUN_PARAMS:
        value = params.get(name)
        if value is None:
            continue
        if name == "mode":
            if not isinstance(value, str):
                raise RunParamsError(f"param mode must be a string, got {value!r}")
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, bool) or not isinstance(value, int):
            raise RunParamsError(f"param {name} must be an integer, got {value!r}")
        out[name] = value
    return out


def describe_run(params: dict[str, Any], run_id: str, logical_date: Any, run_after: Any,
                 base: Settings | None = None) -> dict[str, Any]:
    """Settings (env + params) and the run's identity, as the XCom every task reads.

    Raises :class:`RunParamsError` with one sentence for params or settings that cannot
    make a run (a retry would fail the same way).
    """
    try:
        settings = (base or load()).override(run_params(params))
    except RunParamsError:
        raise
    except (ValueError, TypeError) as exc:
        raise RunParamsError(f"the run's settings are invalid: {exc}") from None
    ds = resolve_ds(params.get("ds"), logical_date, run_after)
    # run_id is unique within one Airflow, not across two (e.g. dag.test in two homes):
    # the token makes the date lease's owner unique everywhere.
    return {"ds": ds, "run_id": run_id, "token": uuid.uuid4().hex[:12], "settings": settings.public()}


def resolve(params: dict[str, Any], run_id: str, logical_date: Any, run_after: Any) -> dict[str, Any]:
    """The ``resolve`` task: :func:`describe_run`, failing the task without retries on bad params."""
    try:
        return describe_run(params, run_id, logical_date, run_after)
    except RunParamsError as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(exc)) from None


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
