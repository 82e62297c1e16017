"""The HTML pages: gallery, run page, trend chart, escaping of everything the pipeline sends."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from flask.testing import FlaskClient

from notifier import create_app
from tests.notifier.helpers import make_event, post_event


class _Collector(HTMLParser):
    """Collects metric elements (data-metric) and <img> sources from a page."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[dict[str, str | None], str]] = []
        self.images: list[str] = []
        self._open: dict[str, str | None] | None = None
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.images.append(a["src"] or "")
        if tag == "script":
            self.scripts += 1
        if "data-metric" in a and "data-image-id" in a:
            self._open = a

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.metrics.append((self._open, data.strip()))
            self._open = None


def _parse(html: str) -> _Collector:
    collector = _Collector()
    collector.feed(html)
    return collector


def test_empty_gallery_renders(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "No processed images yet" in page
    assert "No run has reported yet" in page


def test_gallery_shows_images_and_metrics_newest_first(client: FlaskClient) -> None:
    old, new = (
        make_event(),
        make_event(ds="2026-01-06", run_id="scheduled__2026-01-06", image_ids=("201", "202")),
    )
    assert post_event(client, old).status_code == 201
    assert post_event(client, new).status_code == 201
    page = client.get("/").get_data(as_text=True)
    parsed = _parse(page)

    cards = re.findall(r'<article class="image-card" data-image-id="([^"]+)"', page)
    assert cards == ["201", "202", "101", "102"]
    expected: dict[tuple[str, str], str] = {}
    for event in (old, new):
        for m in event["metrics"]["images"]:
            for name in ("psnr", "psnr_bicubic"):
                expected[(m["image_id"], name)] = f"{m[name]:.2f}"
            for name in ("ssim", "ssim_bicubic"):
                expected[(m["image_id"], name)] = f"{m[name]:.4f}"
    shown = {(a["data-image-id"], a["data-metric"]): text for a, text in parsed.metrics}
    assert {k: shown[k] for k in expected} == expected
    # Original, bicubic, SR, plus both layers of the before/after slider.
    assert len(parsed.images) == 4 * 5
    assert "/images/sr/ds=2026-01-06/201.png" in parsed.images
    assert '<a href="/runs/scheduled__2026-01-06" data-ds="2026-01-06">run 2026-01-06</a>' in page
    assert 'class="compare__range"' in page


def test_gallery_size_limits_images(app_config: dict[str, Any]) -> None:
    client = create_app({**app_config, "GALLERY_SIZE": 3}).test_client()
    post_event(client, make_event(image_ids=("1", "2", "3", "4", "5")))
    page = client.get("/").get_data(as_text=True)
    assert re.findall(r'<article class="image-card" data-image-id="([^"]+)"', page) == ["1", "2", "3"]


def test_gallery_auto_refreshes_at_configured_interval(app_config: dict[str, Any]) -> None:
    page = create_app({**app_config, "REFRESH_S": 17}).test_client().get("/").get_data(as_text=True)
    assert '<meta http-equiv="refresh" content="17">' in page
    page = create_app({**app_config, "REFRESH_S": 0}).test_client().get("/").get_data(as_text=True)
    assert 'http-equiv="refresh"' not in page


def test_failed_runs_are_listed_with_a_badge(client: FlaskClient) -> None:
    post_event(client, make_event())
    failed = {
        "run_id": "scheduled__2026-01-06",
        "ds": "2026-01-06",
        "state": "failed",
        "counts": {"fetched": 8, "processed": 0, "quarantined": 0},
        "failed_tasks": ["upscale"],
    }
    post_event(client, failed)
    page = client.get("/").get_data(as_text=True)
    assert re.search(r'<tr class="row--failed" data-run-id="scheduled__2026-01-06">', page)
    assert '<span class="badge badge--bad" data-state="failed">failed</span>' in page
    assert '<span class="badge badge--ok" data-state="success">success</span>' in page


def test_trend_chart_plots_mean_psnr_gain_per_date(client: FlaskClient) -> None:
    for ds, gain in (("2026-01-03", 0.8), ("2026-01-04", -0.2), ("2026-01-06", 1.4)):
        post_event(client, make_event(ds=ds, run_id=f"scheduled__{ds}", image_ids=("1",), gain=gain))
    page = client.get("/").get_data(as_text=True)
    assert '<svg class="trend"' in page
    dots = re.findall(r'data-ds="(\d{4}-\d{2}-\d{2})" data-gain="([^"]+)"', page)
    assert [d for d, _ in dots] == ["2026-01-03", "2026-01-04", "2026-01-06"]
    assert [float(g) for _, g in dots] == pytest.approx([0.8, -0.2, 1.4])
    assert "trend__dot--neg" in page
    assert "<title>2026-01-06: +1.40 dB</title>" in page


def test_trend_chart_placeholder_without_metrics(client: FlaskClient) -> None:
    post_event(
        client,
        {
            "run_id": "r",
            "ds": "2026-01-05",
            "state": "failed",
            "counts": {"fetched": 0, "processed": 0, "quarantined": 0},
        },
    )
    page = client.get("/").get_data(as_text=True)
    assert '<svg class="trend"' not in page
    assert "No evaluate-mode run with metrics yet" in page


def test_run_page_shows_counts_quarantine_quality_timings_failures(client: FlaskClient) -> None:
    event = make_event(state="failed")
    post_event(client, event)
    response = client.get("/runs/" + event["run_id"])
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert '<dd data-count="fetched">3</dd>' in page
    assert '<dd data-count="processed">2</dd>' in page
    assert '<dd data-count="quarantined" class="warn">1</dd>' in page
    assert '<li class="mono" data-failed-task>upscale</li>' in page
    assert 'data-quarantine-id="999"' in page and "decode_error" in page
    assert "expect_column_values_to_not_be_null" in page and "tile_y" in page
    assert re.search(r'data-task="upscale">.*?41\.5 s', page, re.S)
    assert (
        page.index('data-task="upscale"')
        < page.index('data-task="evaluate"')
        < page.index('data-task="fetch"')
    )
    assert "/data/sr/ds=2026-01-05/" in page
    assert "/images/reports/ds=2026-01-05/101_comparison.png" in page


def test_run_page_404_for_unknown_run(client: FlaskClient) -> None:
    response = client.get("/runs/scheduled__1999-01-01")
    assert response.status_code == 404
    assert "No report has been received for this run." in response.get_data(as_text=True)


def test_pages_send_security_headers(client: FlaskClient) -> None:
    headers = client.get("/").headers
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
