"""Shared pieces of the benchmarks: generated inputs, timing, the machine's description."""

from __future__ import annotations

import datetime as dt
import io
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from superres.config import PROJECT_ROOT


@dataclass
class Image:
    image_id: str
    rgb: np.ndarray  # uint8 H x W x 3, the LR input

    @property
    def megapixels(self) -> float:
        return self.rgb.shape[0] * self.rgb.shape[1] / 1e6


def make_images(n: int, size: int, kind: str = "photos", seed: int = 0) -> list[Image]:
    """``n`` LR inputs of ``size`` x ``size``: scikit-image's bundled photographs (the ones
    the offline Picsum source serves, cycled, each with its own crop/flip), or uniform noise."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return [Image(f"random-{i}", rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))
                for i in range(n)]
    from PIL import Image as PILImage
    from PIL import ImageOps

    from superres.picsum_server import load_catalogue

    photos = load_catalogue()
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        with PILImage.open(photo.path) as src:
            img = ImageOps.exif_transpose(src).convert("RGB")
        cx, cy = rng.uniform(0.3, 0.7, size=2)
        img = ImageOps.fit(img, (size, size), PILImage.Resampling.LANCZOS, centering=(cx, cy))
        if i // len(photos) % 2:
            img = ImageOps.mirror(img)
        out.append(Image(f"photo{photo.id}-{i}", np.asarray(img, dtype=np.uint8).copy()))
    return out


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def two_point_line(x1: float, y1: float, x2: float, y2: float) -> tuple[float, float]:
    """(intercept, slope) of the line through two points: fixed cost and marginal cost."""
    slope = (y2 - y1) / (x2 - x1)
    return y1 - slope * x1, slope


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> dict[str, Any]:
    """HEAD and whether the tree had local changes (read-only git commands)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    return {"commit": git("rev-parse", "HEAD") or "unknown",
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def machine() -> dict[str, Any]:
    import pyspark
    import torch

    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        mem_gb = None
    return {
        "cpu_model": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "memory_gb": mem_gb,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads_default": torch.get_num_threads(),
        "pyspark": pyspark.__version__,
        "platform": platform.platform(),
        "hostname": platform.node(),
    }


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
