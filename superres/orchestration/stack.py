"""``make up`` / ``make down``: the long-running embedded stack.

``up`` starts the offline Picsum source, the notifier and ``airflow standalone``
(scheduler, dag-processor, triggerer and the UI on http://127.0.0.1:8080), each
in its own process group with a pid file under ``.run/``.  The admin password
is generated on first start, stored only in ``$AIRFLOW_HOME`` (mode 0600) and
printed once.  ``down`` stops exactly those process groups.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

from superres.config import Settings
from superres.orchestration import services
from superres.orchestration.localrun import airflow_env, ensure_db, start_spark_connect

SERVICES = ("airflow", "notifier", "picsum", "spark-connect")


def admin_password(home: Path) -> tuple[str, bool]:
    """The UI password for ``admin``: generated once (never a well-known default)."""
    path = home / "simple_auth_manager_passwords.json.generated"
    if path.exists():
        try:
            return json.loads(path.read_text())["admin"], False
        except (ValueError, KeyError):
            pass
    password = secrets.token_urlsafe(12)
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"admin": password}, f)
    return password, True


def up() -> int:
    env = airflow_env()
    env.setdefault("AIRFLOW__API__HOST", "127.0.0.1")
    env.setdefault("AIRFLOW__API__PORT", "8080")
    env.setdefault("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin")
    env.setdefault("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "30")
    env.setdefault("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "True")
    settings = Settings.from_env(env)
    airflow_url = f"http://{env['AIRFLOW__API__HOST']}:{env['AIRFLOW__API__PORT']}"
    home = Path(env["AIRFLOW_HOME"])
    ensure_db(env)
    password, new = admin_password(home)
    try:
        connect = start_spark_connect(env)  # before Airflow, so its tasks inherit the URL
    except RuntimeError as exc:
        print(f"{'spark':<9} FAILED   {exc}", file=sys.stderr)
        return 1
    if connect:
        print(f"{'spark':<9} {connect[1]:<8} {connect[0]}   (log: {settings.run_dir}/spark-connect.log)")
    for name, cmd, url in (
        ("picsum", services.picsum_cmd(settings.picsum_url), settings.picsum_url),
        ("notifier", services.notifier_cmd(settings.notifier_url), settings.notifier_url),
        ("airflow", [sys.executable, "-m", "airflow", "standalone"], airflow_url),
    ):
        try:
            status = services.start(name, cmd, url, env, timeout_s=240)
        except RuntimeError as exc:
            print(f"{name:<9} FAILED   {exc}", file=sys.stderr)
            return 1
        print(f"{name:<9} {status:<8} {url}   (log: {settings.run_dir}/{name}.log)")
    print(f"\nAirflow UI: {airflow_url}  user: admin")
    if new:
        print(f"password (shown once; stored in {home}/simple_auth_manager_passwords.json.generated): "
              f"{password}")
    else:
        print(f"password: unchanged, see {home}/simple_auth_manager_passwords.json.generated")
    print("Unpause superres_daily in the UI, trigger it with params, or backfill:\n"
          "  .venv/bin/airflow backfill create --dag-id superres_daily "
          "--from-date 2026-01-01 --to-date 2026-01-02   (with AIRFLOW_HOME=.airflow)")
    return 0


def down() -> int:
    for name in SERVICES:
        stopped = services.stop(name)
        print(f"{name:<9} {'stopped' if stopped else 'not running'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if args == ["up"]:
        return up()
    if args == ["down"]:
        return down()
    print("usage: python -m superres.orchestration.stack up|down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
