"""benchmarks.dag's fit over repeated DAG runs (each N's fastest run is fitted, memory takes each
N's peak), and benchmarks.spark_stage's fit over its two batch sizes."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.dag import fit, fitted_runs, memory_ratio
from benchmarks.spark_stage import stage_fit, summary

MP = {16: 4.194304, 64: 16.777216}  # LR megapixels of N photos of 512x512


def run(n: int, ds: str, wall: float, ok: bool = True, spark_mb: float = 1000.0) -> dict[str, Any]:
    return {"n": n, "ds": ds, "ok": ok, "wall_s": wall, "megapixels": MP[n],
            "task_s": {"inference": wall / 2}, "stage_compute_s": {},
            "memory": {"spark_peak_mb": spark_mb, "driver_peak_mb": spark_mb / 2,
                       "workers_peak_mb": spark_mb / 2}}


def test_the_fastest_ok_run_of_each_n_is_fitted() -> None:
    runs = [run(16, "d1", 62.0), run(64, "d2", 80.0), run(16, "d3", 48.0), run(64, "d4", 74.0),
            run(64, "d5", 10.0, ok=False)]  # a failed run is never the fastest
    small, large = fitted_runs(runs)
    assert (small["ds"], large["ds"]) == ("d3", "d4")
    f = fit(runs, fast_mp_s=2.0)
    slope = (74.0 - 48.0) / (MP[64] - MP[16])
    assert f["marginal_s_per_mp"] == pytest.approx(slope)
    assert f["fixed_overhead_s"] == pytest.approx(48.0 - slope * MP[16])
    assert f["marginal_cost_ratio"] == pytest.approx(slope * 2.0)
    assert f["fitted_ds"] == ["d3", "d4"]
    assert f["walls_by_n"] == {"16": [62.0, 48.0], "64": [80.0, 74.0, 10.0]}
    assert f["stages"]["inference"]["n16_s"] == 24.0


def test_one_batch_size_cannot_be_fitted() -> None:
    with pytest.raises(ValueError, match=r"two batch sizes, got N = \[16\]"):
        fitted_runs([run(16, "d1", 50.0), run(16, "d2", 51.0)])


def test_memory_ratio_compares_each_n_at_its_highest_peak() -> None:
    runs = [run(16, "d1", 50, spark_mb=1000), run(64, "d2", 70, spark_mb=1200),
            run(16, "d3", 49, spark_mb=1100), run(64, "d4", 71, spark_mb=1150)]
    assert memory_ratio(runs)["ratio"] == pytest.approx(1200 / 1100)


def stage_run(n: int, seconds: float, backend_mp_s: float) -> dict[str, Any]:
    return {"images": n, "megapixels": MP[n], "spark_mp_s": MP[n] / seconds, "spark_mp_s_rounds": [],
            "backend_mp_s": backend_mp_s, "backend_mp_s_rounds": [], "cold_s": 9.0,
            "cpu_s_per_mp": {"jvm": 0.2}}


def test_stage_fit_splits_the_job_fixed_cost_from_the_throughput() -> None:
    small, large = stage_run(16, 5.0, 1.0), stage_run(64, 17.0, 1.2)  # 1 s fixed, 1 MP/s after it
    f = stage_fit(small, large)
    assert f["fixed_s"] == pytest.approx(5.0 - 4.194304 * 12.0 / (MP[64] - MP[16]))
    assert f["marginal_mp_s"] == pytest.approx((MP[64] - MP[16]) / 12.0)
    assert f["marginal_vs_single_process"] == pytest.approx(f["marginal_mp_s"] / 1.2)
    assert summary(large)["ratio"] == pytest.approx(MP[64] / 17.0 / 1.2)
    assert stage_fit(small, stage_run(64, 4.0, 1.2))["marginal_mp_s"] is None  # no positive slope
    with pytest.raises(ValueError, match="two different batch sizes"):
        stage_fit(large, small)
