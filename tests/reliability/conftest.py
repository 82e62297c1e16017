"""Fixtures for tests/reliability.  Each group is owned by one area; add new groups below, don't mix."""

from __future__ import annotations

# =========================================================================== I/O faults and security
# (source, storage, notification, security): defined in io_fixtures.py, everything on 127.0.0.1.
from tests.reliability.io_fixtures import faulty, notifier, photos_dir, store  # noqa: F401
