"""docker-compose.yaml, .env.example and the Dockerfile, validated without a Docker engine.

- ``docker-compose config`` (Debian's docker-compose, installed by ``make test``) checks the
  file against the Compose schema, resolves .env.example and checks references between
  services and volumes;
- the rest checks, in Python, that the stack is wired the way the project names things:
  services, ports, volumes, connections and environment variables.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from urllib.parse import urlsplit

import pytest

from tests.deploy import deployfiles as df

AIRFLOW_COMPONENTS = {"airflow-apiserver": "api-server", "airflow-scheduler": "scheduler",
                      "airflow-dag-processor": "dag-processor", "airflow-triggerer": "triggerer"}
SPARK_WORKERS = ("spark-worker-1", "spark-worker-2")
ONE_SHOT = ("airflow-init", "minio-init")
EXPECTED = {"postgres", "minio", "minio-init", "spark-master", *SPARK_WORKERS, "notifier",
            "airflow-init", *AIRFLOW_COMPONENTS}
SECRET_WORDS = ("PASSWORD", "SECRET", "FERNET", "TOKEN")


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is missing: scripts/system_deps.sh --with-browser installs it")
        pytest.skip("needs Debian's docker-compose (make test installs it); never skipped when CI is set")
    return found


def run_compose(*args: str, env_file=df.ENV_EXAMPLE) -> subprocess.CompletedProcess:
    # A clean environment: shell variables would override .env.example in the substitution.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([docker_compose(), "--env-file", str(env_file), "-f", str(df.COMPOSE), *args],
                          cwd=df.ROOT, env=env, capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize("profile", [None, "offline"])
def test_docker_compose_config_accepts_the_file(profile: str | None) -> None:
    res = run_compose(*(["--profile", profile] if profile else []), "config", "-q")
    assert res.returncode == 0, res.stderr


def test_docker_compose_config_resolves_every_service_and_volume() -> None:
    res = run_compose("config", "--services")
    assert res.returncode == 0, res.stderr
    assert set(res.stdout.split()) == EXPECTED | {"picsum"}
    res = run_compose("config", "--volumes")
    assert res.returncode == 0, res.stderr
    assert set(res.stdout.split()) == set(df.compose()["volumes"])


def test_docker_compose_config_rejects_a_broken_file(tmp_path) -> None:
    """The validator is not a rubber stamp: an unknown key and a dangling dependency fail."""
    text = df.COMPOSE.read_text()
    for broken in (text.replace("    hostname: spark-master\n", "    hostnme: spark-master\n"),
                   text.replace("      minio:\n        condition: service_healthy",
                                "      minio-typo:\n        condition: service_healthy")):
        assert broken != text
        path = tmp_path / "docker-compose.yaml"
        path.write_text(broken)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
        res = subprocess.run([docker_compose(), "--env-file", str(df.ENV_EXAMPLE), "-f", str(path),
                              "config", "-q"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode != 0


def test_required_secrets_fail_without_an_env_file(tmp_path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("# nothing set\n")
    res = run_compose("config", "-q", env_file=empty)
    assert res.returncode != 0 and "in .env" in res.stderr


# --------------------------------------------------------------------------- services and dependencies


def test_the_stack_has_every_component() -> None:
    svcs = df.services()
    assert set(svcs) == EXPECTED | {"picsum"}
    assert svcs["picsum"].get("profiles") == ["offline"]  # optional offline photo source
    for name, command in AIRFLOW_COMPONENTS.items():
        assert df.command_args(svcs[name]) == [command], name
    airflow_env = svcs["airflow-scheduler"]["environment"]
    assert airflow_env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    db = urlsplit(airflow_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert db.scheme.startswith("postgresql") and db.hostname == "postgres"
    assert db.path.lstrip("/") == svcs["postgres"]["environment"]["POSTGRES_DB"]
    assert db.username == svcs["postgres"]["environment"]["POSTGRES_USER"]
    api = urlsplit(airflow_env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert (api.hostname, api.port) == ("airflow-apiserver", 8080)
    # Every Airflow component shares one configuration.
    shared = ("AIRFLOW__", "AIRFLOW_CONN_", "SUPERRES_")
    for name in (*AIRFLOW_COMPONENTS, "airflow-init"):
        env = svcs[name]["environment"]
        assert {k: v for k, v in env.items() if k.startswith(shared)} == \
            {k: v for k, v in airflow_env.items() if k.startswith(shared)}, name


def test_dependencies_exist_and_their_conditions_can_be_met() -> None:
    svcs = df.services()
    for name, svc in svcs.items():
        deps = svc.get("depends_on", {})
        deps = {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps
        for dep, spec in deps.items():
            assert dep in svcs, f"{name} depends on unknown service {dep}"
            assert not svcs[dep].get("profiles"), f"{name} depends on optional {dep}"
            cond = spec["condition"]
            if cond == "service_healthy":
                assert "healthcheck" in svcs[dep], f"{name} waits for {dep} to be healthy: no healthcheck"
            elif cond == "service_completed_successfully":
                assert dep in ONE_SHOT and svcs[dep].get("restart") == "no", f"{dep} is not one-shot"
            else:
                assert cond == "service_started", cond
    # Start order: the metadata DB migrated, S3 bucket, cluster and notifier up before tasks run.
    sched = svcs["airflow-scheduler"]["depends_on"]
    assert sched["airflow-init"]["condition"] == "service_completed_successfully"
    assert sched["minio-init"]["condition"] == "service_completed_successfully"
    for dep in ("postgres", "airflow-apiserver", "spark-master", *SPARK_WORKERS, "notifier"):
        assert sched[dep]["condition"] == "service_healthy", dep
    assert svcs["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for worker in SPARK_WORKERS:
        assert svcs[worker]["depends_on"]["spark-master"]["condition"] == "service_healthy"


def test_long_running_services_have_healthchecks_and_restart() -> None:
    for name, svc in df.services().items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", name
            continue
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        if not svc.get("profiles"):
            assert svc.get("restart") == "unless-stopped", name


def test_images_are_pinned_or_built_from_the_dockerfile() -> None:
    svcs = df.services()
    assert re.fullmatch(r"quay\.io/minio/minio:RELEASE\.\d{4}-\d{2}-\d{2}T[\d-]+Z", svcs["minio"]["image"])
    assert re.fullmatch(r"postgres:\d+[\w.-]*", svcs["postgres"]["image"])
    _, stages = df.dockerfile_stages()
    names = [s.name for s in stages]
    for name, svc in svcs.items():
        if name in ("minio", "postgres"):
            continue
        build = svc["build"]
        assert build["context"] == "." and build["dockerfile"] == "Dockerfile", name
        want = "airflow" if name.startswith("airflow-") else "runtime"
        assert build["target"] == want and want in names, name
        assert build["args"]["TORCH_INDEX_URL"] == df.read_env_file()["TORCH_INDEX_URL"]


def test_dockerfile_builds_every_node_on_the_pinned_airflow_python() -> None:
    """One base stage for Airflow and Spark: driver and executors get the same Python."""
    args, stages = df.dockerfile_stages()
    by_name = {s.name: s for s in stages}
    assert list(by_name) == ["base", "runtime", "airflow"]  # airflow last: the default target
    base = by_name["base"].base
    m = re.fullmatch(r"apache/airflow:(\d+\.\d+\.\d+)-python(\d+\.\d+)", base)
    assert m, base
    requirements = (df.ROOT / "requirements.txt").read_text()
    assert f"apache-airflow=={m[1]}\n" in requirements
    pyproject = (df.ROOT / "pyproject.toml").read_text()
    assert f'requires-python = ">={m[2]},' in pyproject
    assert by_name["runtime"].base == "base" and by_name["airflow"].base == "base"
    body = "\n".join(by_name["base"].lines)
    assert "openjdk-17-jre-headless" in body
    torch_pin = re.search(r"^torch==\S+$", requirements, re.M)[0]
    torch_at, reqs_at = body.index(f"{torch_pin} "), body.index("-r /opt/superres/requirements.txt")
    assert torch_at < reqs_at, "torch must be installed before the requirements"
    assert "--index-url \"${TORCH_INDEX_URL}\"" in body
    assert "pip install --no-cache-dir --no-deps -e /opt/superres" in body
    assert "ENTRYPOINT" in "\n".join(by_name["runtime"].lines)


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_image() -> None:
    ignored = {line.strip() for line in (df.ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", ".env", ".git", "data", ".airflow", ".run", "tests"} <= ignored
    # ...but not what the image needs.
    for needed in ("superres", "dags", "spark_jobs", "plugins", "notifier", "include", "README.md",
                   "pyproject.toml", "requirements.txt"):
        assert needed not in ignored and (df.ROOT / needed).exists(), needed


# --------------------------------------------------------------------------- ports


def test_ports_agree_between_services_commands_and_connections() -> None:
    svcs = df.services()
    env = svcs["airflow-scheduler"]["environment"]
    dotenv = df.read_env_file()
    host_ports = [h for svc in svcs.values() for h, _ in df.port_mappings(svc)]
    assert len(host_ports) == len(set(host_ports)), "two services publish the same host port"

    # Spark: the connection's master URL is the master's --host/--port, which workers join.
    master = json.loads(env["AIRFLOW_CONN_SPARK_DEFAULT"])
    assert master["conn_type"] == "spark"
    url = urlsplit(master["host"])
    m_args = df.command_args(svcs["spark-master"])
    assert m_args[:2] == ["spark-class", "org.apache.spark.deploy.master.Master"]
    assert url.scheme == "spark" and url.hostname == df.arg_after(m_args, "--host") == "spark-master"
    assert url.port == int(df.arg_after(m_args, "--port"))
    ui = int(df.arg_after(m_args, "--webui-port"))
    assert df.port_mappings(svcs["spark-master"]) == [(int(dotenv["SPARK_MASTER_UI_PORT"]), ui)]
    assert f"localhost:{ui}/json/" in " ".join(svcs["spark-master"]["healthcheck"]["test"])
    for worker in SPARK_WORKERS:
        w_args = df.command_args(svcs[worker])
        assert w_args[:2] == ["spark-class", "org.apache.spark.deploy.worker.Worker"]
        assert master["host"] in w_args
        assert df.arg_after(w_args, "--host") == svcs[worker]["hostname"] == worker
        assert df.arg_after(w_args, "--cores") == dotenv["SPARK_WORKER_CORES"]
        assert df.arg_after(w_args, "--memory") == dotenv["SPARK_WORKER_MEMORY"]
        w_ui = df.arg_after(w_args, "--webui-port")
        assert f"localhost:{w_ui}/json/" in " ".join(svcs[worker]["healthcheck"]["test"])

    # Notifier: the callback connection reaches the port the notifier binds.
    n_args = df.command_args(svcs["notifier"])
    n_port = int(df.arg_after(n_args, "--port"))
    conn = json.loads(env["AIRFLOW_CONN_NOTIFIER_DEFAULT"])
    assert (conn["conn_type"], conn["host"], conn["port"], conn["schema"]) == \
        ("http", "notifier", n_port, "http")
    assert df.port_mappings(svcs["notifier"]) == [(int(dotenv["NOTIFIER_PORT"]), n_port)]
    assert f"localhost:{n_port}/healthz" in " ".join(svcs["notifier"]["healthcheck"]["test"])
    # ...and the gallery link in the Airflow UI points at the published port.
    assert urlsplit(env["SUPERRES_NOTIFIER_URL"]).port == int(dotenv["NOTIFIER_PORT"])

    # MinIO: the S3 endpoint every container uses is the minio service's --address.
    mi_args = df.command_args(svcs["minio"])
    s3 = urlsplit(dotenv["S3_ENDPOINT_URL"])
    assert s3.hostname == "minio" and f":{s3.port}" == df.arg_after(mi_args, "--address")
    assert (int(dotenv["MINIO_API_PORT"]), s3.port) in df.port_mappings(svcs["minio"])

    # Airflow: the api-server's port 8080 (Airflow's default) is the execution API's and published.
    assert df.port_mappings(svcs["airflow-apiserver"]) == [(int(dotenv["AIRFLOW_API_PORT"]), 8080)]
    assert urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]).port == 8080
    assert "localhost:8080/api/v2/version" in " ".join(svcs["airflow-apiserver"]["healthcheck"]["test"])

    # Offline Picsum: the documented URL is the service's port.
    p_args = df.command_args(svcs["picsum"])
    assert "http://picsum:" + df.arg_after(p_args, "--port") in df.ENV_EXAMPLE.read_text()


# --------------------------------------------------------------------------- volumes


def test_volumes_are_declared_used_and_staging_is_shared_by_every_spark_node() -> None:
    data = df.compose()
    svcs = data["services"]
    used = {v for svc in svcs.values() for v in df.named_mounts(svc)}
    assert used == set(data["volumes"]), "declared and used named volumes differ"
    staging = svcs["airflow-scheduler"]["environment"]["SUPERRES_STAGING_URI"]
    # The driver (scheduler: LocalExecutor, client mode) and every executor see one staging dir.
    for name in ("airflow-scheduler", *SPARK_WORKERS):
        assert df.named_mounts(svcs[name]).get("spark-staging") == staging, name
    assert svcs["airflow-scheduler"]["environment"]["SPARK_LOCAL_HOSTNAME"] == \
        svcs["airflow-scheduler"]["hostname"]
    # The API server reads task logs and the auth file that other components write.
    for name in (*AIRFLOW_COMPONENTS, "airflow-init"):
        mounts = df.named_mounts(svcs[name])
        assert mounts.get("airflow-logs") == "/opt/airflow/logs", name
        assert mounts.get("airflow-auth") == "/opt/airflow/auth", name
    auth_file = svcs["airflow-apiserver"]["environment"]["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    assert auth_file.startswith("/opt/airflow/auth/") and auth_file in svcs["airflow-init"]["command"][-1]
    notifier = svcs["notifier"]
    assert notifier["environment"]["NOTIFIER_DB"].startswith(df.named_mounts(notifier)["notifier-data"] + "/")
    # Mount points exist in the image, owned by airflow (Dockerfile mkdir + chown).
    body = "\n".join(s for st in df.dockerfile_stages()[1] for s in st.lines)
    for path in {p for svc in svcs.values() if "build" in svc for p in df.named_mounts(svc).values()}:
        assert path in body or path == "/opt/airflow/logs", f"{path} is not created in the image"


# --------------------------------------------------------------------------- environment variables


def test_environment_names_are_the_projects_own() -> None:
    """SUPERRES_* are Settings fields, NOTIFIER_* the notifier's, AIRFLOW__X__Y Airflow options,
    AIRFLOW_CONN_* the connection ids Settings uses."""
    settings_names, notifier_names = df.settings_env_names(), df.notifier_env_names()
    options, conn_ids = df.airflow_options(), set(df.settings_conn_ids().values())
    for name, svc in df.services().items():
        for var in svc.get("environment", {}):
            if var.startswith("SUPERRES_"):
                assert var in settings_names, f"{name}: {var} is not a Settings field"
            elif var.startswith("NOTIFIER_"):
                assert var in notifier_names, f"{name}: {var} is not read by notifier/config.py"
            elif var.startswith("AIRFLOW_CONN_"):
                assert var[len("AIRFLOW_CONN_"):].lower() in conn_ids, f"{name}: {var}"
            elif df.airflow_env_option(var):
                assert df.airflow_env_option(var) in options, f"{name}: {var} is no Airflow option"
    for var in df.read_env_file():
        if var.startswith("SUPERRES_"):
            assert var in settings_names, f".env.example: {var} is not a Settings field"


def test_connections_cover_every_conn_id_in_settings() -> None:
    env = df.services()["airflow-scheduler"]["environment"]
    for field, conn_id in df.settings_conn_ids().items():
        var = "AIRFLOW_CONN_" + conn_id.upper()
        assert var in env, f"no connection for Settings.{field} ({conn_id})"
        conn = json.loads(env[var])  # valid JSON after substitution
        assert conn["conn_type"] == {"aws_conn_id": "aws", "spark_conn_id": "spark",
                                     "notifier_conn_id": "http"}[field]
    aws = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
    dotenv = df.read_env_file()
    assert aws["login"] == dotenv["S3_ACCESS_KEY_ID"] and aws["password"] == dotenv["S3_SECRET_ACCESS_KEY"]
    assert aws["extra"] == {"region_name": dotenv["S3_REGION"], "endpoint_url": dotenv["S3_ENDPOINT_URL"]}
    # The bucket the pipeline writes to is the one minio-init creates (from the same variable).
    assert env["SUPERRES_STORAGE_URI"].startswith("s3://")
    assert df.services()["minio-init"]["environment"]["SUPERRES_STORAGE_URI"] == env["SUPERRES_STORAGE_URI"]
    assert df.services()["notifier"]["environment"]["NOTIFIER_STORAGE_URI"] == env["SUPERRES_STORAGE_URI"]
    # Callbacks are signed and checked with one secret.
    assert df.services()["notifier"]["environment"]["NOTIFIER_SECRET"] == env["SUPERRES_CALLBACK_SECRET"]


def test_env_example_defines_exactly_what_the_stack_uses() -> None:
    dotenv = df.read_env_file()
    used = df.variables(json.dumps(df.compose_raw()))  # the YAML's values: comments do not count
    undefined = sorted(v for v, has_default in used.items() if not has_default and v not in dotenv)
    assert undefined == [], f"docker-compose.yaml uses variables .env.example does not define: {undefined}"
    unused = sorted(set(dotenv) - set(used))
    assert unused == [], f".env.example defines variables nothing uses: {unused}"
    # Build arguments passed by compose are ARGs of the Dockerfile.
    build_args = df.compose_raw()["services"]["airflow-scheduler"]["build"]["args"]
    text = df.DOCKERFILE.read_text()
    for arg in build_args:
        assert re.search(rf"^ARG {arg}(=|$)", text, re.M), arg


def test_no_secret_is_written_in_the_compose_file() -> None:
    """Every secret-looking value is a reference to a .env variable, and .env.example only holds
    placeholders that the init step refuses."""
    raw = df.compose_raw()
    for name, svc in raw["services"].items():
        for var, value in (svc.get("environment") or {}).items():
            if (any(w in var for w in SECRET_WORDS) or var == "AWS_ACCESS_KEY_ID") \
                    and not var.endswith("_FILE"):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]*)?\}", str(value)), f"{name}: {var}={value}"
        for var in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW_CONN_AWS_DEFAULT"):
            value = (svc.get("environment") or {}).get(var)
            if value:
                assert "${POSTGRES_PASSWORD" in value or "${S3_SECRET_ACCESS_KEY}" in value, f"{name}: {var}"
    dotenv = df.read_env_file()
    for var, value in dotenv.items():
        if any(w in var for w in SECRET_WORDS) or var.endswith("_SECRET_KEY"):
            assert value.startswith("change-me"), f".env.example: {var} must be a change-me placeholder"
    init = " ".join(raw["services"]["airflow-init"]["command"])
    assert "change-me" in init and "exit 1" in init


def test_init_refuses_placeholders_and_names_no_secret(tmp_path) -> None:
    """The init step's guard, run with bash on .env.example's values: it fails, and prints only
    variable names, never a value."""
    script = df.services()["airflow-init"]["command"][-1]
    guard = script.split("umask 077")[0]
    env = {k: str(v) for k, v in df.services()["airflow-init"]["environment"].items()}
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    res = subprocess.run(["bash", "-c", guard], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "AIRFLOW__CORE__FERNET_KEY" in res.stderr and "AIRFLOW_CONN_AWS_DEFAULT" in res.stderr
    assert "change-me-" not in res.stderr
    # With real values the guard passes.
    good = {k: v.replace("change-me", "Xk9") for k, v in env.items()}
    res = subprocess.run(["bash", "-c", guard], env=good, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
