"""The trend chart's date labels: however the run dates cluster, no two labels overlap."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.chart import LABEL_GAP, trend_chart

START = dt.date(2026, 1, 1)


@settings(max_examples=200, deadline=None)
@given(days=st.sets(st.integers(0, 400), min_size=1, max_size=60), gain=st.floats(-3, 3))
def test_date_labels_never_overlap_and_the_newest_is_labelled(days: set[int], gain: float) -> None:
    series = [((START + dt.timedelta(d)).isoformat(), gain + d / 100) for d in sorted(days)]
    chart = trend_chart(series)
    assert chart is not None
    ticks = chart.x_ticks
    assert ticks[-1].label == series[-1][0]
    assert [t.pos for t in ticks] == sorted(t.pos for t in ticks)
    for a, b in zip(ticks, ticks[1:], strict=False):
        assert a.extent[1] + LABEL_GAP <= b.extent[0], (a, b)
    assert all(t.extent[0] >= 0 and t.extent[1] <= chart.width for t in ticks)  # nothing clipped
    assert len(chart.points) == len(series)


def test_evenly_spread_dates_keep_several_labels() -> None:
    series = [((START + dt.timedelta(d)).isoformat(), 1.0) for d in range(60)]
    labels = [t.label for t in trend_chart(series).x_ticks]  # type: ignore[union-attr]
    assert 5 <= len(labels) <= 7
    assert labels[0] == "2026-01-01" and labels[-1] == "2026-03-01"
