"""Class-data sharing for spark-submit's JVM: which options, when an archive is published, and
that a real spark-submit writes one and the next maps its classes from it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from superres.orchestration.class_sharing import class_sharing, java_feature_version
from superres.orchestration.services import spark_env


def fake_jdk(root: Path, version: str) -> dict[str, str]:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "java").write_text("#!/bin/sh\n")
    (root / "release").write_text(f'IMPLEMENTOR="Test"\nJAVA_VERSION="{version}"\n')
    return {"JAVA_HOME": str(root), "PATH": ""}


def fake_spark(root: Path, jars: list[str]) -> Path:
    (root / "jars").mkdir(parents=True, exist_ok=True)
    for name in jars:
        (root / "jars" / name).write_bytes(b"jar")
    return root


@pytest.mark.parametrize(("version", "feature"), [("17.0.15", 17), ("21", 21), ("1.8.0_392", 8)])
def test_java_version_is_read_from_the_release_file(tmp_path: Path, version: str, feature: int) -> None:
    env = fake_jdk(tmp_path / "jdk", version)
    assert java_feature_version(Path(env["JAVA_HOME"]) / "bin" / "java") == feature


def test_no_options_without_a_java_that_can_dump_archives(tmp_path: Path) -> None:
    spark = fake_spark(tmp_path / "spark", ["a.jar"])
    assert class_sharing(tmp_path / "cache", spark, "driver", {"PATH": ""}).options == ""
    old = fake_jdk(tmp_path / "jdk11", "11.0.2")
    assert class_sharing(tmp_path / "cache", spark, "driver", old).options == ""


def test_first_run_writes_a_private_file_published_only_on_success(tmp_path: Path) -> None:
    env = fake_jdk(tmp_path / "jdk", "17.0.15")
    spark = fake_spark(tmp_path / "spark", ["a.jar"])
    cache = tmp_path / "cache"

    first = class_sharing(cache, spark, "driver", env)
    assert first.options.startswith("-XX:ArchiveClassesAtExit=") and "-Xlog:cds*=off" in first.options
    tmp = Path(first.options.split()[0].split("=", 1)[1])
    tmp.write_bytes(b"archive")  # what the JVM writes at exit
    first.finish(False)  # a failed or killed spark-submit: its file may be partial
    assert list(cache.iterdir()) == []

    second = class_sharing(cache, spark, "driver", env)
    tmp = Path(second.options.split()[0].split("=", 1)[1])
    tmp.write_bytes(b"archive")
    second.finish(True)
    [archive] = cache.iterdir()
    assert archive.suffix == ".jsa" and archive.read_bytes() == b"archive"

    third = class_sharing(cache, spark, "driver", env)
    assert third.options.split()[0] == f"-XX:SharedArchiveFile={archive}"
    # Another kind of JVM, another java or other Spark jars: another archive.
    assert "ArchiveClassesAtExit" in class_sharing(cache, spark, "connect-client", env).options
    fake_spark(spark, ["b.jar"])
    assert "ArchiveClassesAtExit" in class_sharing(cache, spark, "driver", env).options


@pytest.mark.spark
def test_a_real_spark_submit_writes_the_archive_and_the_next_maps_classes_from_it(tmp_path: Path) -> None:
    env = {**os.environ, **spark_env()}
    spark_home = Path(env["SPARK_HOME"])
    app = tmp_path / "app.py"
    app.write_text("print('app ran')\n")
    submit = str(Path(sys.executable).with_name("spark-submit"))

    def run(extra: str) -> str:
        cmd = [submit, "--master", "local[1]", "--conf", f"spark.driver.extraJavaOptions={extra}", str(app)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=True)
        assert "app ran" in out.stdout
        return out.stdout

    first = class_sharing(tmp_path / "cache", spark_home, "connect-client", env)
    assert "ArchiveClassesAtExit" in first.options
    run(first.options)
    first.finish(True)
    [archive] = (tmp_path / "cache").iterdir()
    assert archive.stat().st_size > 1_000_000

    second = class_sharing(tmp_path / "cache", spark_home, "connect-client", env)
    assert second.options.startswith(f"-XX:SharedArchiveFile={archive}")
    loaded = run(f"{second.options} -Xlog:class+load=info")
    shared = [line for line in loaded.splitlines() if "shared objects file (top)" in line]
    # The launcher's own classes come from the dynamic archive, not from the jars.
    assert any("org.apache.spark.deploy.SparkSubmit " in line for line in shared), loaded[-2000:]
