"""``make run``: the whole ``superres_daily`` DAG for one date on the embedded defaults.

Sets up a project-local Airflow (SQLite under ``.airflow/``, connections from the
environment), starts the offline Picsum source when the configured URL is the
local default and nothing answers there, runs ``airflow dags test``, and prints
a summary from the run's report.  The Spark jobs run on a local Spark Connect
server that ``make run`` starts once and reuses (``SUPERRES_SPARK_REMOTE=``
empty: one Spark application per task instead).  ``PICSUM_URL=https://picsum.photos make run``
uses the live service instead.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

from superres.config import PROJECT_ROOT, Settings
from superres.orchestration import services

DAG_ID = "superres_daily"


def airflow_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a project-local Airflow; values already set by the user win."""
    env = dict(os.environ if base is None else base)
    home = Path(env.get("AIRFLOW_HOME") or PROJECT_ROOT / ".airflow")
    env.setdefault("AIRFLOW_HOME", str(home))
    env.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(PROJECT_ROOT / "dags"))
    env.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(PROJECT_ROOT / "plugins"))
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env.setdefault("AIRFLOW__CORE__PARALLELISM", "4")
    env.setdefault("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "local[*]"}))
    settings = Settings.from_env(env)
    notifier = urlsplit(settings.notifier_url)
    env.setdefault("AIRFLOW_CONN_NOTIFIER_DEFAULT", json.dumps({
        "conn_type": "http", "host": notifier.hostname, "port": notifier.port,
        "schema": notifier.scheme or "http"}))
    if not env.get("SUPERRES_CALLBACK_SECRET"):
        env["SUPERRES_CALLBACK_SECRET"] = services.callback_secret(home)
    env.setdefault("NOTIFIER_SECRET", env["SUPERRES_CALLBACK_SECRET"])
    env.setdefault("NOTIFIER_STORAGE_URI", settings.storage_uri)
    env.setdefault("NOTIFIER_DB", str(Path(settings.run_dir) / "notifier.sqlite"))
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def start_spark_connect(env: dict[str, str]) -> tuple[str, str] | None:
    """The embedded default for Spark: a local Spark Connect server that every job reuses.

    Unless ``SUPERRES_SPARK_REMOTE`` is already in ``env`` (empty: each task starts
    its own Spark application on ``spark_default``; another URL: a server someone
    else runs), it is set to ``spark_connect_local_url`` and that server is started
    (or reused) here.  Returns (url, status) when this checkout runs the server.
    """
    local = Settings.from_env(env).spark_connect_local_url
    remote = env.setdefault("SUPERRES_SPARK_REMOTE", local)
    if not remote or remote != local:
        return None
    return remote, services.ensure_spark_connect(remote, env)


def ensure_db(env: dict[str, str]) -> None:
    """Migrate the metadata DB (idempotent; skipped when it is already current)."""
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    stamp = home / ".migrated"
    airflow_version = subprocess.run([sys.executable, "-c", "import airflow; print(airflow.__version__)"],
                                     env=env, capture_output=True, text=True, check=True).stdout.strip()
    if stamp.exists() and stamp.read_text() == airflow_version and (home / "airflow.db").exists():
        return
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    stamp.write_text(airflow_version)


def start_offline_source(settings: Settings, stack: ExitStack) -> str | None:
    """Serve the offline Picsum source if the URL points at a free loopback port."""
    url = urlsplit(settings.picsum_url)
    if url.hostname not in ("127.0.0.1", "localhost") or services.listening(settings.picsum_url):
        return None
    from superres.picsum_server import serve

    server = stack.enter_context(serve(host=url.hostname, port=url.port or 80))
    return server.url


def summary(settings: Settings, ds: str) -> str:
    from superres.pipeline import layout
    from superres.storage import open_storage

    storage = open_storage(settings.storage_uri, aws_conn_id=None)
    rep = storage.read_json(layout.report_key(ds, "run.json"))
    c = rep["counts"]
    lines = [
        f"superres_daily ds={ds}: {rep['mode']} x{rep['scale']}",
        f"  images in:     {c['fetched']} fetched ({c['quarantined']} quarantined)",
        f"  SR written:    {c['processed']} PNGs in {rep['outputs']['sr']}",
    ]
    metrics = rep.get("metrics")
    if metrics and metrics.get("mean"):
        m = metrics["mean"]
        lines.append(f"  mean PSNR:     SR {m['psnr']:.2f} dB vs bicubic {m['psnr_bicubic']:.2f} dB "
                     f"(SSIM {m['ssim']:.4f} vs {m['ssim_bicubic']:.4f})")
    lines.append(f"  reports:       {rep['outputs']['reports']}")
    lines.append("  timings (s):   " + ", ".join(f"{k} {v:.1f}" for k, v in rep["timings"].items()))
    return "\n".join(lines)


def _date(text: str) -> str:
    """``--date``: a real calendar date, checked before anything is started."""
    from superres.pipeline.layout import check_ds

    try:
        return check_ds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """``make run``'s arguments, refused by the parser (exit 2) before any service starts."""
    from superres.cli import positive_int

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--date", type=_date, default=None, help="run date YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--n", type=positive_int, default=None, help="photos to fetch")
    p.add_argument("--scale", type=int, default=None, choices=(2, 3, 4))
    p.add_argument("--mode", default=None, choices=("evaluate", "upscale"))
    p.add_argument("--tile-size", type=positive_int, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ds = args.date or dt.datetime.now(dt.UTC).date().isoformat()
    conf = {k: v for k, v in {"num_images": args.n, "scale": args.scale, "mode": args.mode,
                              "tile_size": args.tile_size}.items() if v is not None}
    env = airflow_env()
    settings = Settings.from_env(env)
    ensure_db(env)
    log_dir = Path(settings.run_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"dags-test-{ds}.log"
    url = settings.notifier_url
    status = services.start("notifier", services.notifier_cmd(url), url, env)
    print(f"notifier ({status}) on {settings.notifier_url}/")
    connect = start_spark_connect(env)
    print(f"Spark Connect server ({connect[1]}) on {connect[0]}" if connect else
          f"Spark: {env['SUPERRES_SPARK_REMOTE'] or 'a Spark application per task on spark_default'}")
    with ExitStack() as stack:
        started = start_offline_source(settings, stack)
        if started:
            print(f"offline Picsum source on {started}")
        print(f"running {DAG_ID} for {ds} {json.dumps(conf)} (log: {log_path})", flush=True)
        t0 = time.time()
        with log_path.open("w") as log:
            cmd = [sys.executable, "-m", "airflow", "dags", "test", DAG_ID, ds, "-c", json.dumps(conf)]
            rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        elapsed = time.time() - t0
    text = log_path.read_text(errors="replace")
    if rc != 0 or "state=success" not in text.split("DagRun Finished")[-1]:
        print("\n".join(text.splitlines()[-40:]))
        print(f"run FAILED for ds={ds} after {elapsed:.0f}s; full log: {log_path}", file=sys.stderr)
        return 1
    print(summary(settings, ds))
    print(f"  wall time:     {elapsed:.0f}s")
    print(f"  gallery:       {settings.notifier_url}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
