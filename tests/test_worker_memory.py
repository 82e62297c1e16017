"""superres.pipeline.worker_memory: a worker hands freed heap back when a partition is done."""

from __future__ import annotations

import subprocess
import sys

import pytest

from superres.pipeline import worker_memory

# Fragment ~400 MB of glibc heap (100 KB blocks, under the mmap threshold), free every other
# block, and report the process's RSS before and after trim_heap().
FRAGMENT = """
import json
from superres.pipeline.worker_memory import trim_heap

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

blocks = [bytes(100_000 + i % 7) for i in range(4000)]
for i in range(0, len(blocks), 2):
    blocks[i] = None
before = rss_mb()
gave_back = trim_heap()
print(json.dumps({"before": before, "after": rss_mb(), "gave_back": gave_back}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_trim_heap_returns_freed_heap_to_the_os() -> None:
    import json

    out = subprocess.run([sys.executable, "-c", FRAGMENT], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert got["gave_back"] is True
    # half of the 400 MB was freed; without the trim it all stays resident
    assert got["before"] - got["after"] > 100, got


def test_trimming_passes_batches_through_and_trims_once_they_end(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(worker_memory, "trim_heap", lambda: calls.append(1) or True)

    it = worker_memory.trimming(iter([1, 2, 3]))
    assert next(it) == 1 and calls == []  # not while the partition is still streaming
    assert list(it) == [2, 3] and calls == [1]

    abandoned = worker_memory.trimming(iter([1, 2, 3]))
    next(abandoned)
    abandoned.close()  # Spark stops reading (a limit, a failed task downstream)
    assert calls == [1, 1]

    def failing():
        yield 1
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        list(worker_memory.trimming(failing()))
    assert calls == [1, 1, 1]


def _doubled(batches, factor: int = 2):
    import pyarrow as pa

    for b in batches:
        yield pa.RecordBatch.from_pydict({"n": [v * factor for v in b.column(0).to_pylist()]})


def test_every_map_in_arrow_body_trims_the_worker_heap_when_its_partition_ends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The jobs' single way into mapInArrow wraps each body, so no stage can forget the trim."""
    from functools import partial

    import pyarrow as pa

    from superres.pipeline.spark import map_in_arrow

    trims: list[int] = []
    monkeypatch.setattr(worker_memory, "trim_heap", lambda: trims.append(1) or True)
    handed: dict = {}

    class Frame:  # records what a DataFrame's mapInArrow is given; Spark itself runs in the job tests
        def mapInArrow(self, fn, schema):  # noqa: N802 - Spark's name
            handed.update(fn=fn, schema=schema)
            return "mapped"

    schema = pa.schema([("n", pa.int64())])
    assert map_in_arrow(Frame(), partial(_doubled, factor=3), schema) == "mapped"
    assert handed["schema"].fieldNames() == ["n"]
    batches = handed["fn"](iter([pa.RecordBatch.from_pydict({"n": v}) for v in ([1, 2], [5])]))
    assert next(batches).column(0).to_pylist() == [3, 6]
    assert trims == []  # not while the partition is still being read
    assert [b.column(0).to_pylist() for b in batches] == [[15]]
    assert trims == [1]
