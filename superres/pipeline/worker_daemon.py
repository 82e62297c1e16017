"""Spark's Python worker daemon (``pyspark.daemon``), without re-reading Spark's archives per task.

Spark puts ``pyspark.zip``, ``py4j-*-src.zip`` and the spark-core jar first on every
Python worker's path, and pyspark's worker calls :func:`importlib.invalidate_caches`
before every task.  On Python 3.11 that makes every ``zipimporter`` re-read its
archive's whole central directory in pure Python, and there is one importer per
package imported from the zip (a dozen for ``pyspark.zip``'s 1,328 entries, two for
the jar's 5,359).  py-spy on the inference stage's workers put that at about 0.5 CPU-s
per task: two thirds of what a worker spent outside the model.

Those archives belong to the Spark installation and do not change while a worker
lives, so this daemon makes invalidation a no-op for exactly the archives that were
on its path when it started, then runs pyspark's own daemon unchanged.  Archives
added later (``--py-files``, ``addPyFile``) are still re-read.

It also ends itself after ``worker_daemon_idle_s`` (:class:`superres.config.Settings`)
with no worker alive: Spark 4.1 starts a daemon for each Spark Connect session and
never stops it (SPARK-54055), so a long-lived server kept one per run for good.  When
the JVM next needs a worker from a daemon that has gone, connecting fails and it starts
a new one (``PythonWorkerFactory``: "Assuming that daemon unexpectedly quit").  With no
worker alive the JVM holds none in its idle pool, so none is lost.  Spark starts it
instead of ``pyspark.daemon`` through ``spark.python.daemon.module``
(:data:`superres.pipeline.spark.SESSION_DEFAULTS`); the workers need the ``superres``
package installed, which they already do to run the jobs' functions.
"""

from __future__ import annotations

import os
import sys
import time
import zipimport
from collections.abc import Callable, Iterable
from types import ModuleType


def spark_archives(paths: Iterable[str]) -> frozenset[str]:
    """The zip/jar archives among ``paths`` (at start-up: the ones Spark put there)."""
    return frozenset(os.path.abspath(p) for p in paths
                     if p.endswith((".zip", ".jar")) and os.path.isfile(p))


def keep_archive_directories(archives: frozenset[str]) -> None:
    """Make ``zipimporter.invalidate_caches`` skip ``archives``; any other archive is re-read as before."""
    reread = zipimport.zipimporter.invalidate_caches
    if getattr(reread, "kept_archives", None) is not None:
        reread = reread.reread  # installed already: replace the set, do not stack wrappers

    def invalidate_caches(self: zipimport.zipimporter) -> None:
        if os.path.abspath(self.archive) not in archives:
            reread(self)

    invalidate_caches.kept_archives = archives  # type: ignore[attr-defined]
    invalidate_caches.reread = reread  # type: ignore[attr-defined]
    zipimport.zipimporter.invalidate_caches = invalidate_caches  # type: ignore[method-assign]


def has_children() -> bool:
    """Whether a worker this daemon forked is alive (pyspark's daemon ignores SIGCHLD: no zombies)."""
    try:
        return os.waitpid(-1, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return False


class IdleExit:
    """``select`` for pyspark's daemon loop (which polls every second) that ends the daemon idle.

    Idle means no worker alive and no request for one; after ``idle_s`` of it, the
    ``SystemExit`` raised here runs the daemon's own shutdown.
    """

    def __init__(self, select_module: ModuleType | object, idle_s: float,
                 has_children: Callable[[], bool] = has_children,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._select = select_module
        self.error = select_module.error  # the loop catches select.error
        self.idle_s = idle_s
        self._has_children = has_children
        self._clock = clock
        self._since = clock()

    def select(self, rlist, wlist, xlist, timeout=None):
        ready = self._select.select(rlist, wlist, xlist, timeout)
        now = self._clock()
        if ready[0] or self._has_children():
            self._since = now
        elif now - self._since >= self.idle_s:
            print(f"superres worker daemon: no Python workers for {self.idle_s:g} s; exiting "
                  "(Spark starts a new daemon when it needs one)", file=sys.stderr, flush=True)
            raise SystemExit(0)
        return ready


def main() -> None:
    keep_archive_directories(spark_archives(sys.path))
    from pyspark import daemon  # reads sys.argv[1] (the worker module) as under ``-m pyspark.daemon``

    from superres.config import Settings

    idle_s = Settings.from_env().worker_daemon_idle_s
    if idle_s > 0:
        daemon.select = IdleExit(daemon.select, idle_s)
    daemon.manager()


if __name__ == "__main__":
    main()
