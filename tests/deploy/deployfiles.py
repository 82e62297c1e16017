"""Readers for the deployment files (docker-compose.yaml, .env.example, Dockerfile, README)
and for the names the project itself defines, so the deploy tests compare like with like.

Compose variable substitution is implemented here (``$$``, ``$VAR``, ``${VAR}``,
``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``) so the structural
checks need no Docker tooling; ``docker-compose config`` checks the same file against the
Compose schema separately.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
README = ROOT / "README.md"

_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)"
                  r"(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")


class MissingVariable(KeyError):
    pass


def read_env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """``KEY=VALUE`` lines of a compose env file (comments and blank lines skipped)."""
    env: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path.name}:{n}: not KEY=VALUE"
        env[key] = value.strip()
    return env


def variables(text: str) -> dict[str, bool]:
    """Variables a compose text substitutes -> whether the reference carries a default."""
    out: dict[str, bool] = {}
    for m in _VAR.finditer(text):
        name = m["braced"] or m["named"]
        if name:
            has_default = (m["op"] or "").endswith("-")
            out[name] = out.get(name, True) and has_default
    return out


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution applied to every string in ``value``."""
    if isinstance(value, dict):
        return {interpolate(k, env): interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["named"]
        op, arg = m["op"] or "", m["arg"] or ""
        present = name in env and (env[name] != "" or not op.startswith(":"))
        if present:
            return env[name]
        if op.endswith("-"):
            return arg
        raise MissingVariable(f"${{{name}}} is not set ({arg or 'required'})")

    return _VAR.sub(sub, value)


@cache
def compose_raw() -> dict[str, Any]:
    """docker-compose.yaml as YAML (anchors and merge keys resolved), before substitution."""
    return yaml.safe_load(COMPOSE.read_text())


@cache
def compose() -> dict[str, Any]:
    """docker-compose.yaml with .env.example substituted, as docker compose would see it."""
    data = interpolate(compose_raw(), read_env_file())
    for svc in data["services"].values():  # list-form environment -> mapping, like compose
        env = svc.get("environment")
        if isinstance(env, list):
            svc["environment"] = dict(item.partition("=")[::2] for item in env)
    return data


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def command_args(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command", [])
    return cmd.split() if isinstance(cmd, str) else list(cmd)


def arg_after(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} not in {args}"
    return args[args.index(flag) + 1]


def port_mappings(svc: dict[str, Any]) -> list[tuple[int, int]]:
    """(host, container) ports of a service's short-syntax ``ports``."""
    out = []
    for spec in svc.get("ports", []):
        parts = str(spec).split(":")
        out.append((int(parts[-2]), int(parts[-1].split("/")[0])))
    return out


def named_mounts(svc: dict[str, Any]) -> dict[str, str]:
    """Named volume -> container path of a service's short-syntax ``volumes``."""
    out = {}
    for spec in svc.get("volumes", []):
        source, target = str(spec).split(":")[:2]
        if not source.startswith((".", "/", "~")):
            out[source] = target
    return out


# --------------------------------------------------------------------------- Dockerfile


@dataclasses.dataclass
class Stage:
    name: str
    base: str
    lines: list[str]


def dockerfile_stages() -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, build stages in order) of the Dockerfile; continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word = line.split()[0].upper()
        if word == "FROM":
            m = re.match(r"FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
            assert m, line
            base = re.sub(r"\$\{?(\w+)\}?", lambda v: args.get(v[1], v[0]), m[1])
            stages.append(Stage(m[2] or str(len(stages)), base, []))
        elif word == "ARG" and not stages:
            name, _, default = line.split(None, 1)[1].partition("=")
            args[name] = default
        elif stages:
            stages[-1].lines.append(line)
    return args, stages


# --------------------------------------------------------------------------- the project's own names


def settings_env_names() -> set[str]:
    from superres.config import ENV_PREFIX, Settings

    return {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}


def settings_conn_ids() -> dict[str, str]:
    """Settings field -> default Airflow connection id (aws_conn_id -> aws_default, ...)."""
    from superres.config import Settings

    s = Settings()
    return {f.name: getattr(s, f.name) for f in dataclasses.fields(Settings) if f.name.endswith("_conn_id")}


def notifier_env_names() -> set[str]:
    """The NOTIFIER_* variables notifier/config.py reads."""
    return set(re.findall(r"\"(NOTIFIER_[A-Z0-9_]+)\"", (ROOT / "notifier" / "config.py").read_text()))


@cache
def airflow_options() -> set[tuple[str, str]]:
    """(section, option) pairs of Airflow's own configuration reference."""
    spec = importlib.util.find_spec("airflow")
    assert spec and spec.origin
    cfg = yaml.safe_load((Path(spec.origin).parent / "config_templates" / "config.yml").read_text())
    return {(section, opt) for section, body in cfg.items() for opt in (body.get("options") or {})}


def airflow_env_option(name: str) -> tuple[str, str] | None:
    """``AIRFLOW__SECTION__KEY`` -> (section, key); None for other names."""
    m = re.fullmatch(r"AIRFLOW__([A-Z0-9_]+?)__([A-Z0-9_]+)", name)
    return (m[1].lower(), m[2].lower()) if m else None


def spark_home() -> Path:
    """The pip-installed pyspark package: Spark's scripts and jars."""
    spec = importlib.util.find_spec("pyspark")
    assert spec and spec.origin
    return Path(spec.origin).parent


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {t for line in text.splitlines() for t in re.findall(r"^([a-z][\w.-]*)\s*:(?!=)", line)}
