"""Give a Python worker's freed heap back to the OS when a task's partition is done.

Spark reuses a Python worker from task to task, and the Spark tasks of a run share
their workers (``superres.pipeline.spark._remote_session``): the worker that split
photos goes on to run the model, then to stitch and score.  Memory a stage freed
stays in glibc's and Arrow's allocators, so each stage would start from the last
one's high-water mark.  Trimming when a partition's iterator is exhausted costs a
few milliseconds per task.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from functools import cache
from typing import TypeVar

T = TypeVar("T")


@cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def trim_heap() -> bool:
    """Release freed memory of glibc's heap and Arrow's default pool; True if glibc gave any back."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def trimming(batches: Iterator[T]) -> Iterator[T]:
    """``batches`` unchanged, then :func:`trim_heap` once they are exhausted (or abandoned)."""
    try:
        yield from batches
    finally:
        trim_heap()
