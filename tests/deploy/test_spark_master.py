"""Jobs run where the deployment says: the master and --conf that spark-submit passes (from the
``spark_default`` connection) reach the job's session, instead of a silent local[*].

The Spark standalone end-to-end test (tests/e2e/test_standalone_cluster.py) shows the same on
a real cluster; this is the quick check of the mechanism.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy import deployfiles as df

pytestmark = pytest.mark.spark

PROBE = """
import json
from superres.pipeline.spark import session
spark = session("probe")
conf = spark.sparkContext.getConf()
print("PROBE " + json.dumps({"master": spark.sparkContext.master,
                             "batch": conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")}))
spark.stop()
"""


def test_session_uses_spark_submits_master_and_conf(tmp_path: Path) -> None:
    app = tmp_path / "probe.py"
    app.write_text(PROBE)
    env = {**os.environ, "SPARK_HOME": str(df.spark_home()), "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    submit = Path(sys.executable).with_name("spark-submit")
    res = subprocess.run([str(submit), "--master", "local[1]",
                          "--conf", "spark.sql.execution.arrow.maxRecordsPerBatch=7",
                          "--conf", "spark.ui.enabled=false", str(app)],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(x for x in res.stdout.splitlines() if x.startswith("PROBE "))
    assert json.loads(line[len("PROBE "):]) == {"master": "local[1]", "batch": "7"}
