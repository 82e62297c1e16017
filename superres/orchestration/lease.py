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

A run whose every task runs inside one process (``make run``'s ``airflow dags
test``: ``process_scoped``) records that process in its lease.  When that process
is provably gone (no such pid on the same host, or the pid now belongs to a
younger process) the run is dead, and the next run takes the date over at once
instead of waiting for the lease to expire.  Under a scheduler each task is its
own process, so only the TTL can tell there.
"""

from __future__ import annotations

import json
import logging
import os
import socket
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


def _record(ds: str, owner: str, now: float, ttl_s: float, since: float | None = None,
            process: dict[str, Any] | None = None) -> dict[str, Any]:
    record = {"ds": ds, "owner": owner, "acquired_at": since or now, "renewed_at": now,
              "expires_at": now + ttl_s}
    if process:
        record["process"] = process
    return record


def this_process() -> dict[str, Any]:
    """Who this process is, in a form that tells it apart from a later one with the same pid."""
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def holder_gone(record: dict[str, Any]) -> bool:
    """True when the lease names the one process its run lives in, and that process has ended.

    Only a process on this host can be checked; anything else is not proof.
    """
    import psutil

    proc = record.get("process")
    if not isinstance(proc, dict) or proc.get("host") != socket.gethostname():
        return False
    try:
        p = psutil.Process(int(proc["pid"]))
        if p.status() == psutil.STATUS_ZOMBIE:
            return True
        return abs(p.create_time() - float(proc["started"])) > 1.0  # the pid was reused
    except psutil.NoSuchProcess:
        return True
    except (KeyError, TypeError, ValueError, psutil.Error):
        return False


WAIT_REPORT_S = 60.0  # how often a waiting run says again what it waits for


def hold(storage: Storage, ds: str, owner: str, *, ttl_s: float, wait_s: float, poll_s: float = 10.0,
         process_scoped: bool = False, clock: Callable[[], float] = time.time,
         sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Acquire the date's lease for ``owner``, or renew it if ``owner`` already holds it.

    Waits while another live run holds it, saying so every minute; raises
    :class:`LeaseHeld` after ``wait_s``.  ``process_scoped``: the whole run lives in
    this process, which the lease then names (see the module docstring).
    """
    key = layout.lease_key(ds)
    process = this_process() if process_scoped else None
    start = clock()
    deadline = start + wait_s
    reported: float | None = None
    while True:
        now = clock()
        current = _read(storage, ds)
        if current is None:
            record = _record(ds, owner, now, ttl_s, process=process)
            if storage.create_exclusive(key, json.dumps(record).encode()):
                log.info("ds=%s: lease acquired by %s", ds, owner)
                return record
            continue  # someone created it between our read and create: look again
        if current.get("owner") == owner:
            record = _record(ds, owner, now, ttl_s, since=current.get("acquired_at"), process=process)
            storage.write_json(key, record)
            return record
        gone = holder_gone(current)
        if gone or float(current.get("expires_at", 0)) <= now:
            why = (f"its process {current['process'].get('pid')} has ended" if gone else "it expired")
            log.warning("ds=%s: taking over the lease of run %s: %s", ds, current.get("owner"), why)
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
        if reported is None or now - reported >= WAIT_REPORT_S:
            log.warning("ds=%s: waiting for run %s, which holds the date (lease renewed at %s); "
                        "waited %.0fs of up to %.0fs", ds, current.get("owner"),
                        _iso(current.get("renewed_at")), now - start, wait_s)
            reported = now
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
