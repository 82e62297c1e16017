"""Geometry of the PSNR-gain trend chart; the template turns it into inline SVG.

Computed server-side so the page needs no charting library (the machine is
offline).  Dates are placed on a true time axis, so missing days show as gaps
in spacing, and zero is always inside the y range: the baseline "no better than
bicubic" stays visible.

Every point gets a dot, but only some get a date label: labels are picked from
the first and last date inwards so that no two overlap (each label's width is
estimated from its length in the chart's monospace font), however the dates
cluster.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

WIDTH, HEIGHT = 760, 240
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 52, 16, 14, 34
MAX_X_LABELS = 7
LABEL_FONT_PX = 11  # .trend__label in notifier.css; user units, so it scales with the chart
LABEL_CHAR_W = 0.62 * LABEL_FONT_PX  # advance of a monospace digit, a little over DejaVu Sans Mono's
LABEL_GAP = 10


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
    anchor: str = "middle"  # SVG text-anchor: "start" at the left edge, "end" at the right

    @property
    def extent(self) -> tuple[float, float]:
        """The x range the label's text covers."""
        width = len(self.label) * LABEL_CHAR_W
        if self.anchor == "start":
            return self.pos, self.pos + width
        if self.anchor == "end":
            return self.pos - width, self.pos
        return self.pos - width / 2, self.pos + width / 2


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
    x_ticks = _x_ticks(points, left, right)
    return TrendChart(width, height, left, right, top, bottom, points, y_ticks, x_ticks, y_of(0.0))


def _x_ticks(points: tuple[Point, ...], left: float, right: float) -> tuple[Tick, ...]:
    """Date labels that never overlap: the first and last dates, then others that fit between.

    Edge labels hug the plot (anchored at their start or end) so they are never
    clipped.  A label is kept when its text clears its kept neighbours by
    ``LABEL_GAP`` and it lies at least 1/``MAX_X_LABELS`` of the plot from them.
    """
    ticks = [
        Tick(p.x, p.ds, "start" if p.x <= left + 1 else "end" if p.x >= right - 1 else "middle")
        for p in points
    ]
    if len(ticks) < 2:
        return tuple(ticks)
    spacing = (right - left) / MAX_X_LABELS
    last = ticks[-1]

    def clear(a: Tick, b: Tick) -> bool:  # a left of b
        return a.extent[1] + LABEL_GAP <= b.extent[0] and b.pos - a.pos >= spacing

    chosen = [ticks[0]]
    for tick in ticks[1:-1]:
        if clear(chosen[-1], tick) and clear(tick, last):
            chosen.append(tick)
    if clear(chosen[-1], last):
        chosen.append(last)
    else:  # only the first and last are left, and they collide: the newest date wins
        chosen[-1] = last
    return tuple(chosen)
