"""Long-running local services for the embedded setup: start once, reuse, stop cleanly.

Each service runs in its own process group with a pid file under ``.run/``
(``SUPERRES_RUN_DIR``); ``stop`` signals exactly the groups this module started
(``make down`` stops what ``make up`` / ``make run`` started, and only that).
A port that answers but was not started from this checkout is never reused: it
may be another checkout's notifier, serving other storage.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from superres.config import PROJECT_ROOT, Settings


def run_dir() -> Path:
    return Path(Settings.from_env().run_dir)


def listening(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((parts.hostname or "127.0.0.1", parts.port or 80)) == 0


def pid_file(name: str) -> Path:
    return run_dir() / f"{name}.pid"


def ours(name: str) -> bool:
    """Whether this checkout started ``name`` and it is still running."""
    path = pid_file(name)
    try:
        pid = int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return False
    return pid > 0 and alive(pid)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def start(name: str, cmd: list[str], url: str, env: dict[str, str], timeout_s: float = 60.0) -> str:
    """Start ``cmd`` detached unless we already run it at ``url``; returns a status word."""
    if listening(url):
        if ours(name):
            return "reused"
        raise RuntimeError(
            f"{url} is already answering, but not from a {name} this checkout started "
            f"(no live pid in {pid_file(name)}). Stop that process, or point this checkout "
            f"elsewhere (SUPERRES_{name.upper()}_URL / SUPERRES_RUN_DIR).")
    folder = run_dir()
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / f"{name}.log").open("ab")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=PROJECT_ROOT)
    pid_file(name).write_text(str(proc.pid))
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if listening(url):
            return "started"
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {folder / (name + '.log')}")
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer at {url} within {timeout_s:.0f}s")


def stop(name: str, timeout_s: float = 20.0) -> bool:
    """SIGTERM the service's process group, then SIGKILL what is left; True if it was running."""
    path = pid_file(name)
    if not path.exists():
        return False
    pid = int(path.read_text().strip() or 0)
    path.unlink()
    if not pid or not alive(pid):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.time() + timeout_s
    while time.time() < deadline and alive(pid):
        time.sleep(0.2)
    if alive(pid):
        os.killpg(pid, signal.SIGKILL)
    return True


def callback_secret(home: Path) -> str:
    """The embedded setup's callback secret: generated once, kept private under AIRFLOW_HOME."""
    path = home / "callback_secret"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def notifier_cmd(url: str) -> list[str]:
    parts = urlsplit(url)
    return [sys.executable, "-m", "notifier", "--host", parts.hostname or "127.0.0.1",
            "--port", str(parts.port or 80)]


def picsum_cmd(url: str) -> list[str]:
    parts = urlsplit(url)
    return [sys.executable, "-m", "superres.picsum_server", "--host", parts.hostname or "127.0.0.1",
            "--port", str(parts.port or 80)]
