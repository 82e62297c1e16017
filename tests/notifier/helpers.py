"""Builders for notifier tests: events as the Airflow callback sends them, signed posts, PNGs."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from flask.testing import FlaskClient
from PIL import Image
from werkzeug.test import TestResponse

from superres.signing import sign

# A distinctive value, so "the secret never appears" checks cannot pass by accident.
SECRET = "tEsT-s3cret-9f1c7a52-NEVER-SHOW"
RUN_ID = "scheduled__2026-01-05T00:00:00+00:00"
XSS = "<script>alert(1)</script>"
AUTO = "<derived from the event>"


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    """A small, non-uniform RGB PNG (so a broken decode would be visible)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], axis=-1)
    noise = rng.integers(0, 40, size=(height, width, 3))
    img = np.clip(base + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def image_keys(ds: str, image_id: str) -> dict[str, str]:
    return {
        "original": f"raw/ds={ds}/{image_id}.png",
        "bicubic": f"bicubic/ds={ds}/{image_id}.png",
        "sr": f"sr/ds={ds}/{image_id}.png",
        "comparison": f"reports/ds={ds}/{image_id}_comparison.png",
    }


def write_images(root: Path, ds: str, image_ids: list[str], size: int = 48) -> None:
    """Write every key of :func:`image_keys` as a real PNG under a local storage dir."""
    for n, image_id in enumerate(image_ids):
        for i, key in enumerate(image_keys(ds, image_id).values()):
            path = root.joinpath(*key.split("/"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png_bytes(size * (2 if i == 3 else 1), size, seed=n * 10 + i))


def make_event(
    ds: str = "2026-01-05",
    run_id: str = RUN_ID,
    image_ids: tuple[str, ...] = ("101", "102"),
    authors: tuple[str, ...] = ("Alejandro Escamilla", XSS),
    state: str = "success",
    gain: float = 1.5,
) -> dict[str, Any]:
    """A complete evaluate-mode event in the schema the callback task sends."""
    per_image = []
    for n, image_id in enumerate(image_ids):
        bic_psnr = 28.123456 + n * 1.7
        per_image.append(
            {
                "image_id": image_id,
                "psnr": bic_psnr + gain + n * 0.111,
                "ssim": 0.876543 + n * 0.01,
                "psnr_bicubic": bic_psnr,
                "ssim_bicubic": 0.842109 + n * 0.01,
            }
        )
    mean = {
        k: sum(m[k] for m in per_image) / len(per_image)
        for k in ("psnr", "ssim", "psnr_bicubic", "ssim_bicubic")
    }
    return {
        "run_id": run_id,
        "dag_id": "superres_daily",
        "ds": ds,
        "mode": "evaluate",
        "scale": 2,
        "state": state,
        "failed_tasks": [] if state == "success" else ["upscale"],
        "counts": {"fetched": len(image_ids) + 1, "processed": len(image_ids), "quarantined": 1},
        "metrics": {"mean": mean, "images": per_image},
        "images": [
            {"image_id": image_id, "author": authors[n % len(authors)], **image_keys(ds, image_id)}
            for n, image_id in enumerate(image_ids)
        ],
        "outputs": {"sr": f"/data/sr/ds={ds}/", "reports": f"/data/reports/ds={ds}/"},
        "quality": {
            "success": True,
            "suites": [
                {
                    "name": "tiles",
                    "success": True,
                    "statistics": {"evaluated_expectations": 2, "successful_expectations": 2},
                    "results": [
                        {
                            "success": True,
                            "expectation_config": {
                                "type": "expect_column_values_to_not_be_null",
                                "kwargs": {"column": "image_id"},
                            },
                        },
                        {
                            "success": True,
                            "expectation_config": {
                                "type": "expect_column_values_to_be_between",
                                "kwargs": {"column": "tile_y"},
                            },
                        },
                    ],
                }
            ],
        },
        "quarantine": [
            {"image_id": "999", "reason": "decode_error", "message": "cannot identify image <b>x</b>"}
        ],
        "timings": {"fetch": 3.25, "upscale": 41.5, "evaluate": 7.0},
        "sent_at": "2026-01-05T00:10:00+00:00",
    }


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, sort_keys=True).encode("utf-8")


def post_event(
    client: FlaskClient,
    event: dict[str, Any] | None = None,
    *,
    body: bytes | None = None,
    key: str | None = AUTO,
    secret: str = SECRET,
    timestamp: int | None = None,
    headers: dict[str, str] | None = None,
    signed: bool = True,
) -> TestResponse:
    """POST a (by default correctly) signed callback; the key defaults to "<run_id>:<ds>"."""
    event = make_event() if event is None else event
    body = encode(event) if body is None else body
    if key is AUTO:
        key = key_for(event)
    sent = {"Content-Type": "application/json"}
    if signed:
        sent.update(sign(body, secret, timestamp))
    if key is not None:
        sent["X-Idempotency-Key"] = key
    sent.update(headers or {})
    return client.post("/api/callbacks", data=body, headers=sent)


def key_for(event: dict[str, Any]) -> str:
    return f"{event['run_id']}:{event['ds']}"


def variant(event: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(event)
    out.update(changes)
    return out
