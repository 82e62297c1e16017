"""superres.pipeline.spark helpers that need no Spark application: sys.path, masters, server conf."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from superres.pipeline.spark import IMAGE_ROWS_PER_BATCH, SESSION_DEFAULTS, server_conf

PROBE = """
import json, sys
from superres.pipeline.spark import prefer_installed_pyspark
dropped = prefer_installed_pyspark()
import pyspark
print(json.dumps({"dropped": dropped, "pyspark": pyspark.__file__}))
"""


def _probe(pythonpath: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _installed_pyspark() -> Path:
    import importlib.util

    return Path(importlib.util.find_spec("pyspark").origin).parent


def test_the_zip_spark_submit_prepends_is_dropped_for_the_installed_package() -> None:
    lib = _installed_pyspark() / "python" / "lib"
    zips = sorted(str(p) for p in lib.glob("*.zip"))
    assert any(Path(z).name == "pyspark.zip" for z in zips)
    # Without the helper, spark-submit's PYTHONPATH makes Python import pyspark from the zip.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(zips)}
    plain = subprocess.run([sys.executable, "-c", "import pyspark; print(pyspark.__file__)"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert "pyspark.zip" in plain

    got = _probe(zips)
    assert sorted(got["dropped"]) == zips
    assert Path(got["pyspark"]).parent == _installed_pyspark()


def test_a_separate_spark_distribution_is_left_alone(tmp_path: Path) -> None:
    other = tmp_path / "spark" / "python" / "lib" / "pyspark.zip"
    other.parent.mkdir(parents=True)
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("pyspark/__init__.py", "DISTRIBUTION = True\n")
    got = _probe([str(other)])
    assert got["dropped"] == []
    assert got["pyspark"] == str(other / "pyspark" / "__init__.py")


def test_server_conf_carries_the_session_defaults_and_local_parallelism() -> None:
    conf = server_conf("local[3]")
    assert {k: conf[k] for k in SESSION_DEFAULTS} == SESSION_DEFAULTS
    assert conf["spark.default.parallelism"] == "3"
    assert conf["spark.sql.shuffle.partitions"] == "6"
    assert conf["spark.shuffle.compress"] == conf["spark.shuffle.spill.compress"] == "false"
    cluster = server_conf("spark://master:7077")
    assert "spark.default.parallelism" not in cluster and "spark.sql.shuffle.partitions" not in cluster
    assert "spark.shuffle.compress" not in cluster


WORKER_PROBE = """
import json, sys
from superres.pipeline.spark import session

def sizes(batches):
    import pyarrow as pa
    for b in batches:
        yield pa.RecordBatch.from_pylist([{"n": b.num_rows}])

def daemon(batches):
    import pyarrow as pa, sys, zipimport
    kept = getattr(zipimport.zipimporter.invalidate_caches, "kept_archives", None)
    yield pa.RecordBatch.from_pylist([{"module": sys.modules["__main__"].__spec__.name,
                                       "kept": json.dumps(sorted(kept or []))}])

def probe(spark):
    return [r["n"] for r in spark.range(0, 40, 1, 1).mapInArrow(sizes, "n long").collect()]

spark = session("batch-probe")
default = probe(spark)
worker = spark.range(0, 1, 1, 1).mapInArrow(daemon, "module string, kept string").collect()[0]
images = probe(session("batch-probe", rows_per_batch=int(sys.argv[1])))

# 40 distinct rows of 1.2 MB, like SR PNGs, written as a staging table.
from superres.pipeline.spark import staging_writer
import glob, pyarrow.parquet as pq
big = spark.range(0, 40, 1, 1).selectExpr(
    "concat(unbase64(repeat('QUJD', 400000)), cast(cast(id AS string) AS binary)) AS png")
staging_writer(big, "outputs").parquet(sys.argv[2])
metas = [pq.ParquetFile(f).metadata for f in glob.glob(sys.argv[2] + "/*.parquet")]
groups = [[g.num_rows, g.total_byte_size] for m in metas for g in map(m.row_group, range(m.num_row_groups))]
print("PROBE " + json.dumps({"default": default, "images": images, "row_groups": groups,
                             "daemon": worker["module"], "kept": json.loads(worker["kept"])}))
"""


@pytest.fixture(scope="module")
def worker_probe(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One local[1] application that reports what its Python workers saw and what it wrote."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_SUBMIT_ARGS": "--master local[1] pyspark-shell"}
    written = tmp_path_factory.mktemp("staging") / "outputs"
    out = subprocess.run([sys.executable, "-c", WORKER_PROBE, str(IMAGE_ROWS_PER_BATCH), str(written)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("PROBE "))
    return json.loads(line[len("PROBE "):])


@pytest.mark.spark
def test_image_jobs_hand_their_workers_a_few_rows_at_a_time(worker_probe: dict) -> None:
    """rows_per_batch reaches the Python workers: 40 rows arrive as batches of 4, not one of 32 and 8."""
    assert worker_probe["default"] == [32, 8]  # the session default, sized for tiles
    assert worker_probe["images"] == [IMAGE_ROWS_PER_BATCH] * (40 // IMAGE_ROWS_PER_BATCH)


@pytest.mark.spark
def test_staging_row_groups_stay_near_the_block_size_however_large_the_rows(worker_probe: dict) -> None:
    """parquet-java would buffer 100 rows before measuring: here 48 MB in one row group."""
    groups = worker_probe["row_groups"]
    assert sum(rows for rows, _ in groups) == 40
    assert len(groups) >= 3
    assert max(size for _, size in groups) <= 16 * 2**20 + 2 * 2**20  # the 16 MB block size, plus a row


@pytest.mark.spark
def test_workers_run_under_the_daemon_that_keeps_sparks_archives(worker_probe: dict) -> None:
    """The workers were forked by worker_daemon, which froze exactly the archives Spark put on their path."""
    assert worker_probe["daemon"] == "superres.pipeline.worker_daemon"
    names = sorted(Path(p).name for p in worker_probe["kept"])
    assert "pyspark.zip" in names and any(n.startswith("py4j-") for n in names), names
    assert all(n.endswith((".zip", ".jar")) for n in names)


def _zip(path: Path, module: str) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{module}.py", "X = 1\n")
    return path


def test_kept_archives_are_not_reread_when_import_caches_are_invalidated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zipimport

    from superres.pipeline import worker_daemon

    original = zipimport.zipimporter.invalidate_caches
    monkeypatch.setattr(zipimport.zipimporter, "invalidate_caches", original)  # restored after the test
    reads: list[str] = []
    real_read = zipimport._read_directory
    monkeypatch.setattr(zipimport, "_read_directory",
                        lambda archive: reads.append(archive) or real_read(archive))
    spark_zip, user_zip = _zip(tmp_path / "spark.zip", "sparkmod"), _zip(tmp_path / "user.zip", "usermod")
    kept = worker_daemon.spark_archives([str(spark_zip), str(tmp_path), str(tmp_path / "missing.zip")])
    assert kept == {str(spark_zip)}

    importers = [zipimport.zipimporter(str(spark_zip)), zipimport.zipimporter(str(user_zip))]
    worker_daemon.keep_archive_directories(kept)
    worker_daemon.keep_archive_directories(kept)  # installing twice must not stack wrappers
    reads.clear()
    for imp in importers:
        imp.invalidate_caches()
    assert reads == [str(user_zip)]
    assert importers[0].find_spec("sparkmod") is not None  # the kept directory still serves imports
    assert zipimport.zipimporter.invalidate_caches.reread is original


def _confs(cmd: list[str]) -> dict[str, str]:
    return dict(cmd[i + 1].split("=", 1) for i, part in enumerate(cmd) if part == "--conf")


def test_only_a_local_connect_server_limits_its_jit_to_c1() -> None:
    """On a local master the server's JVM shares the cores with the Python workers; a cluster keeps C2."""
    from superres.orchestration.services import SERVER_JVM_OPTIONS, spark_connect_cmd

    local = _confs(spark_connect_cmd("sc://127.0.0.1:15002", "local[2]"))["spark.driver.extraJavaOptions"]
    cluster = _confs(spark_connect_cmd("sc://127.0.0.1:15002", "spark://m:7077"))["spark.driver.extraJavaOptions"]
    assert local.split() == SERVER_JVM_OPTIONS.split() + ["-XX:TieredStopAtLevel=1"]
    assert cluster.split() == SERVER_JVM_OPTIONS.split()


def test_connect_url_names_the_session_to_join() -> None:
    from superres.pipeline.spark import connect_url

    sid = "4cd605e7-afa2-5360-b5b9-c5e9fb5c76f4"
    assert connect_url("sc://127.0.0.1:15002", "") == "sc://127.0.0.1:15002"
    assert connect_url("sc://127.0.0.1:15002", sid) == f"sc://127.0.0.1:15002/;session_id={sid}"
    assert connect_url("sc://h:15002/", sid) == f"sc://h:15002/;session_id={sid}"
    assert connect_url("sc://h:443/;use_ssl=true", sid) == f"sc://h:443/;use_ssl=true;session_id={sid}"
    # a session the operator configured in the URL itself wins
    assert connect_url(f"sc://h:1/;session_id={sid}", "a" * 8) == f"sc://h:1/;session_id={sid}"
    with pytest.raises(ValueError):
        connect_url("sc://h:1", "run-42")


def test_every_staging_dataset_has_a_codec_and_unknown_ones_are_refused() -> None:
    from superres.pipeline import layout
    from superres.pipeline.spark import STAGING_CODECS, staging_writer

    assert set(STAGING_CODECS) == set(layout.DATASETS)
    # Already-compressed bytes (photos, PNGs) and float32 SR output are stored as they are.
    assert {STAGING_CODECS[d] for d in ("images", "sr_tiles", "outputs", "evaluated")} == {"none"}
    with pytest.raises(ValueError, match="unknown staging dataset 'tile'"):
        staging_writer(object(), "tile")
