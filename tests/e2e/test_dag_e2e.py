"""The whole superres_daily DAG through dag.test(): real Spark (spark-submit, local[2]),
the offline Picsum source, local storage or S3 on moto, and a real notifier over HTTP.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from superres.pipeline.evaluate import COMPARE_CROP, COMPARE_GAP
from tests.conftest import FAKE_ACCESS_KEY, FAKE_SECRET_KEY, ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.spark]

# Reports that carry this run's timings or identity; everything else must be byte-identical on a rerun.
PER_RUN = ("run.json", "event.json", "owner.json", "/stages/")


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags["superres_daily"]


def run_dag(ds: str, **conf: Any):
    dr = _dag().test(logical_date=datetime.fromisoformat(ds).replace(tzinfo=UTC), run_conf=conf)
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert dr.state == "success", states
    return dr


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def check_outputs(read, list_keys, ds: str, scale: int, mode: str) -> dict[str, Any]:
    """Every fetched photo has exactly one PNG of scale x the LR size; counts reconcile."""
    manifest = json.loads(read(f"raw/ds={ds}/_manifest.json"))
    report = json.loads(read(f"reports/ds={ds}/run.json"))
    pngs = sorted(k for k in list_keys(f"sr/ds={ds}/") if k.endswith(".png"))
    assert len(pngs) == len(manifest["images"]) > 0
    for img in manifest["images"]:
        import io

        out = Image.open(io.BytesIO(read(f"sr/ds={ds}/{img['image_id']}.png")))
        lr_w, lr_h = (img["width"], img["height"]) if mode == "upscale" else \
            (img["width"] // scale, img["height"] // scale)
        assert out.size == (lr_w * scale, lr_h * scale)
        # Its bicubic baseline and the comparison strip, published beside it by the evaluate job:
        # HR | bicubic | SR, or bicubic | SR in upscale mode (no ground truth).
        bicubic = Image.open(io.BytesIO(read(f"reports/ds={ds}/bicubic/{img['image_id']}.png")))
        assert bicubic.size == out.size
        compare = Image.open(io.BytesIO(read(f"reports/ds={ds}/compare/{img['image_id']}.png")))
        panels = 2 if mode == "upscale" else 3
        cw, ch = (min(COMPARE_CROP, side) for side in out.size)
        assert compare.size == (panels * cw + (panels - 1) * COMPARE_GAP, ch)
    c = report["counts"]
    assert c["fetched"] == c["processed"] + c["quarantined"] == manifest["fetched"]
    assert report["reconciled"] is True
    return {"manifest": manifest, "report": report}


def check_gallery_in_browser(base_url: str, metrics: dict[str, Any]) -> None:
    """Headless Chromium: the gallery shows the run's images and exactly metrics.json's numbers."""
    from playwright.sync_api import sync_playwright

    from tests.notifier.test_gallery_browser import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists() and not os.environ.get("CI"):
        pytest.skip("needs Debian's chromium (make test installs it)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(base_url) else r.abort())
            assert page.goto(base_url + "/", wait_until="load").status == 200
            imgs = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
            assert imgs and min(imgs) > 0
            shown = page.eval_on_selector_all(
                "[data-metric][data-image-id]",
                "els => els.map(e => [e.dataset.imageId, e.dataset.metric, e.textContent.trim()])")
            keys = ("psnr", "ssim", "psnr_bicubic", "ssim_bicubic")
            shown = {(i, m): t for i, m, t in shown if m in keys}
            expected = {(row["image_id"], k): (f"{row[k]:.4f}" if k.startswith("ssim") else f"{row[k]:.2f}")
                        for row in metrics["images"] for k in keys}
            assert shown == expected
            out = ROOT / "test-artifacts"
            out.mkdir(exist_ok=True)
            page.screenshot(path=str(out / "e2e-gallery.png"), full_page=True)
        finally:
            browser.close()


def test_local_run_then_rerun_is_idempotent(pipeline_env: dict[str, Any]) -> None:
    storage: Path = pipeline_env["storage"]
    ds = "2026-01-05"
    run_dag(ds, num_images=3, tile_size=96)
    first = check_outputs(lambda k: (storage / k).read_bytes(),
                          lambda p: [str(x.relative_to(storage)) for x in (storage / p).glob("*")],
                          ds, scale=2, mode="evaluate")
    metrics = json.loads((storage / f"reports/ds={ds}/metrics.json").read_text())
    assert set(metrics) >= {"ds", "scale", "images", "mean"} and len(metrics["images"]) == 3
    assert metrics["mean"]["psnr"] > metrics["mean"]["psnr_bicubic"]
    quality = json.loads((storage / f"reports/ds={ds}/quality.json").read_text())
    assert quality["success"] is True

    # The notifier received one signed event for the run.
    client = pipeline_env["notifier"]["app"].test_client()
    runs = client.get("/api/runs").get_json()
    runs = runs["runs"] if isinstance(runs, dict) else runs
    assert [r["ds"] for r in runs] == [ds] and runs[0]["state"] == "success"

    check_gallery_in_browser(pipeline_env["notifier"]["url"], metrics)

    before = snapshot(storage)
    staging_before = snapshot(pipeline_env["staging"])
    run_dag(ds, num_images=3, tile_size=96)
    after = snapshot(storage)
    assert sorted(after) == sorted(before), "a rerun must leave exactly the same objects"
    changed = [k for k in after if after[k] != before[k] and not any(p in k for p in PER_RUN)]
    assert changed == [], f"rerun changed bytes of {changed}"
    staging_after = snapshot(pipeline_env["staging"])
    assert len(staging_after) == len(staging_before)  # overwritten, no leftovers
    assert check_outputs(lambda k: (storage / k).read_bytes(),
                         lambda p: [str(x.relative_to(storage)) for x in (storage / p).glob("*")],
                         ds, 2, "evaluate")["manifest"]["selected"] == first["manifest"]["selected"]


def test_backfill_dates_have_their_own_partitions(pipeline_env: dict[str, Any]) -> None:
    """Dates one after another, as a backfill with max_active_runs=1 runs them (side by side:
    tests/reliability/test_compute_faults.py); the fetch's date-determinism is unit-tested."""
    storage: Path = pipeline_env["storage"]
    dates = ["2026-02-01", "2026-02-02"]
    for ds in dates:
        run_dag(ds, num_images=2, tile_size=128, mode="upscale")
    chosen = {}
    for ds in dates:
        out = check_outputs(lambda k: (storage / k).read_bytes(),
                            lambda p: [str(x.relative_to(storage)) for x in (storage / p).glob("*")],
                            ds, 2, "upscale")
        chosen[ds] = out["manifest"]["selected"]
        assert out["report"]["ds"] == ds
    assert chosen[dates[0]] != chosen[dates[1]]
    assert sorted(p.name for p in (storage / "sr").iterdir()) == [f"ds={d}" for d in dates]
    assert sorted(p.name for p in (storage / "raw").iterdir()) == [f"ds={d}" for d in dates]


def test_s3_run_through_moto(pipeline_env: dict[str, Any], s3_bucket: str, aws_env: str,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    monkeypatch.setenv("SUPERRES_STORAGE_URI", f"s3://{s3_bucket}/pipeline")
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({
        "conn_type": "aws", "login": FAKE_ACCESS_KEY, "password": FAKE_SECRET_KEY,
        "extra": {"region_name": "us-east-1", "endpoint_url": aws_env}}))
    s3 = boto3.client("s3")
    ds = "2026-01-09"
    run_dag(ds, num_images=2, mode="upscale", scale=3, tile_size=128)

    def read(key: str) -> bytes:
        return s3.get_object(Bucket=s3_bucket, Key=f"pipeline/{key}")["Body"].read()

    def list_keys(prefix: str) -> list[str]:
        resp = s3.list_objects_v2(Bucket=s3_bucket, Prefix=f"pipeline/{prefix}")
        return [o["Key"][len("pipeline/"):] for o in resp.get("Contents", [])]

    check_outputs(read, list_keys, ds, scale=3, mode="upscale")
    assert f"sr/ds={ds}/_SUCCESS" in list_keys(f"sr/ds={ds}/")


def test_failed_run_still_notifies_and_publishes_nothing(pipeline_env: dict[str, Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The source is down: fetch fails, nothing is published, and the notifier hears of it."""
    import socket

    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    monkeypatch.setenv("SUPERRES_PICSUM_URL", f"http://127.0.0.1:{dead}")
    monkeypatch.setenv("SUPERRES_FETCH_RETRIES", "1")
    monkeypatch.setenv("SUPERRES_FETCH_BACKOFF_S", "0.01")
    dag = _dag()
    for t in dag.tasks:
        t.retries = 0
    ds = "2026-03-01"
    dr = dag.test(logical_date=datetime.fromisoformat(ds).replace(tzinfo=UTC), run_conf={"num_images": 2})
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert dr.state == "failed"
    assert states["fetch"] == "failed" and states["notify"] == "success", states
    assert states["split"] == "upstream_failed"
    storage: Path = pipeline_env["storage"]
    assert not (storage / "sr").exists()
    runs = pipeline_env["notifier"]["app"].test_client().get("/api/runs").get_json()
    runs = runs["runs"] if isinstance(runs, dict) else runs
    assert [(r["ds"], r["state"]) for r in runs] == [(ds, "failed")]
    event = json.loads((storage / f"reports/ds={ds}/event.json").read_text())
    assert event["failed_tasks"] == ["fetch"] and event["images"] == []
