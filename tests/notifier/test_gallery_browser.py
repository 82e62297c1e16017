"""The gallery in a real browser: headless Chromium (Debian's) driven by Playwright.

A real notifier is served on 127.0.0.1 by Werkzeug in a thread, receives signed
callbacks over HTTP, and Chromium loads ``/``.  Checks what only a browser can:
every image actually decodes, the numbers shown equal the posted metrics as
rendered, no script runs from event data, the CSP blocks nothing of ours, and
the slider works.  Requests to anything but the notifier are aborted.
Saves ``test-artifacts/gallery.png``.
"""

from __future__ import annotations

import io
import json
import os
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter
from werkzeug.serving import make_server

from notifier import create_app
from superres.metrics import score
from superres.signing import sign
from tests.notifier.helpers import SECRET, XSS, image_keys

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SCALE = 2

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason="needs Debian's /usr/bin/chromium (apt-get install chromium); never skipped when CI is set",
    ),
]


def _photo(seed: int, size: int = 160) -> Image.Image:
    """A synthetic 'photo' with smooth shading, edges and fine texture, so SR differences show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    hue = rng.uniform(0, 2 * np.pi, 3)
    planes = [
        110 + 70 * np.sin(xx / (19 + 6 * c) + hue[c]) * np.cos(yy / (23 - 4 * c) - hue[c]) for c in range(3)
    ]
    img = Image.fromarray(np.clip(np.dstack(planes), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(5):
        x, y, r = (int(v) for v in rng.integers([10, 10, 8], [size - 10, size - 10, 30]))
        draw.ellipse(
            [x - r, y - r, x + r, y + r], outline=tuple(int(v) for v in rng.integers(0, 255, 3)), width=3
        )
    for i in range(0, size, 6):  # fine stripes: bicubic blurs them, sharpening helps
        draw.line(
            [(i, size - 30), (i + 12, size - 4)], fill=(240, 240, 240) if i % 12 else (30, 30, 30), width=2
        )
    return img


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write(root: Path, key: str, data: bytes) -> None:
    path = root.joinpath(*key.split("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _build_run(root: Path, ds: str, image_ids: list[str], authors: list[str]) -> dict[str, Any]:
    """Write original/bicubic/SR PNGs for ``image_ids`` and return the event that reports them.

    The "SR" is the bicubic upscale sharpened by an unsharp mask: a stand-in with
    real, honestly computed PSNR/SSIM, so no model is needed in this test.
    """
    images, per_image = [], []
    for n, image_id in enumerate(image_ids):
        hr = _photo(seed=int(image_id))
        lr = hr.resize((hr.width // SCALE, hr.height // SCALE), Image.Resampling.BICUBIC, reducing_gap=None)
        bicubic = lr.resize(hr.size, Image.Resampling.BICUBIC)
        sr = bicubic.filter(ImageFilter.UnsharpMask(radius=1.6, percent=90, threshold=1))
        keys = image_keys(ds, image_id)
        keys["comparison"] = None
        for name, img in (("original", hr), ("bicubic", bicubic), ("sr", sr)):
            _write(root, keys[name], _png(img))
        ref = np.asarray(hr)
        psnr_sr, ssim_sr = score(ref, np.asarray(sr), SCALE)
        psnr_bic, ssim_bic = score(ref, np.asarray(bicubic), SCALE)
        metrics = {"psnr": psnr_sr, "ssim": ssim_sr, "psnr_bicubic": psnr_bic, "ssim_bicubic": ssim_bic}
        per_image.append({"image_id": image_id, **metrics})
        images.append({"image_id": image_id, "author": authors[n % len(authors)], **keys})
    mean = {
        k: float(np.mean([m[k] for m in per_image])) for k in ("psnr", "ssim", "psnr_bicubic", "ssim_bicubic")
    }
    return {
        "run_id": f"scheduled__{ds}T00:00:00+00:00",
        "dag_id": "superres_daily",
        "ds": ds,
        "mode": "evaluate",
        "scale": SCALE,
        "state": "success",
        "failed_tasks": [],
        "counts": {"fetched": len(image_ids), "processed": len(image_ids), "quarantined": 0},
        "metrics": {"mean": mean, "images": per_image},
        "images": images,
        "outputs": {"sr": f"{root}/sr/ds={ds}/", "reports": f"{root}/reports/ds={ds}/"},
        "quality": {"success": True, "suites": []},
        "quarantine": [],
        "timings": {"fetch": 2.0, "upscale": 30.0, "evaluate": 4.0},
        "sent_at": f"{ds}T00:20:00+00:00",
    }


def _post(base_url: str, event: dict[str, Any]) -> int:
    body = json.dumps(event).encode()
    headers = {"Content-Type": "application/json", "X-Idempotency-Key": f"{event['run_id']}:{event['ds']}"}
    headers.update(sign(body, SECRET))
    request = urllib.request.Request(base_url + "/api/callbacks", data=body, headers=headers, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
    with opener.open(request, timeout=10) as response:
        return response.status


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    storage = tmp_path / "storage"
    events = [
        _build_run(storage, "2026-01-03", ["31", "32"], ["Paul Jarvis"]),
        {
            "run_id": "scheduled__2026-01-04T00:00:00+00:00",
            "dag_id": "superres_daily",
            "ds": "2026-01-04",
            "mode": "evaluate",
            "scale": SCALE,
            "state": "failed",
            "failed_tasks": ["upscale"],
            "counts": {"fetched": 3, "processed": 0, "quarantined": 1},
            "metrics": None,
            "images": [],
            "quarantine": [{"image_id": "44", "reason": "decode_error", "message": "truncated JPEG"}],
            "sent_at": "2026-01-04T00:20:00+00:00",
        },
        _build_run(storage, "2026-01-05", ["51", "52", "53"], ["Alejandro Escamilla", XSS, "Ryan Moreno"]),
    ]
    app = create_app(
        {
            "DATABASE": str(tmp_path / "notifier.sqlite"),
            "CALLBACK_SECRET": SECRET,
            "STORAGE_URI": str(storage),
            "GALLERY_SIZE": 10,
            "REFRESH_S": 300,  # no reload while the test looks at the page
            "MAX_SKEW_S": 300,
        }
    )
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{httpd.server_port}"
    try:
        for event in events:
            assert _post(base_url, event) == 201
        yield base_url, events
    finally:
        httpd.shutdown()
        thread.join(timeout=10)
        httpd.server_close()


def _rendered(name: str, value: float) -> str:
    return f"{value:.4f}" if name.startswith("ssim") else f"{value:.2f}"


def test_gallery_in_headless_chromium(server: tuple[str, list[dict[str, Any]]]) -> None:
    from playwright.sync_api import sync_playwright

    base_url, events = server
    blocked: list[str] = []
    problems: list[str] = []
    dialogs: list[str] = []

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900}, device_scale_factor=1)

            def only_loopback(route: Any) -> None:
                if route.request.url.startswith(base_url + "/"):
                    route.continue_()
                else:
                    blocked.append(route.request.url)
                    route.abort()

            page.route("**/*", only_loopback)
            page.on(
                "console",
                lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

            response = page.goto(base_url + "/", wait_until="load")
            assert response is not None and response.status == 200

            # Every <img> decoded: naturalWidth > 0 means real pixels arrived.
            imgs = page.eval_on_selector_all(
                "img", "els => els.map(e => ({src: e.currentSrc, complete: e.complete, w: e.naturalWidth}))"
            )
            assert len(imgs) == 5 * 5  # 5 images x (original, bicubic, SR, 2 slider layers)
            assert [i for i in imgs if not (i["complete"] and i["w"] > 0)] == []

            # Numbers on the page equal the posted metrics, rounded as rendered.
            shown = page.eval_on_selector_all(
                "[data-metric][data-image-id]",
                "els => els.map(e => [e.dataset.runId, e.dataset.imageId, e.dataset.metric,"
                " e.textContent.trim()])",
            )
            shown_map = {(r, i, m): text for r, i, m, text in shown if m != "psnr_gain"}
            expected = {
                (event["run_id"], item["image_id"], name): _rendered(name, item[name])
                for event in events
                if event["metrics"]
                for item in event["metrics"]["images"]
                for name in ("psnr", "ssim", "psnr_bicubic", "ssim_bicubic")
            }
            assert shown_map == expected

            # Event text is shown as text, never run.
            authors = page.locator(".image-card .author").all_inner_texts()
            assert XSS in authors
            assert dialogs == []

            # The before/after slider moves the clip edge.
            slider = page.locator("[data-compare]").first
            slider.locator("input[type=range]").fill("20")
            assert slider.evaluate("e => e.style.getPropertyValue('--pos')") == "20%"
            slider.locator("input[type=range]").fill("50")

            # The failed run is listed, and the trend has one point per date with metrics.
            assert page.locator('tr.row--failed [data-state="failed"]').count() == 1
            assert page.locator("svg.trend circle").count() == 2

            assert problems == [], problems
            assert blocked == [], blocked

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "gallery.png"), full_page=True)

            # The run page linked from the newest card renders its images too.
            page.locator(".image-card__run a").first.click()
            page.wait_for_load_state("load")
            assert page.url == base_url + "/runs/scheduled__2026-01-05T00:00:00+00:00"
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
            assert len(widths) == 3 * 5 and min(widths) > 0
            assert page.locator("[data-count=processed]").inner_text() == "3"
            page.screenshot(path=str(ARTIFACTS / "run.png"), full_page=True)
            assert problems == [], problems
            assert blocked == [], blocked
        finally:
            browser.close()
    assert (ARTIFACTS / "gallery.png").stat().st_size > 10_000
