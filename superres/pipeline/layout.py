"""Where each date's data lives, under the storage base URI and the Spark staging area.

    raw/ds=YYYY-MM-DD/<image_id>.<ext> + _manifest.json   fetched photos
    quarantine/ds=YYYY-MM-DD/<image_id>.bin               rejected bodies, kept for inspection
    sr/ds=YYYY-MM-DD/<image_id>.png                       results
    reports/ds=YYYY-MM-DD/run.json, quality.json, ...     reports
    reports/ds=YYYY-MM-DD/owner.json                      the run those reports belong to
    locks/ds=YYYY-MM-DD/lease.json                        the run writing this date
    <staging>/<dataset>/ds=YYYY-MM-DD/                    Parquet written by Spark

Every path is derived from a validated date, so one date can never write into
another's partition.
"""

from __future__ import annotations

import datetime as dt
import re

_DS = re.compile(r"^\d{4}-\d{2}-\d{2}$")

DATASETS = ("images", "tiles", "sr_tiles", "outputs", "evaluated", "metrics")


def check_ds(ds: str) -> str:
    """Accept only a real calendar date in ISO form (also blocks path tricks)."""
    if not isinstance(ds, str) or not _DS.match(ds):
        raise ValueError(f"run date must look like YYYY-MM-DD, got {ds!r}")
    try:
        dt.date.fromisoformat(ds)
    except ValueError as exc:
        raise ValueError(f"run date {ds!r} is not a calendar date ({exc})") from None
    return ds


def raw_prefix(ds: str) -> str:
    return f"raw/ds={check_ds(ds)}"


def quarantine_prefix(ds: str) -> str:
    return f"quarantine/ds={check_ds(ds)}"


def sr_prefix(ds: str) -> str:
    return f"sr/ds={check_ds(ds)}"


def reports_prefix(ds: str) -> str:
    return f"reports/ds={check_ds(ds)}"


def lease_prefix(ds: str) -> str:
    return f"locks/ds={check_ds(ds)}/"


def lease_key(ds: str) -> str:
    return f"{lease_prefix(ds)}lease.json"


def manifest_key(ds: str) -> str:
    return f"{raw_prefix(ds)}/_manifest.json"


def report_key(ds: str, name: str) -> str:
    return f"{reports_prefix(ds)}/{name}"


def owner_key(ds: str) -> str:
    """Which run the date's reports belong to: written by its fetch right after clearing them."""
    return report_key(ds, "owner.json")


def staging_path(staging_uri: str, dataset: str, ds: str) -> str:
    """A Hive-style partition directory Spark writes natively (local, hdfs://, s3a://)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown staging dataset {dataset!r}")
    return f"{staging_uri.rstrip('/')}/{dataset}/ds={check_ds(ds)}"
