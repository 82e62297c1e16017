"""The notifier's configuration, read from the environment once at app creation.

``NOTIFIER_*`` variables win; otherwise the pipeline's own settings
(:mod:`superres.config`, i.e. ``SUPERRES_*`` and its defaults) are used, so the
embedded setup needs no notifier-specific configuration at all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from superres.config import PROJECT_ROOT, Secret, Settings

DEFAULT_DB = PROJECT_ROOT / ".run" / "notifier.sqlite"
DEFAULTS: dict[str, Any] = {
    "DATABASE": str(DEFAULT_DB),
    "CALLBACK_SECRET": Secret(""),
    "STORAGE_URI": "",
    "STORAGE": None,  # a ready Storage object; tests and embedders may inject one
    "GALLERY_SIZE": 10,
    "REFRESH_S": 30,
    "MAX_CONTENT_LENGTH": 1024 * 1024,
    "MAX_SKEW_S": 300,
    "RUNS_ON_INDEX": 20,
    "TREND_POINTS": 60,
}


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Flask config values from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    settings = Settings.from_env(env)
    secret = env.get("NOTIFIER_SECRET") or settings.callback_secret.reveal()
    return {
        "DATABASE": str(Path(env.get("NOTIFIER_DB") or DEFAULT_DB)),
        "CALLBACK_SECRET": Secret(secret),
        "STORAGE_URI": env.get("NOTIFIER_STORAGE_URI") or settings.storage_uri,
        "GALLERY_SIZE": _int(env, "NOTIFIER_GALLERY_SIZE", 10, minimum=1),
        "REFRESH_S": _int(env, "NOTIFIER_REFRESH_S", 30),
        "MAX_CONTENT_LENGTH": _int(env, "NOTIFIER_MAX_BODY", 1024 * 1024, minimum=1),
        "MAX_SKEW_S": _int(env, "NOTIFIER_MAX_SKEW_S", settings.callback_max_skew_s, minimum=1),
    }
