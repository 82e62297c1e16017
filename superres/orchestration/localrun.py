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
import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
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
    src = rep.get("source") or {}
    short = (f" of {src['requested']} requested (the source has {src['available']})"
             if src.get("shortfall") else "")
    lines = [
        f"superres_daily ds={ds}: {rep['mode']} x{rep['scale']}",
        f"  images in:     {c['fetched']} fetched{short} ({c['quarantined']} quarantined)",
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


_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")
_MESSAGE = re.compile(r"\[\s*\w+\s*\] (.*?)(?: \[[\w.]+\](?: |$)|$)")
_START = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
_END = re.compile(r"\[DAG TEST\] end task task_id=(\S+)")
_RUN_ID = re.compile(r"\[DAG TEST\] running task <TaskInstance: \S+ (\S+) ")
_TRACEBACK_MARKERS = ("Traceback (most recent call last)", "The above exception", "During handling")
_SAID = ("which holds the date", "taking over the lease")  # lease lines a waiting user must see


@dataclass
class DagTestLog:
    """What ``airflow dags test`` says, line by line: each task's tries and, for a failed
    try, the line naming its exception (the last exception of the traceback)."""

    tries: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # task -> error of its last try, if it failed
    run_id: str | None = None
    _task: str | None = None
    _started: float = 0.0
    _in_traceback: bool = False
    _prev_indented: bool = False
    _error: str | None = None

    def feed(self, line: str, now: float | None = None) -> str | None:
        """Take one log line; returns what the console should say about it, if anything."""
        line = line.rstrip("\n")
        now = time.time() if now is None else now
        stamped = bool(_STAMP.match(line))
        if self._in_traceback and stamped and self._error is not None:
            self._in_traceback = False
        elif self._in_traceback and not stamped:
            indented = line[:1].isspace()
            if line and not indented and self._prev_indented and not line.startswith(_TRACEBACK_MARKERS):
                self._error = line.strip()
            self._prev_indented = indented or line.startswith(_TRACEBACK_MARKERS)
            return None
        if self.run_id is None and (m := _RUN_ID.search(line)) is not None:
            self.run_id = m.group(1)
        if (m := _START.search(line)) is not None:
            self._task, self._started, self._error = m.group(1), now, None
            self.tries[self._task] = self.tries.get(self._task, 0) + 1
            return None
        if "Task failed with exception" in line:
            self._in_traceback, self._prev_indented, self._error = True, False, None
            return None
        if (m := _END.search(line)) is not None:
            task, took = m.group(1), now - self._started
            try_no = self.tries.get(task, 1)
            if self._error is not None:
                self.errors[task] = self._error
                return f"  {task}: FAILED (try {try_no}, {took:.0f}s): {self._error[:300]}"
            self.errors.pop(task, None)
            return f"  {task}: done ({took:.0f}s)" + (f" on try {try_no}" if try_no > 1 else "")
        if any(said in line for said in _SAID):
            m = _MESSAGE.search(line)
            return "  " + (m.group(1) if m else line)
        return None

    def failures(self) -> list[str]:
        """One line per task whose last try failed; the watcher only when nothing else failed."""
        tasks = [t for t in self.errors if t != "watcher"] or list(self.errors)
        return [f"{t} failed after {self.tries.get(t, 1)} tr{'y' if self.tries.get(t, 1) == 1 else 'ies'}: "
                f"{self.errors[t][:400]}" for t in tasks]


class Stopped(Exception):
    """``make run`` got SIGTERM, SIGINT or SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_tree(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Stop ``proc`` (the leader of its own session) and everything under it.

    SIGTERM first, so that Airflow kills its running task the way it does on a worker
    (the Spark operator stops its spark-submit), then SIGKILL for whatever is left,
    including processes that left the session.
    """
    import psutil

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=10)
    proc.wait()


def run_dags_test(cmd: list[str], env: dict[str, str], log_path: Path,
                  echo: Callable[[str], None] = print) -> tuple[int, DagTestLog]:
    """Run ``airflow dags test`` into ``log_path``, saying on the console what each task did.

    The child runs in its own session; if ``make run`` is stopped (SIGTERM, SIGINT,
    SIGHUP), the child and all its processes are stopped before :class:`Stopped` is raised.
    """
    parsed = DagTestLog()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)

    def on_signal(signum: int, _frame: object) -> None:
        raise Stopped(signum)

    handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        with log_path.open("wb") as log:
            for raw in proc.stdout:  # type: ignore[union-attr]
                log.write(raw)
                log.flush()
                said = parsed.feed(raw.decode(errors="replace"))
                if said:
                    echo(said)
        return proc.wait(), parsed
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        if proc.poll() is None:
            stop_tree(proc)


# `airflow dags test` records the logical date as the run's start (a run of a past date
# would last weeks in Airflow's run list and duration chart); this puts the real one back.
_SET_START = """
import datetime as dt, sys
from sqlalchemy import update
from airflow.models.dagrun import DagRun
from airflow.utils.session import create_session
with create_session() as session:
    session.execute(update(DagRun).where(DagRun.dag_id == sys.argv[1], DagRun.run_id == sys.argv[2])
                    .values(start_date=dt.datetime.fromisoformat(sys.argv[3])))
"""


def record_start(env: dict[str, str], run_id: str, started: dt.datetime) -> bool:
    """Set the DAG run's start date in the metadata DB to when it really started."""
    r = subprocess.run([sys.executable, "-c", _SET_START, DAG_ID, run_id, started.isoformat()], env=env,
                       capture_output=True, text=True)
    return r.returncode == 0


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
        t0, started = time.time(), dt.datetime.now(dt.UTC)
        cmd = [sys.executable, "-m", "airflow", "dags", "test", DAG_ID, ds, "-c", json.dumps(conf)]
        # Every task of this run runs inside that one process, so its lease can name it.
        child_env = dict(env, SUPERRES_LEASE_PROCESS_SCOPED="1")
        try:
            rc, parsed = run_dags_test(cmd, child_env, log_path, echo=lambda s: print(s, flush=True))
        except Stopped as exc:
            print(f"make run stopped by {exc}: airflow dags test and its tasks were stopped; "
                  f"log: {log_path}", file=sys.stderr)
            return 128 + exc.signum
        elapsed = time.time() - t0
    if parsed.run_id and not record_start(env, parsed.run_id, started):
        print(f"  (could not record the run's start date in {env['AIRFLOW_HOME']})", file=sys.stderr)
    text = log_path.read_text(errors="replace")
    if rc != 0 or "state=success" not in text.split("DagRun Finished")[-1]:
        for line in parsed.failures() or [f"airflow dags test exited with {rc}"]:
            print(f"  {line}", file=sys.stderr)
        print(f"run FAILED for ds={ds} after {elapsed:.0f}s; full log: {log_path}", file=sys.stderr)
        return 1
    print(summary(settings, ds))
    print(f"  wall time:     {elapsed:.0f}s")
    print(f"  gallery:       {settings.notifier_url}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
