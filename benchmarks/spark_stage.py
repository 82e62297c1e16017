"""The Spark inference stage (``spark_stage``), and the seed design, a per-row UDF, as its
peer (``seed_udf``).

:func:`run` times :func:`superres.pipeline.inference.run_stage` (what ``spark_jobs/inference.py``
runs) on a live ``local[*]`` session: tiles Parquet -> batched FSRCNN in
``mapInArrow`` -> SR tiles Parquet, timed from the read to the written files.
The first run starts the Python workers and builds their models (reported as
``cold``); the figure is the median of the warm runs that follow, as in a
long-lived cluster or any job with more than one batch of work.

:func:`run_seed` times the naive design the project started from: non-overlapping 16x16 patches,
one row each, a plain (pickled, row-at-a-time) Python UDF that rebuilds the
model from the broadcast weights on every call.  Same session, same cores.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import Image, median, timed, two_point_line
from superres import colour, tiling
from superres.engine import UNIT, Upscaler, luma
from superres.pipeline.inference import run_stage
from superres.pipeline.split import TILE_SCHEMA

PATCH = 16


def split_tiles(img: Image, tile: int, halo: int) -> list[tiling.Tile]:
    """The halo tiles split cuts for this image: even tiles no larger than ``tile``, Y in [0, 1]."""
    cut = tiling.balanced_tile(*img.rgb.shape[:2], tile)
    return tiling.split(luma(img.rgb) / UNIT, img.image_id, cut, halo)[1]


def write_tiles(images: list[Image], path: Path, tile: int, halo: int, per_file: int = 8) -> int:
    """The split stage's output for these images: halo tile rows of Y in [0, 1]."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    count = 0
    for k in range(0, len(images), per_file):
        rows = []
        for img in images[k : k + per_file]:
            for t in split_tiles(img, tile, halo):
                rec = t.to_record()
                rec.update(min=float(t.pixels.min()), max=float(t.pixels.max()))
                rows.append(rec)
        pq.write_table(pa.Table.from_pylist(rows, schema=TILE_SCHEMA), path / f"part-{k:05d}.parquet")
        count += len(rows)
    return count


def stitch_from(path: Path, image: Image, scale: int) -> np.ndarray:
    table = pq.read_table(path, filters=[("image_id", "=", image.image_id)])
    cores = [(r["y"], r["x"], tiling.decode_sr_pixels(r["pixels"], r["sr_h"], r["sr_w"]))
             for r in table.to_pylist()]
    h, w = image.rgb.shape[:2]
    return tiling.stitch(cores, h, w, scale) * UNIT


def tree_cpu_s() -> dict[str, float]:
    """CPU-seconds so far of this process (the stage's driver) and its children, by role.

    The children are the gateway JVM and, under it, the Python workers, which live
    from round to round (``spark.python.worker.reuse``), so differences are per round.
    """
    import psutil

    from benchmarks.dag import classify

    me = psutil.Process()
    out = {"python_driver": sum(me.cpu_times()[:2]), "jvm": 0.0, "python_workers": 0.0}
    for p in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            role = classify(p)
            if role in out:
                out[role] += sum(p.cpu_times()[:2])
    return out


def run(spark, model, state: bytes, meta: dict[str, Any], images: list[Image], workdir: Path,
        tile: int, rounds: int = 3, backend: Callable[[], float] | None = None) -> dict[str, Any]:
    """The stage's rounds; ``backend`` (:func:`benchmarks.engine.probe`) times the engine's
    backend after each one.

    The shared 2-core machines' speed drifts by a third within minutes (benchmarks/README.md,
    *Reading the figures*), so the single-process reference is taken round by round beside the
    Spark stage, not only in the engine's measurement minutes earlier.
    """
    mp = sum(img.megapixels for img in images)
    tiles_path, out_path = workdir / "tiles", workdir / "sr_tiles"
    n_tiles = write_tiles(images, tiles_path, tile, model.spec.halo)

    def stage() -> dict[str, Any]:
        return run_stage(spark, str(tiles_path), str(out_path), state, meta, device="cpu")

    cold, info = timed(stage)
    print(f"  spark_stage cold (starts workers) {mp / cold:.3f} MP/s", flush=True)
    rates, backend_rates, cpu_rounds = [], [], []
    for _ in range(rounds):
        before = tree_cpu_s()
        seconds, _ = timed(stage)
        after = tree_cpu_s()
        cpu_rounds.append({k: round((after[k] - before[k]) / mp, 3) for k in after})
        rates.append(mp / seconds)
        print(f"  spark_stage warm {rates[-1]:.3f} MP/s", flush=True)
        if backend is not None:
            backend_rates.append(backend())
            print(f"  spark_stage single-process backend {backend_rates[-1]:.3f} MP/s", flush=True)
    # The same tile windows through the same backend in this process, all cores:
    # separates Spark's own cost from the cost of the tile layout.
    up = Upscaler(model, backend="fast")
    windows = {}
    for img in images:
        ts = split_tiles(img, tile, model.spec.halo)
        windows.setdefault(ts[0].pixels.shape, []).extend(t.pixels for t in ts)
    in_proc, _ = timed(lambda: [up.run_windows(ws, unit=True) for ws in windows.values()])
    # Output check: stitched SR tiles == whole-image SR of the backend (within 1 level).
    levels = 0
    for img in images[:2]:
        want = up.sr_plane(luma(img.rgb))
        got = stitch_from(out_path, img, model.spec.scale)
        levels = max(levels, int(np.abs(colour.to_uint8(want).astype(int)
                                        - colour.to_uint8(got).astype(int)).max()))
    conf = spark.sparkContext.getConf()
    return {
        "images": len(images), "megapixels": mp, "tiles": n_tiles, "tile": tile, "rounds": rounds,
        "spark_mp_s": median(rates), "spark_mp_s_rounds": rates, "spark_cold_mp_s": mp / cold,
        "backend_mp_s": median(backend_rates) if backend_rates else None,
        "backend_mp_s_rounds": backend_rates,
        # Core-seconds per LR MP of each warm round by role: what Spark adds beside the model.
        "cpu_s_per_mp_rounds": cpu_rounds,
        "cpu_s_per_mp": {k: median([r[k] for r in cpu_rounds]) for k in cpu_rounds[0]} if cpu_rounds else {},
        "cold_s": cold, "same_tiles_in_process_mp_s": mp / in_proc,
        "max_uint8_diff_vs_whole_image": levels,
        "master": conf.get("spark.master"), "partitions": info["partitions"], "shuffled": info["shuffled"],
        "threads_per_worker": info["threads"], "backend": info["backend"],
        "arrow_max_records_per_batch": spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch"),
    }


def ratio(b: dict[str, Any]) -> float | None:
    """The stage's figure: the warm Spark stage over the engine's backend timed between its rounds."""
    return b["spark_mp_s"] / b["backend_mp_s"] if b.get("backend_mp_s") else None


def summary(b: dict[str, Any]) -> dict[str, Any]:
    """One batch size's stage figures, for ``spark_stage.by_images``."""
    keys = ("images", "megapixels", "spark_mp_s", "spark_mp_s_rounds", "backend_mp_s",
            "backend_mp_s_rounds", "cold_s", "cpu_s_per_mp")
    return {**{k: b[k] for k in keys}, "ratio": ratio(b)}


def stage_fit(small: dict[str, Any], large: dict[str, Any]) -> dict[str, Any]:
    """The stage's seconds against its LR megapixels at two batch sizes: the fixed cost of a
    Spark job (intercept) and the throughput of one more megapixel (1 / slope)."""
    (m1, t1), (m2, t2) = ((b["megapixels"], b["megapixels"] / b["spark_mp_s"]) for b in (small, large))
    if m2 <= m1:
        raise ValueError("the stage fit needs two different batch sizes")
    fixed, slope = two_point_line(m1, t1, m2, t2)
    marginal = 1 / slope if slope > 0 else None
    backend = large.get("backend_mp_s")
    return {"fixed_s": fixed, "marginal_mp_s": marginal,
            "marginal_vs_single_process": marginal / backend if marginal and backend else None}


def write_patches(images: list[Image], path: Path) -> int:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    rows = []
    for img in images:
        y = luma(img.rgb) / UNIT
        h, w = y.shape
        for py in range(0, h - h % PATCH, PATCH):
            for px in range(0, w - w % PATCH, PATCH):
                rows.append({"image_id": img.image_id, "y": py, "x": px,
                             "pixels": tiling.encode_pixels(y[py : py + PATCH, px : px + PATCH])})
    pq.write_table(pa.Table.from_pylist(rows), path / "part-00000.parquet")
    return len(rows)


def seed_udf(state_bc, meta: dict[str, Any]):
    """The seed's per-row UDF: one 16x16 patch per call, the model rebuilt every call."""
    from pyspark.sql.functions import udf
    from pyspark.sql.types import BinaryType

    def sr_patch(pixels: bytes) -> bytes:
        import torch

        from superres.model import ModelMeta, model_from_bytes

        torch.set_num_threads(1)
        model = model_from_bytes(state_bc.value, ModelMeta(**meta), "cpu")  # per call
        x = torch.from_numpy(np.frombuffer(pixels, dtype="<f4").reshape(1, 1, PATCH, PATCH).copy())
        with torch.no_grad():
            return model(x).numpy().astype("<f4").tobytes()

    return udf(sr_patch, BinaryType(), useArrow=False)


def run_seed(spark, state: bytes, meta: dict[str, Any], images: list[Image], workdir: Path,
          partitions: int) -> dict[str, Any]:
    from pyspark.sql.functions import col

    mp = sum(img.megapixels for img in images)
    patches, out = workdir / "patches", workdir / "sr_patches"
    n = write_patches(images, patches)
    fn = seed_udf(spark.sparkContext.broadcast(state), meta)

    def stage(limit: int | None = None) -> None:
        df = spark.read.parquet(str(patches))
        if limit:
            df = df.limit(limit)
        df.repartition(partitions).withColumn("sr", fn(col("pixels"))).drop("pixels") \
            .write.mode("overwrite").parquet(str(out))

    stage(limit=2 * partitions)  # warm-up: Python workers up, torch imported
    seconds, _ = timed(stage)
    rate = mp / seconds
    print(f"  seed_udf per-row UDF {rate:.4f} MP/s ({n} patches in {seconds:.1f}s)", flush=True)
    return {"images": len(images), "patches": n, "patch": PATCH, "seconds": seconds, "seed_mp_s": rate,
            "partitions": partitions}
