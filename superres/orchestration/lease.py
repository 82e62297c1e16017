"""One writer per date: a lease object in storage, held by the DAG run that writes ``ds``.

Backfills run different dates side by side, which is safe because every path is
date-partitioned.  Two runs of the *same* date (a manual trigger beside the
scheduled run) would overwrite each other's staging and partitions, so each task
that writes first takes the date's lease; a second run waits for it (up to
``lease_wait_s``) and then fails with a message naming the holder.

The lease is created with the storage's compare-and-set (``create_exclusive``:
O_EXCL locally, ``If-None-Match: *`` on S3), renewed by every task of the
holding run, released by the final ``notify`` task, and expires after
``lease_ttl_s`` so that a run killed from outside cannot block its date forever.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from superres.pipeline import layout
from superres.storage import ObjectNotFound, Storage, StorageError

log = logging.getLogger(__name__)


class LeaseHeld(RuntimeError):
    """Another run is writing this date."""


def _read(storage: Storage, ds: str) -> dict[str, Any] | None:
    try:
        return storage.read_json(layout.lease_key(ds))
    except ObjectNotFound:
        return None
    except StorageError:  # unreadable/garbled lease: treat as stale, it is replaced below
        return {"owner": None, "expires_at": 0}


def _record(ds: str, owner: str, now: float, ttl_s: float, since: float | None = None) -> dict[str, Any]:
    return {"ds": ds, "owner": owner, "acquired_at": since or now, "renewed_at": now,
            "expires_at": now + ttl_s}


def hold(storage: Storage, ds: str, owner: str, *, ttl_s: float, wait_s: float, poll_s: float = 10.0,
         clock: Callable[[], float] = time.time,
         sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Acquire the date's lease for ``owner``, or renew it if ``owner`` already holds it.

    Waits while another live run holds it; raises :class:`LeaseHeld` after ``wait_s``.
    """
    key = layout.lease_key(ds)
    deadline = clock() + wait_s
    waited = False
    while True:
        now = clock()
        current = _read(storage, ds)
        if current is None:
            if storage.create_exclusive(key, json.dumps(_record(ds, owner, now, ttl_s)).encode()):
                log.info("ds=%s: lease acquired by %s", ds, owner)
                return _record(ds, owner, now, ttl_s)
            continue  # someone created it between our read and create: look again
        if current.get("owner") == owner:
            record = _record(ds, owner, now, ttl_s, since=current.get("acquired_at"))
            storage.write_json(key, record)
            return record
        if float(current.get("expires_at", 0)) <= now:
            log.warning("ds=%s: taking over the expired lease of %s", ds, current.get("owner"))
            # Re-read right before deleting so we only remove the stale record we saw.
            if _read(storage, ds) == current:
                storage.delete_prefix(layout.lease_prefix(ds))
            continue
        if now >= deadline:
            raise LeaseHeld(
                f"ds={ds} is being written by run {current.get('owner')!r} (lease renewed at "
                f"{_iso(current.get('renewed_at'))}, expires {_iso(current.get('expires_at'))}); "
                f"waited {wait_s:.0f}s. Rerun this date when that run has finished."
            )
        if not waited:
            log.info("ds=%s: run %s holds the date; waiting up to %.0fs", ds, current.get("owner"), wait_s)
            waited = True
        sleep(min(poll_s, max(deadline - now, 0.0)) or poll_s)


def release(storage: Storage, ds: str, owner: str) -> bool:
    """Give the lease up if ``owner`` holds it; True when something was released."""
    current = _read(storage, ds)
    if current is None or current.get("owner") != owner:
        return False
    storage.delete_prefix(layout.lease_prefix(ds))
    log.info("ds=%s: lease released by %s", ds, owner)
    return True


def _iso(ts: Any) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(ts)))
    except (TypeError, ValueError):
        return "?"
