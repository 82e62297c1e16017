"""``make run`` as a user drives it: bad arguments, failures, and being stopped."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize(("date", "why"), [
    ("../../x", "run date must look like YYYY-MM-DD"),
    ("2026-02-30", "is not a calendar date"),
    ("2026-01-05; touch pwned", "run date must look like YYYY-MM-DD"),
])
def test_make_run_refuses_a_bad_date_before_starting_anything(date: str, why: str) -> None:
    r = subprocess.run(["make", "-s", "run", f"DATE={date}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode != 0
    assert why in r.stderr, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert "notifier (" not in r.stdout and "Spark" not in r.stdout  # nothing was started
    assert not (ROOT / "pwned").exists()


@pytest.mark.parametrize("n", ["0", "-3", "many"])
def test_make_run_refuses_a_bad_photo_count(n: str) -> None:
    r = subprocess.run(["make", "-s", "run", "DATE=2026-01-05", f"N={n}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode != 0
    assert "--n: must be a positive integer" in r.stderr, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
