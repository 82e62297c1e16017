"""One run writes a date at a time: the storage lease behind same-date concurrency safety.

Both backends are exercised for real: a directory, and S3 on moto over HTTP
(``If-None-Match: *`` conditional puts).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from superres.orchestration import lease
from superres.pipeline import layout
from superres.storage import Storage, open_storage
from tests.conftest import ROOT

DS = "2026-02-03"


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return open_storage(str(tmp_path / "store"))
    bucket = request.getfixturevalue("s3_bucket")
    return open_storage(f"s3://{bucket}/base")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_create_exclusive_is_compare_and_set(storage: Storage) -> None:
    assert storage.create_exclusive("locks/x.json", b"first") is True
    assert storage.create_exclusive("locks/x.json", b"second") is False
    assert storage.read_bytes("locks/x.json") == b"first"


def test_second_run_waits_then_fails_naming_the_holder(storage: Storage) -> None:
    clock = FakeClock()
    held = lease.hold(storage, DS, "scheduled__A#1", ttl_s=600, wait_s=60, clock=clock, sleep=clock.sleep)
    assert held["owner"] == "scheduled__A#1"
    with pytest.raises(lease.LeaseHeld, match=r"ds=2026-02-03 is being written by run 'scheduled__A#1'"):
        lease.hold(storage, DS, "manual__B#2", ttl_s=600, wait_s=60, poll_s=5, clock=clock, sleep=clock.sleep)
    assert clock.now >= 1_000_060.0  # it waited the whole wait_s before giving up
    assert storage.read_json(layout.lease_key(DS))["owner"] == "scheduled__A#1"


def test_holder_renews_and_other_dates_are_independent(storage: Storage) -> None:
    clock = FakeClock()
    first = lease.hold(storage, DS, "A#1", ttl_s=600, wait_s=0, clock=clock, sleep=clock.sleep)
    clock.now += 500
    renewed = lease.hold(storage, DS, "A#1", ttl_s=600, wait_s=0, clock=clock, sleep=clock.sleep)
    assert renewed["acquired_at"] == first["acquired_at"] and renewed["expires_at"] == clock.now + 600
    # A backfill of another date is never blocked by this one.
    other = lease.hold(storage, "2026-02-04", "B#2", ttl_s=600, wait_s=0, clock=clock, sleep=clock.sleep)
    assert other["owner"] == "B#2"


def test_waiting_run_gets_the_date_when_the_holder_releases(storage: Storage) -> None:
    clock = FakeClock()
    lease.hold(storage, DS, "A#1", ttl_s=600, wait_s=0, clock=clock, sleep=clock.sleep)

    def sleep_and_release(s: float) -> None:
        clock.sleep(s)
        assert lease.release(storage, DS, "A#1") is True

    got = lease.hold(storage, DS, "B#2", ttl_s=600, wait_s=60, poll_s=5, clock=clock, sleep=sleep_and_release)
    assert got["owner"] == "B#2"
    assert lease.release(storage, DS, "A#1") is False  # A no longer holds it: releasing is a no-op
    assert storage.read_json(layout.lease_key(DS))["owner"] == "B#2"


def test_expired_lease_of_a_killed_run_is_taken_over(storage: Storage) -> None:
    clock = FakeClock()
    lease.hold(storage, DS, "killed#1", ttl_s=600, wait_s=0, clock=clock, sleep=clock.sleep)
    clock.now += 601
    got = lease.hold(storage, DS, "next#2", ttl_s=600, wait_s=0, clock=clock, sleep=clock.sleep)
    assert got["owner"] == "next#2"


def test_concurrent_acquirers_get_exactly_one_winner(storage: Storage) -> None:
    winners: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def contend(owner: str) -> None:
        barrier.wait()
        try:
            lease.hold(storage, DS, owner, ttl_s=600, wait_s=0)
            winners.append(owner)
        except lease.LeaseHeld:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=contend, args=(f"run{i}#t",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(winners) == 1
    assert storage.read_json(layout.lease_key(DS))["owner"] == winners[0]


# --------------------------------------------------------------------------- a killed make run


def _hold_in_a_child(store: Path, owner: str, *, stay: bool) -> subprocess.Popen:
    """A process that takes the date's lease as ``make run``'s dags test does, then exits or stays."""
    code = ("import sys, time\n"
            "from superres.orchestration import lease\n"
            "from superres.storage import open_storage\n"
            f"lease.hold(open_storage({str(store)!r}), {DS!r}, {owner!r}, ttl_s=600, wait_s=0,"
            " process_scoped=True)\n"
            "print('held', flush=True)\n"
            f"time.sleep({600 if stay else 0})\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_the_lease_of_a_run_whose_process_is_gone_is_taken_over_at_once(tmp_path: Path) -> None:
    store = tmp_path / "store"
    child = _hold_in_a_child(store, "killed#1", stay=False)
    child.wait(timeout=60)
    record = open_storage(str(store)).read_json(layout.lease_key(DS))
    assert record["process"]["pid"] == child.pid and record["expires_at"] > time.time()
    clock = FakeClock()
    got = lease.hold(open_storage(str(store)), DS, "next#2", ttl_s=600, wait_s=3600,
                     clock=clock, sleep=clock.sleep)
    assert got["owner"] == "next#2"
    assert clock.now == 1_000_000.0  # no waiting at all


def test_a_live_process_scoped_holder_is_waited_for(tmp_path: Path) -> None:
    store = tmp_path / "store"
    child = _hold_in_a_child(store, "alive#1", stay=True)
    try:
        clock = FakeClock()
        with pytest.raises(lease.LeaseHeld, match="alive#1"):
            lease.hold(open_storage(str(store)), DS, "next#2", ttl_s=600, wait_s=120, poll_s=10,
                       clock=clock, sleep=clock.sleep)
        assert clock.now >= 1_000_000.0 + 120
    finally:
        child.kill()
        child.wait()


def test_a_waiting_run_says_what_it_waits_for_every_minute(storage: Storage, caplog) -> None:
    clock = FakeClock()
    lease.hold(storage, DS, "A#1", ttl_s=6000, wait_s=0, clock=clock, sleep=clock.sleep)
    with caplog.at_level("WARNING", logger=lease.__name__), pytest.raises(lease.LeaseHeld):
        lease.hold(storage, DS, "B#2", ttl_s=6000, wait_s=300, poll_s=10, clock=clock, sleep=clock.sleep)
    said = [r.getMessage() for r in caplog.records if "waiting for run A#1" in r.getMessage()]
    assert len(said) == 5, said  # at 0, 60, 120, 180 and 240 s of the 300
    assert "waited 0s of up to 300s" in said[0] and "waited 240s" in said[-1]


@pytest.mark.parametrize(("change", "gone"), [
    ({}, False),  # this very process: alive
    ({"started": -1.0}, True),  # the pid now belongs to a younger process
    ({"host": "another-host"}, False),  # cannot be checked from here: no proof
    ({"pid": "x"}, False),
])
def test_holder_gone_needs_proof(change: dict, gone: bool) -> None:
    record = {"owner": "r#1", "process": {**lease.this_process(), **change}}
    assert lease.holder_gone(record) is gone
    assert lease.holder_gone({"owner": "r#1"}) is False  # a lease that names no process
