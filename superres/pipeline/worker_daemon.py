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
added later (``--py-files``, ``addPyFile``) are still re-read.  Spark starts it
instead of ``pyspark.daemon`` through ``spark.python.daemon.module``
(:data:`superres.pipeline.spark.SESSION_DEFAULTS`); the workers need the ``superres``
package installed, which they already do to run the jobs' functions.
"""

from __future__ import annotations

import os
import sys
import zipimport
from collections.abc import Iterable


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


def main() -> None:
    keep_archive_directories(spark_archives(sys.path))
    from pyspark import daemon  # reads sys.argv[1] (the worker module) as under ``-m pyspark.daemon``

    daemon.manager()


if __name__ == "__main__":
    main()
