"""The README's "Production" section, read as a new user would: every name in it exists.

Extracted from the section and checked against the project (and, for Spark's, AWS's and
Airflow's own names, against the installed packages):

- environment variables: ``SUPERRES_*`` are Settings fields, ``NOTIFIER_*`` the notifier's,
  ``AIRFLOW_CONN_*`` the connection ids Settings uses, ``AIRFLOW__S__K`` Airflow options, ``SPARK_*``
  / ``PYSPARK_*`` Spark's, ``AWS_*`` botocore's, and any other name is defined by .env.example,
  docker-compose.yaml or the Dockerfile;
- connection ids (``*_default``), make targets, compose services, Dockerfile targets, files;
- every command in its shell blocks: ``docker compose`` subcommands and services, the Airflow CLI
  lines (parsed by Airflow's own parser), and the JSON connections are valid JSON.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import zipfile
from functools import cache
from pathlib import Path

import pytest

from tests.deploy import deployfiles as df

NAME = re.compile(r"(?<![\w.<])([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)(?![\w<])")
COMPOSE_SUBCOMMANDS = {"up", "down", "ps", "build", "exec", "logs", "config", "run", "stop", "restart",
                       "pull"}


@cache
def section() -> str:
    text = df.README.read_text()
    m = re.search(r"^## Production\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, "README.md has no '## Production' section"
    return m[1]


def code_blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", section(), re.M | re.S)


def shell_commands() -> list[list[str]]:
    """The commands of the section's bash blocks, continuation lines joined, comments dropped."""
    out = []
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append(words)
    return out


def inline_code() -> list[str]:
    text = re.sub(r"^```.*?^```", "", section(), flags=re.M | re.S)
    return re.findall(r"`([^`]+)`", text)


@cache
def spark_text() -> bytes:
    """Spark's scripts, Python sources and the spark-core classes that read environment variables."""
    home = df.spark_home()
    parts = [p.read_bytes() for sub in ("bin", "sbin") for p in (home / sub).iterdir() if p.is_file()]
    parts += [p.read_bytes() for p in home.rglob("*.py")]
    for jar in (home / "jars").glob("spark-core_*.jar"):
        with zipfile.ZipFile(jar) as z:
            parts += [z.read(n) for n in z.namelist()
                      if n.startswith(("org/apache/spark/util/Utils", "org/apache/spark/deploy/"))]
    return b"\n".join(parts)


@cache
def botocore_text() -> str:
    import botocore

    return "\n".join(p.read_text(errors="replace") for p in Path(botocore.__file__).parent.glob("*.py"))


@cache
def deployment_text() -> str:
    return "\n".join(p.read_text() for p in (df.ENV_EXAMPLE, df.COMPOSE, df.DOCKERFILE))


def where_defined(name: str) -> str | None:
    """Why ``name`` is a real configuration name, or None."""
    if re.search(rf"^{name}=", df.ENV_EXAMPLE.read_text(), re.M):
        return ".env.example"  # the stack's own variables (test_compose checks their use)
    if name.startswith("SUPERRES_"):
        return "Settings" if name in df.settings_env_names() else None
    if name.startswith("NOTIFIER_"):
        return "notifier/config.py" if name in df.notifier_env_names() else None
    if name.startswith("AIRFLOW_CONN_"):
        return "Settings conn id" if name[len("AIRFLOW_CONN_"):].lower() in df.settings_conn_ids().values() \
            else None
    if df.airflow_env_option(name):
        return "Airflow option" if df.airflow_env_option(name) in df.airflow_options() else None
    if name.startswith(("SPARK_", "PYSPARK_")):
        return "Spark" if name.encode() in spark_text() else None
    if name.startswith("AWS_"):
        return "botocore" if f'"{name}"' in botocore_text() or f"'{name}'" in botocore_text() else None
    if re.search(rf"\b{name}\b", deployment_text()):
        return "docker-compose.yaml / Dockerfile"
    return None


def test_the_section_exists_and_covers_the_issue() -> None:
    text = section()
    for topic in ("aws_default", "spark_default", "notifier_default", "s3a://", "hdfs://",
                  "hadoop-aws", "picsum.photos", "SUPERRES_CALLBACK_SECRET", "SUPERRES_DEVICE",
                  "SUPERRES_BATCH_SIZE", "GPU", "MinIO", "docker compose up"):
        assert topic in text, topic


def test_every_environment_variable_exists() -> None:
    names = set(NAME.findall(section()))
    assert len(names) > 20  # the extraction works
    unknown = sorted(n for n in names if where_defined(n) is None)
    assert unknown == [], f"README Production names no part of the project defines: {unknown}"


def test_connection_ids_are_the_ones_settings_uses() -> None:
    ids = set(re.findall(r"\b([a-z]+_default)\b", section()))
    assert ids == set(df.settings_conn_ids().values())


def test_make_targets_exist() -> None:
    targets = set(re.findall(r"\bmake ([a-z][\w-]*)", section()))
    assert targets <= df.make_targets(), targets - df.make_targets()
    assert "make test" in section()


def test_named_files_exist() -> None:
    # Repository paths: a top-level entry of the repository, or anything with a file extension
    # (image names such as apache/spark are neither).
    top = {p.name for p in df.ROOT.iterdir()}
    named = {c for c in inline_code()
             if re.fullmatch(r"[\w.-]+(/[\w.-]+)*/?", c)
             and (c.split("/")[0] in top or re.search(r"\.(ya?ml|md|py|sh|json|conf|example)$", c))
             and not re.fullmatch(r"[\w-]+", c)}
    # Files a user creates, and paths inside the storage layout, are not repository files.
    own = {"docker-compose.override.yaml", "spark-defaults.conf", "stages/inference.json", ".env"}
    missing = sorted(c for c in named - own if not (df.ROOT / c).exists())
    assert "docs/deployment.md" in named and missing == [], missing


def test_container_paths_are_the_stacks() -> None:
    for path in {c for c in inline_code() if c.startswith("/opt/")}:
        assert path in deployment_text(), path


def test_services_and_build_targets_exist() -> None:
    services = set(df.services())
    for c in inline_code():
        if (Path(sys.executable).parent / c).exists():
            continue  # a command (spark-submit): installed next to the project's Python
        if re.fullmatch(r"(airflow|spark|minio|notifier|picsum|postgres)(-[a-z0-9-]+)?", c):
            assert c in services | set(df.compose()["volumes"]), f"`{c}` is no compose service or volume"
    _, stages = df.dockerfile_stages()
    for target in re.findall(r"`(\w+)` target", section()):
        assert target in {s.name for s in stages}, target
    assert re.search(r"profile `(\w+)`", section())[1] == df.services()["picsum"]["profiles"][0]
    for volume in re.findall(r"`([\w-]+)` volume", section()):
        assert volume in df.compose()["volumes"], volume


def test_docker_compose_commands_name_real_services() -> None:
    services = set(df.services())
    commands = [w for w in shell_commands() if w[:2] == ["docker", "compose"]]
    assert commands
    for words in commands:
        args = words[2:]
        while args and args[0].startswith("-"):  # global options such as --profile offline
            args = args[2:] if args[0] in ("--profile", "-f", "--env-file") else args[1:]
        assert args and args[0] in COMPOSE_SUBCOMMANDS, words
        if args[0] in ("exec", "logs", "run"):
            rest = [a for a in args[1:] if not a.startswith("-")]
            assert rest and rest[0] in services, words
    for m in re.finditer(r"`docker compose ([^`]+)`", section()):
        words = shlex.split(m[1])
        if words[0] == "--profile":
            assert words[1] in {p for s in services for p in df.services()[s].get("profiles", [])}


def test_other_shell_commands_exist() -> None:
    for words in shell_commands():
        if words[:2] == ["docker", "compose"]:
            continue
        if words[0] == "cp":
            assert (df.ROOT / words[1]).is_file(), words
        else:
            pytest.fail(f"unexpected command in README Production: {words}")


def test_airflow_commands_parse_with_airflows_own_cli() -> None:
    from airflow.cli.cli_parser import get_parser

    parser = get_parser()
    found = 0
    for words in shell_commands():
        if "airflow" in words[1:] and words[:3] == ["docker", "compose", "exec"]:
            argv = words[words.index("airflow", 3) + 1:]
            args = parser.parse_args(argv)  # SystemExit on an unknown command or option
            assert callable(args.func)
            if "dag_id" in vars(args):
                assert args.dag_id == "superres_daily"
            found += 1
    assert found >= 2


def test_json_connections_are_valid() -> None:
    conns = re.findall(r"`(AIRFLOW_CONN_[A-Z_]+)='(\{.*?\})'`", section(), re.S)
    expected = {f"AIRFLOW_CONN_{c.upper()}" for c in df.settings_conn_ids().values()}
    assert {name for name, _ in conns} == expected
    types = {"AIRFLOW_CONN_AWS_DEFAULT": "aws", "AIRFLOW_CONN_SPARK_DEFAULT": "spark",
             "AIRFLOW_CONN_NOTIFIER_DEFAULT": "http"}
    for name, body in conns:
        conn = json.loads(re.sub(r"\s+", " ", body))
        assert conn["conn_type"] == types[name], name


def test_the_gpu_override_snippet_is_valid_compose() -> None:
    import yaml

    blocks = code_blocks("yaml")
    assert len(blocks) == 1
    override = yaml.safe_load(blocks[0])
    for name, svc in override["services"].items():
        assert name in df.services(), name
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]


def test_numbers_quoted_from_the_project_are_current() -> None:
    text = section()
    dotenv = df.read_env_file()
    for var in ("AIRFLOW_API_PORT", "SPARK_MASTER_UI_PORT", "MINIO_CONSOLE_PORT", "NOTIFIER_PORT"):
        assert f"`http://localhost:{dotenv[var]}` (`{var}`)" in text, var
    from superres.config import Settings

    assert f"(default {Settings().batch_size})" in text
    hadoop = re.search(r"hadoop-aws:([\d.]+)", text)[1]
    assert list((df.spark_home() / "jars").glob(f"hadoop-client-api-{hadoop}.jar")), \
        f"hadoop-aws {hadoop} does not match pyspark's bundled Hadoop"
    assert "spark://spark-master:7077" in df.services()["airflow-scheduler"]["environment"][
        "AIRFLOW_CONN_SPARK_DEFAULT"]
