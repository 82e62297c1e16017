"""Fault injection for Spark's Python workers, used only by tests/reliability.

Put this folder on PYTHONPATH and set ``SUPERRES_TEST_FAULTS`` to a JSON list of
``{"module": ..., "function": ..., "action": "raise"|"kill", "marker": PATH}``.
When a worker first calls that function and ``marker`` does not exist yet, the
marker is created and the fault fires: ``raise`` throws in that partition,
``kill`` SIGKILLs the worker process (as the OOM killer would).  Later calls, and
so the Airflow retry of the task, run normally.  Nothing here is imported unless
a test asks for it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import signal
import sys

_PLAN = json.loads(os.environ.get("SUPERRES_TEST_FAULTS") or "[]")


def _fire_once(fault: dict) -> None:
    try:
        fd = os.open(fault["marker"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    if fault["action"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected fault in {fault['module']}.{fault['function']} (pid {os.getpid()})")


def _patch(module, fault: dict) -> None:
    original = getattr(module, fault["function"])

    def faulty(*args, **kwargs):
        _fire_once(fault)
        return original(*args, **kwargs)

    setattr(module, fault["function"], faulty)


class _Finder(importlib.abc.MetaPathFinder):
    """Patches a target module right after it is first imported."""

    def find_spec(self, name, path, target=None):
        faults = [f for f in _PLAN if f["module"] == name]
        if not faults:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            for fault in faults:
                _patch(module, fault)

        spec.loader.exec_module = exec_and_patch
        return spec


if _PLAN:
    sys.meta_path.insert(0, _Finder())
