"""Inference stage: tile rows -> SR core rows (Y in [0, 1], unclamped, float16), batched, one model a worker.

Spark hands each Python worker Arrow record batches (``mapInArrow``); tiles of
one window shape are stacked and run through FSRCNN as one forward pass.  The
model is rebuilt from broadcast ``state_dict`` bytes once per worker process and
cached, never pickled as a module and never re-created per row.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from superres import tiling
from superres.engine import Upscaler, configure_threads
from superres.weights import ModelMeta

SR_TILE_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("row", pa.int32()), ("col", pa.int32()),
    ("y", pa.int32()), ("x", pa.int32()), ("h", pa.int32()), ("w", pa.int32()),
    ("scale", pa.int32()), ("sr_h", pa.int32()), ("sr_w", pa.int32()),
    ("pixels", pa.binary()), ("min", pa.float32()), ("max", pa.float32()),
    ("nonfinite", pa.int32()),
])

_WORKER_CACHE: dict[tuple[int, str, int, int, str], Upscaler] = {}


def worker_upscaler(state: bytes, meta: dict[str, Any], device: str, batch_size: int,
                    threads: int, backend: str = "auto") -> Upscaler:
    """The worker's cached model: built on first use, reused for every later batch.

    ``threads`` torch threads per worker (the job passes ``spark.task.cpus``, so
    concurrent tasks never oversubscribe the cores); ``backend`` as in
    :data:`superres.engine.BACKENDS`.
    """
    key = (hash(state), device, batch_size, threads, backend)
    up = _WORKER_CACHE.get(key)
    if up is None:
        from superres.model import model_from_bytes  # torch: in the workers, never the driver

        configure_threads(threads)
        up = Upscaler(model_from_bytes(state, ModelMeta(**meta), device), batch_size, backend)
        _WORKER_CACHE.clear()
        _WORKER_CACHE[key] = up
    return up


def infer_records(records: list[dict[str, Any]], up: Upscaler) -> list[dict[str, Any]]:
    """Tile records -> SR core records, batching tiles that share a window shape."""
    out: list[dict[str, Any]] = []
    by_shape: dict[tuple[int, int], list[tiling.Tile]] = {}
    for rec in records:
        t = tiling.Tile.from_record(rec)
        by_shape.setdefault(t.pixels.shape, []).append(t)
    s = up.scale
    for group in by_shape.values():
        for t, sr in zip(group, up.run_windows([t.pixels for t in group], unit=True), strict=True):
            core = tiling.crop_core(t, sr, s)
            pixels = tiling.encode_sr_pixels(core)
            # Stats of the values as stored: a float32 beyond float16's range is inf there.
            finite = np.isfinite(tiling.decode_sr_pixels(pixels, *core.shape))
            out.append({
                "image_id": t.image_id, "row": t.row, "col": t.col, "y": t.y, "x": t.x,
                "h": t.h, "w": t.w, "scale": s, "sr_h": core.shape[0], "sr_w": core.shape[1],
                "pixels": pixels,
                "min": float(core[finite].min()) if finite.any() else float("nan"),
                "max": float(core[finite].max()) if finite.any() else float("nan"),
                "nonfinite": int((~finite).sum()),
            })
    return out


def infer_arrow(batches: Iterator[pa.RecordBatch], up: Upscaler) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        if batch.num_rows:
            yield pa.RecordBatch.from_pylist(infer_records(batch.to_pylist(), up), schema=SR_TILE_SCHEMA)


def run_stage(spark, tiles_path: str, out_path: str, state: bytes, meta: dict[str, Any], *,
              device: str = "auto", batch_size: int = 16, threads: int = 0, backend: str = "auto",
              partitions: int = 0) -> dict[str, Any]:
    """The inference stage on a live session: tiles Parquet -> batched FSRCNN -> SR tiles Parquet.

    ``state`` (the weights file's bytes, about 50 KB) travels inside the task
    closure, which works on a classic session and a Spark Connect one alike;
    every Python worker rebuilds the model from it once (:func:`worker_upscaler`).  ``threads`` 0 means
    ``spark.task.cpus``, so concurrent tasks never oversubscribe the cores.  The job
    ``spark_jobs/inference.py`` and the benchmarks both run exactly this.
    """
    from superres.pipeline.spark import map_in_arrow, num_partitions, parallelism, staging_writer

    threads = threads or int(spark.conf.get("spark.task.cpus", "1"))

    def infer(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return infer_arrow(batches, worker_upscaler(state, meta, device, batch_size, threads, backend))

    parts = partitions or parallelism(spark)
    tiles = spark.read.parquet(tiles_path)
    # The split stage writes one file per core already; shuffle only when the layout differs.
    shuffled = num_partitions(tiles) != parts
    if shuffled:
        tiles = tiles.repartition(parts)
    staging_writer(map_in_arrow(tiles, infer, SR_TILE_SCHEMA), "sr_tiles").parquet(out_path)
    return {"threads": threads, "partitions": parts, "backend": backend, "shuffled": shuffled}

