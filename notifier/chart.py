"""Geometry of the PSNR-gain trend chart; the template turns it into inline SVG.

Computed server-side so the page needs no charting library (the machine is
offline).  Dates are placed on a true time axis, so missing days show as gaps
in spacing, and zero is always inside the y range: the baseline "no better than
bicubic" stays visible.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

WIDTH, HEIGHT = 760, 240
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 52, 16, 14, 34
MAX_X_LABELS = 7


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    ds: str
    gain: float


@dataclass(frozen=True)
class Tick:
    pos: float
    label: str


@dataclass(frozen=True)
class TrendChart:
    width: int
    height: int
    left: float
    right: float
    top: float
    bottom: float
    points: tuple[Point, ...]
    y_ticks: tuple[Tick, ...]
    x_ticks: tuple[Tick, ...]
    zero_y: float

    @property
    def polyline(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)

    @property
    def area(self) -> str:
        """The polygon between the line and the zero baseline."""
        if not self.points:
            return ""
        first, last = self.points[0], self.points[-1]
        return f"{first.x:.1f},{self.zero_y:.1f} {self.polyline} {last.x:.1f},{self.zero_y:.1f}"


def _nice_step(span: float, target_ticks: int = 5) -> float:
    raw = span / max(target_ticks, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _tick_label(value: float, step: float) -> str:
    if abs(value) < step / 1e6:
        return "0"
    decimals = 0 if step >= 1 else 1 if step >= 0.1 else 2
    return f"{value:+.{decimals}f}"


def trend_chart(
    series: list[tuple[str, float]], width: int = WIDTH, height: int = HEIGHT
) -> TrendChart | None:
    """Layout for ``series`` of (YYYY-MM-DD, gain in dB), oldest first; None when empty."""
    series = [(ds, g) for ds, g in series if math.isfinite(g)]
    if not series:
        return None
    left, right = MARGIN_LEFT, width - MARGIN_RIGHT
    top, bottom = MARGIN_TOP, height - MARGIN_BOTTOM

    lo = min(0.0, *(g for _, g in series))
    hi = max(0.0, *(g for _, g in series))
    if hi - lo < 1e-9:
        hi = lo + 1.0
    step = _nice_step(hi - lo)
    lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step

    def y_of(value: float) -> float:
        return bottom - (value - lo) / (hi - lo) * (bottom - top)

    days = [dt.date.fromisoformat(ds).toordinal() for ds, _ in series]
    first, last = min(days), max(days)

    def x_of(day: int) -> float:
        if last == first:
            return (left + right) / 2
        return left + (day - first) / (last - first) * (right - left)

    points = tuple(Point(x_of(d), y_of(g), ds, g) for d, (ds, g) in zip(days, series, strict=True))
    n_ticks = round((hi - lo) / step)
    y_ticks = tuple(Tick(y_of(v), _tick_label(v, step)) for v in (lo + i * step for i in range(n_ticks + 1)))
    every = max(1, math.ceil(len(points) / MAX_X_LABELS))
    chosen = list(points[::every])
    if chosen[-1] is not points[-1]:
        if len(chosen) > 1 and points[-1].x - chosen[-1].x < (right - left) / (MAX_X_LABELS * 1.5):
            chosen.pop()
        chosen.append(points[-1])
    x_ticks = tuple(Tick(p.x, p.ds) for p in chosen)
    return TrendChart(width, height, left, right, top, bottom, points, y_ticks, x_ticks, y_of(0.0))
