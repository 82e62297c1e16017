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
    cluster = server_conf("spark://master:7077")
    assert "spark.default.parallelism" not in cluster and "spark.sql.shuffle.partitions" not in cluster


BATCH_PROBE = """
import json, sys
from superres.pipeline.spark import session

def sizes(batches):
    import pyarrow as pa
    for b in batches:
        yield pa.RecordBatch.from_pylist([{"n": b.num_rows}])

def probe(spark):
    return [r["n"] for r in spark.range(0, 40, 1, 1).mapInArrow(sizes, "n long").collect()]

default = probe(session("batch-probe"))
images = probe(session("batch-probe", rows_per_batch=int(sys.argv[1])))
print("PROBE " + json.dumps({"default": default, "images": images}))
"""


@pytest.mark.spark
def test_image_jobs_hand_their_workers_a_few_rows_at_a_time() -> None:
    """rows_per_batch reaches the Python workers: 40 rows arrive as batches of 4, not one of 32 and 8."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_SUBMIT_ARGS": "--master local[1] pyspark-shell"}
    out = subprocess.run([sys.executable, "-c", BATCH_PROBE, str(IMAGE_ROWS_PER_BATCH)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("PROBE "))
    got = json.loads(line[len("PROBE "):])
    assert got["default"] == [32, 8]  # the session default, sized for tiles
    assert got["images"] == [IMAGE_ROWS_PER_BATCH] * (40 // IMAGE_ROWS_PER_BATCH)
