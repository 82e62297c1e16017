"""Clean starts and stops of the embedded stack: ``make up`` / ``make down``.

``make down`` must leave no process behind, and ``make up`` / ``make run`` must
never adopt a service on a port this checkout did not start (another checkout's
notifier would serve other storage).
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import psutil
import pytest

from superres.orchestration import services
from tests.conftest import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_port_this_checkout_did_not_start_is_not_reused(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERRES_RUN_DIR", str(tmp_path / "run"))
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{other.server_port}"
    try:
        with pytest.raises(RuntimeError, match=r"already answering, but not from a notifier this checkout"):
            services.start("notifier", services.notifier_cmd(url), url, dict(os.environ))
    finally:
        other.shutdown()
        other.server_close()
    assert not services.pid_file("notifier").exists()


def test_service_started_here_is_reused_and_stopped_with_its_children(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERRES_RUN_DIR", str(tmp_path / "run"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # A service that forks a grandchild, as airflow standalone does with its components.
    script = ("import subprocess, sys, http.server;"
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
              f"http.server.ThreadingHTTPServer(('127.0.0.1', {port}), "
              "http.server.SimpleHTTPRequestHandler).serve_forever()")
    assert services.start("svc", [sys.executable, "-c", script], url, dict(os.environ)) == "started"
    assert services.start("svc", [sys.executable, "-c", script], url, dict(os.environ)) == "reused"
    pid = int(services.pid_file("svc").read_text())
    family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    assert len(family) == 2
    assert services.stop("svc") is True
    _, alive = psutil.wait_procs(family, timeout=30)
    assert alive == []
    assert services.stop("svc") is False  # nothing left to stop


def _session_members(sids: set[int]) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) in sids:
                out.append(p)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return out


@pytest.mark.e2e
def test_make_up_prints_a_fresh_password_once_and_make_down_leaves_nothing(tmp_path: Path) -> None:
    ports = {"airflow": _free_port(), "notifier": _free_port(), "picsum": _free_port(),
             "spark-connect": _free_port()}
    env = dict(os.environ,
               AIRFLOW_HOME=str(tmp_path / "airflow"), SUPERRES_RUN_DIR=str(tmp_path / "run"),
               SUPERRES_STORAGE_URI=str(tmp_path / "data"), AIRFLOW__API__PORT=str(ports["airflow"]),
               SUPERRES_NOTIFIER_URL=f"http://127.0.0.1:{ports['notifier']}",
               SUPERRES_PICSUM_URL=f"http://127.0.0.1:{ports['picsum']}", PYTHONPATH=str(ROOT),
               SUPERRES_SPARK_CONNECT_LOCAL_URL=f"sc://127.0.0.1:{ports['spark-connect']}")
    for name in ("AIRFLOW_CONN_NOTIFIER_DEFAULT", "SUPERRES_CALLBACK_SECRET", "NOTIFIER_DB",
                 "SUPERRES_SPARK_REMOTE"):
        env.pop(name, None)
    run_dir = tmp_path / "run"
    sids: set[int] = set()
    try:
        up = subprocess.run([sys.executable, "-m", "superres.orchestration.stack", "up"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
        assert up.returncode == 0, up.stdout + up.stderr
        sids = {int((run_dir / f"{n}.pid").read_text()) for n in ports}
        stored = json.loads((tmp_path / "airflow/simple_auth_manager_passwords.json.generated").read_text())
        password = stored["admin"]
        assert len(password) >= 12 and password.lower() not in ("admin", "airflow", "password")
        assert up.stdout.count(password) == 1
        # Everything answers: the Airflow API with that password, the notifier, the offline source.
        req = urllib.request.Request(f"http://127.0.0.1:{ports['airflow']}/auth/token", method="POST",
                                     data=json.dumps({"username": "admin", "password": password}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status in (200, 201) and json.loads(resp.read())["access_token"]
        for port in (ports["notifier"], ports["picsum"], ports["spark-connect"]):
            assert services.listening(f"http://127.0.0.1:{port}")
        assert f"sc://127.0.0.1:{ports['spark-connect']}" in up.stdout  # the Spark Connect server
        members = _session_members(sids)
        assert len(members) >= 4  # standalone forks scheduler, api-server, dag-processor, triggerer

        again = subprocess.run([sys.executable, "-m", "superres.orchestration.stack", "up"], env=env,
                               cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and password not in again.stdout  # shown once only
        assert again.stdout.count("reused") == 4

        down = subprocess.run([sys.executable, "-m", "superres.orchestration.stack", "down"], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert down.returncode == 0, down.stderr
        _, alive = psutil.wait_procs(members, timeout=60)
        assert alive == [], [p.pid for p in alive]
        assert _session_members(sids) == []
        for port in ports.values():
            assert not services.listening(f"http://127.0.0.1:{port}")
    finally:
        for p in _session_members(sids):
            p.kill()
