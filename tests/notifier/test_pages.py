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


# --------------------------------------------------------------------------- upscale mode: no PSNR, and why


def _upscale_event(ds: str = "2026-01-06", run_id: str = "scheduled__2026-01-06") -> dict[str, Any]:
    """An upscale-mode event as the notify task sends it: no metrics, the images without scores."""
    event = make_event(ds=ds, run_id=run_id, image_ids=("201", "202"))
    event.update(mode="upscale", metrics=None)
    return event


NOTE = 'data-note="no-ground-truth"'


def test_upscale_runs_say_why_they_have_no_psnr(client: FlaskClient) -> None:
    assert post_event(client, make_event()).status_code == 201
    assert post_event(client, _upscale_event()).status_code == 201
    page = client.get("/").get_data(as_text=True)
    cards = dict(re.findall(r'<article class="image-card" data-image-id="(\d+)"(.*?)</article>', page, re.S))
    for upscaled in ("201", "202"):
        card = cards[upscaled]
        assert NOTE in card and "no ground truth" in card
        assert 'title="Upscale mode has no ground truth' in card  # on the metrics showing "—"
        assert '<span class="unit">dB</span>' not in card  # no "— dB"
    for evaluated in ("101", "102"):
        assert NOTE not in cards[evaluated] and '<span class="unit">dB</span>' in cards[evaluated]
    latest = page[page.index('class="card card--latest"'):page.index('class="section"')]
    assert NOTE in latest and "so there is no PSNR" in latest
    upscale_row = re.search(r'<tr [^>]*data-run-id="scheduled__2026-01-06">.*?</tr>', page, re.S)
    evaluated_id = re.escape(make_event()["run_id"])
    evaluate_row = re.search(rf'<tr [^>]*data-run-id="{evaluated_id}">.*?</tr>', page, re.S)
    assert upscale_row and NOTE in upscale_row.group(0) and "title=" in upscale_row.group(0)
    assert evaluate_row and NOTE not in evaluate_row.group(0)


def test_upscale_run_page_says_why_it_has_no_psnr(client: FlaskClient) -> None:
    event = _upscale_event()
    assert post_event(client, event).status_code == 201
    page = client.get("/runs/" + event["run_id"]).get_data(as_text=True)
    counts = page[page.index("<h2>Counts</h2>"):page.index("<h2>Failed tasks</h2>")]
    assert NOTE in counts and "Upscale mode has no ground truth" in counts
    assert page.count(NOTE) == 1 + 2  # the run, and each image's FSRCNN panel
    evaluated = make_event()
    post_event(client, evaluated)
    assert NOTE not in client.get("/runs/" + evaluated["run_id"]).get_data(as_text=True)


# --------------------------------------------------------------------------- trend chart date labels

CHAR_W = 0.62 * 11  # the chart's monospace label font (11 px), per character


def _date_labels(page: str) -> list[tuple[float, float, str]]:
    """(left, right, text) of each date label on the trend's x axis, as the browser lays them out."""
    out = []
    for x, anchor, label in re.findall(
        r'<text class="trend__label[^"]*" x="([\d.]+)" y="[\d.]+"\s+'
        r'text-anchor="(\w+)">(\d{4}-\d{2}-\d{2})</text>',
        page,
    ):
        pos, width = float(x), len(label) * CHAR_W
        left = {"start": pos, "end": pos - width}.get(anchor, pos - width / 2)
        out.append((left, left + width, label))
    return out


@pytest.mark.parametrize(
    "dates",
    [
        ["2026-11-01", "2026-11-16", "2026-11-17"],
        ["2026-10-01", "2026-10-02", "2026-11-16", "2026-11-17"],
        [f"2026-11-{d:02d}" for d in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 16, 17)],
    ],
    ids=["two-last-days", "clusters-at-both-ends", "dense-then-gap"],
)
def test_trend_date_labels_never_overlap(client: FlaskClient, dates: list[str]) -> None:
    for ds in dates:
        post_event(client, make_event(ds=ds, run_id=f"scheduled__{ds}", image_ids=("1",)))
    page = client.get("/").get_data(as_text=True)
    labels = _date_labels(page)
    assert [label for *_, label in labels][-1] == dates[-1]  # the newest date is always labelled
    assert labels[0][2] in (dates[0], dates[-1])
    for (_, right, a), (left, _, b) in zip(labels, labels[1:], strict=False):
        assert right < left, f"{a} and {b} overlap"
    assert len(re.findall(r'<circle class="trend__dot', page)) == len(dates)  # every date keeps its dot


# --------------------------------------------------------------------------- the per-image gate's flags

FLAG_CHIP = re.compile(r'<span class="chip chip--down" data-flag="([a-z_]+)"')


def _flagged_event() -> dict[str, Any]:
    event = make_event(image_ids=("101", "102", "103"))
    event["metrics"]["images"][1]["flags"] = ["sr_below_bicubic", "near_constant_output"]
    event["metrics"]["images"][2]["flags"] = []
    return event


def _cards(page: str) -> dict[str, str]:
    return dict(re.findall(r'<article class="image-card" data-image-id="(\d+)"(.*?)</article>', page, re.S))


def test_flagged_images_are_marked_on_the_gallery(client: FlaskClient) -> None:
    assert post_event(client, _flagged_event()).status_code == 201
    page = client.get("/").get_data(as_text=True)
    cards = _cards(page)
    assert FLAG_CHIP.findall(cards["102"]) == ["sr_below_bicubic", "near_constant_output"]
    assert "SR far below bicubic" in cards["102"] and "near-constant output" in cards["102"]
    assert 'data-flags="sr_below_bicubic near_constant_output"' in cards["102"]
    assert "Flagged, not in the run's mean" in cards["102"]
    assert "data-flag" not in cards["101"] and "data-flag" not in cards["103"]
    latest = page[page.index('class="card card--latest"'):page.index('class="section"')]
    assert 'data-flagged="1"' in latest and "1 flagged image left out of the mean" in latest


def test_flagged_images_are_marked_on_the_run_page(client: FlaskClient) -> None:
    event = _flagged_event()
    assert post_event(client, event).status_code == 201
    page = client.get("/runs/" + event["run_id"]).get_data(as_text=True)
    counts = page[page.index("<h2>Counts</h2>"):page.index("<h2>Failed tasks</h2>")]
    assert 'data-flagged="1"' in counts
    cards = _cards(page)
    assert FLAG_CHIP.findall(cards["102"]) == ["sr_below_bicubic", "near_constant_output"]
    assert not FLAG_CHIP.findall(cards["101"] + cards["103"])
    plain = make_event(ds="2026-01-07", run_id="scheduled__2026-01-07")
    assert post_event(client, plain).status_code == 201
    assert "data-flag" not in client.get("/runs/" + plain["run_id"]).get_data(as_text=True)


@pytest.mark.parametrize("mode", ["evaluate", "upscale"])
def test_the_flags_metrics_json_holds_reach_the_gallery(tmp_path: Any, app_config: dict[str, Any],
                                                        mode: str) -> None:
    """From the evaluate stage's report, through the notify task's event, to the page."""
    from superres.orchestration import notify as notify_mod
    from superres.pipeline.evaluate import metrics_report
    from superres.storage import LocalStorage
    from tests.notifier.test_callback_schema import _seed

    ds, run_id = "2026-03-01", "scheduled__2026-03-01T00:00:00+00:00"
    run = _seed(tmp_path / "store", ds, run_id, mode)
    storage = LocalStorage(tmp_path / "store")
    scores = (dict(psnr=31.0, ssim=0.9, psnr_bicubic=30.0, ssim_bicubic=0.88) if mode == "evaluate" else
              dict.fromkeys(("psnr", "ssim", "psnr_bicubic", "ssim_bicubic")))
    rows = [{"image_id": "10", **scores, "output_std": 35.0}, {"image_id": "11", **scores, "output_std": 0.2}]
    storage.write_json(f"reports/ds={ds}/metrics.json", metrics_report(ds, 3, rows, mode=mode))
    key = f"{run_id}#0"
    body = notify_mod.encode(notify_mod.build_event(run, storage, [], "superres_daily", key))
    client = create_app(app_config).test_client()
    response = client.post(notify_mod.CALLBACK_PATH, data=body,
                           headers=notify_mod.signed_headers(body, app_config["CALLBACK_SECRET"], key))
    assert response.status_code == 201, response.json
    for url in ("/", "/runs/" + run_id):
        page = client.get(url).get_data(as_text=True)
        cards = _cards(page)
        assert FLAG_CHIP.findall(cards["11"]) == ["near_constant_output"]
        assert not FLAG_CHIP.findall(cards["10"])
        assert 'data-flagged="1"' in page


SHORTFALL = re.compile(r"<p [^>]*data-shortfall[^>]*>([^<]*)</p>")


def test_run_page_says_when_the_source_had_fewer_photos_than_requested(client: FlaskClient) -> None:
    short = dict(make_event(), source={"requested": 64, "available": 3})
    assert post_event(client, short).status_code == 201
    page = client.get("/runs/" + short["run_id"]).get_data(as_text=True)
    counts = page[page.index("<h2>Counts</h2>"):page.index("<h2>Failed tasks</h2>")]
    assert SHORTFALL.findall(counts) == ["3 of 64 requested: the source has only 3."]
    assert '<dd data-count="fetched">3</dd>' in counts
    others = ({"requested": 3, "available": 9}, {"requested": 64, "available": None}, None)
    for n, source in enumerate(others):
        plain = dict(make_event(ds=f"2026-01-1{n}", run_id=f"scheduled__2026-01-1{n}"), source=source)
        assert post_event(client, plain).status_code == 201
        assert "data-shortfall" not in client.get("/runs/" + plain["run_id"]).get_data(as_text=True)


def test_a_short_source_reaches_the_run_page_from_the_notify_task(tmp_path: Any,
                                                                  app_config: dict[str, Any]) -> None:
    """From run.json's ``source``, through the notify task's event, to the run page."""
    from superres.orchestration import notify as notify_mod
    from superres.storage import LocalStorage
    from tests.notifier.test_callback_schema import _seed

    ds, run_id = "2026-03-01", "scheduled__2026-03-01T00:00:00+00:00"
    run = _seed(tmp_path / "store", ds, run_id, "evaluate")
    storage = LocalStorage(tmp_path / "store")
    report = storage.read_json(f"reports/ds={ds}/run.json")
    storage.write_json(f"reports/ds={ds}/run.json", dict(report, source={
        "requested": 64, "available": 3, "fetched": 3,
        "shortfall": "3 of 64 requested: the source has only 3 photos"}))
    key = f"{run_id}#0"
    body = notify_mod.encode(notify_mod.build_event(run, storage, [], "superres_daily", key))
    client = create_app(app_config).test_client()
    response = client.post(notify_mod.CALLBACK_PATH, data=body,
                           headers=notify_mod.signed_headers(body, app_config["CALLBACK_SECRET"], key))
    assert response.status_code == 201, response.json
    page = client.get("/runs/" + run_id).get_data(as_text=True)
    assert SHORTFALL.findall(page) == ["3 of 64 requested: the source has only 3."]
