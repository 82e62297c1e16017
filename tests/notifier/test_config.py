"""Configuration from the environment: NOTIFIER_* first, then the pipeline's SUPERRES_* settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from notifier import config, create_app
from superres.config import Secret


def test_defaults_follow_the_pipeline_settings() -> None:
    cfg = config.from_env({})
    assert cfg["DATABASE"] == str(config.DEFAULT_DB)
    assert cfg["CALLBACK_SECRET"] == "" and isinstance(cfg["CALLBACK_SECRET"], Secret)
    assert cfg["STORAGE_URI"].endswith("data")
    assert (cfg["GALLERY_SIZE"], cfg["REFRESH_S"], cfg["MAX_CONTENT_LENGTH"], cfg["MAX_SKEW_S"]) == (
        10,
        30,
        1024 * 1024,
        300,
    )


def test_superres_variables_are_used_when_notifier_ones_are_absent() -> None:
    cfg = config.from_env(
        {
            "SUPERRES_CALLBACK_SECRET": "pipeline-secret",
            "SUPERRES_STORAGE_URI": "s3://bucket/prefix",
            "SUPERRES_CALLBACK_MAX_SKEW_S": "120",
        }
    )
    assert cfg["CALLBACK_SECRET"].reveal() == "pipeline-secret"
    assert cfg["STORAGE_URI"] == "s3://bucket/prefix"
    assert cfg["MAX_SKEW_S"] == 120


def test_notifier_variables_win(tmp_path: Path) -> None:
    env = {
        "SUPERRES_CALLBACK_SECRET": "pipeline-secret",
        "SUPERRES_STORAGE_URI": "s3://bucket/prefix",
        "NOTIFIER_SECRET": "notifier-secret",
        "NOTIFIER_STORAGE_URI": str(tmp_path),
        "NOTIFIER_DB": str(tmp_path / "n.sqlite"),
        "NOTIFIER_GALLERY_SIZE": "4",
        "NOTIFIER_REFRESH_S": "0",
        "NOTIFIER_MAX_BODY": "2048",
        "NOTIFIER_MAX_SKEW_S": "60",
    }
    cfg = config.from_env(env)
    assert cfg["CALLBACK_SECRET"].reveal() == "notifier-secret"
    assert cfg["STORAGE_URI"] == str(tmp_path)
    assert cfg["DATABASE"] == str(tmp_path / "n.sqlite")
    assert (cfg["GALLERY_SIZE"], cfg["REFRESH_S"], cfg["MAX_CONTENT_LENGTH"], cfg["MAX_SKEW_S"]) == (
        4,
        0,
        2048,
        60,
    )
    assert "notifier-secret" not in repr(cfg)


@pytest.mark.parametrize(
    ("name", "value"), [("NOTIFIER_GALLERY_SIZE", "ten"), ("NOTIFIER_GALLERY_SIZE", "0")]
)
def test_invalid_numbers_fail_loudly(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        config.from_env({name: value})


def test_create_app_reads_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NOTIFIER_DB", str(tmp_path / "env.sqlite"))
    monkeypatch.setenv("NOTIFIER_SECRET", "from-env")
    monkeypatch.setenv("NOTIFIER_MAX_BODY", "4096")
    app = create_app()
    assert app.config["DATABASE"] == str(tmp_path / "env.sqlite")
    assert app.config["MAX_CONTENT_LENGTH"] == 4096
    assert (tmp_path / "env.sqlite").exists()
    assert "from-env" not in repr(app.config)


def test_notifier_never_imports_airflow(tmp_path: Path) -> None:
    """The notifier runs outside Airflow: serving pages and images must not pull it in."""
    code = f"""
import sys
from notifier import create_app
app = create_app({{"DATABASE": {str(tmp_path / "a.sqlite")!r}, "CALLBACK_SECRET": "x",
                  "STORAGE_URI": {str(tmp_path)!r}}})
client = app.test_client()
for path in ("/", "/api/runs", "/healthz", "/images/a.png"):
    client.get(path)
from notifier.media import get_storage
get_storage(app)
leaked = sorted(m for m in sys.modules if m == "airflow" or m.startswith("airflow."))
assert not leaked, leaked
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
