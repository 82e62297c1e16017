"""superres.pipeline.spark helpers that need no Spark application: sys.path, masters, server conf."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from superres.pipeline.spark import SESSION_DEFAULTS, server_conf

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
