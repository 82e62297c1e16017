"""Jinja filters for numbers and times, so every template formats metrics the same way.

PSNR is shown with 2 decimals and SSIM with 4 (browser tests depend on it);
missing values render as an em dash, infinite PSNR as "∞".  Filters return
plain strings, so autoescaping still applies to them.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

from flask import Flask

MISSING = "—"


def _number(value: Any, decimals: int, signed: bool = False) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return MISSING
    if math.isinf(value):
        return ("+" if signed and value > 0 else "-" if value < 0 else "") + "∞"
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def psnr(value: Any) -> str:
    return _number(value, 2)


def ssim(value: Any) -> str:
    return _number(value, 4)


def gain(value: Any) -> str:
    """A signed PSNR difference in dB, e.g. "+1.23"."""
    return _number(value, 2, signed=True)


def seconds(value: Any) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return MISSING
    if value >= 60:
        minutes, rest = divmod(float(value), 60)
        return f"{int(minutes)} min {rest:04.1f} s"
    return f"{value:.1f} s"


def utc(value: Any) -> str:
    """Unix seconds as a readable UTC time."""
    if not isinstance(value, int | float):
        return MISSING
    return dt.datetime.fromtimestamp(value, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def utc_short(value: Any) -> str:
    """Unix seconds as a compact UTC time for tables."""
    if not isinstance(value, int | float):
        return MISSING
    return dt.datetime.fromtimestamp(value, tz=dt.UTC).strftime("%Y-%m-%d %H:%M")


def raw_number(value: Any) -> str:
    """The exact value, for data attributes that tests and scripts read."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return ""
    return repr(float(value))


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def init_app(app: Flask) -> None:
    app.jinja_env.filters.update(
        psnr=psnr,
        ssim=ssim,
        gain=gain,
        seconds=seconds,
        utc=utc,
        utc_short=utc_short,
        raw_number=raw_number,
        pretty_json=pretty_json,
    )
