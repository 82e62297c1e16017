"""The Airflow UI plugin links to the configured notifier."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_plugin_views_point_at_the_configured_notifier() -> None:
    sys.path.insert(0, str(ROOT / "plugins"))
    try:
        from superres_gallery import gallery_views
    finally:
        sys.path.remove(str(ROOT / "plugins"))
    views = gallery_views("https://gallery.example.org/")
    assert views[0]["href"] == "https://gallery.example.org/" and views[0]["destination"] == "nav"
    assert views[1]["href"] == "https://gallery.example.org/runs/{RUN_ID}"
    assert views[1]["destination"] == "dag_run"


def test_airflow_loads_the_plugin() -> None:
    env = dict(os.environ, SUPERRES_NOTIFIER_URL="http://127.0.0.1:9999")
    code = ("from airflow import plugins_manager as pm\n"
            "assert pm.get_import_errors() == {}, pm.get_import_errors()\n"
            "info = [p for p in pm.get_plugin_info() if p['name'] == 'superres_gallery']\n"
            "print(info[0]['external_views'][0]['href'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("http://127.0.0.1:9999/")
