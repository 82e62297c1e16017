"""Data-quality gates: every gate passes on a good day and names the expectation that
catches each deliberate corruption, with sample rows; plus the Spark job end to end."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from superres import images as images_mod
from superres import quality, tiling
from superres.pipeline import layout
from superres.quality import (
    FRAMES,
    PNG_SIGNATURE,
    SAMPLE_ROWS,
    SUITES,
    QualityGateError,
    enforce,
    expected_grid,
    format_failures,
    manifest_records,
    png_facts,
    png_header,
    run_suites,
)

ROOT = Path(__file__).resolve().parent.parent
SCALE, TILE, HALO = 2, 8, 4
# image_id -> LR (height, width); p1 has ragged last row/column tiles, p2 a single tile.
OK_IMAGES = {"p1": (12, 20), "p2": (8, 8)}
QUARANTINED = "q1"

# --------------------------------------------------------------------------- a small, consistent day


def _photo_bytes(image_id: str) -> bytes:
    return f"jpeg bytes of {image_id}".encode()


def make_day() -> dict[str, Any]:
    """Full records for one date (binary columns included), as the pipeline's stages write them."""
    ids = [*OK_IMAGES, QUARANTINED]
    manifest = {
        "ds": "2026-01-05", "requested": len(ids), "quarantined": [],
        "images": [{"image_id": i, "sha256": hashlib.sha256(_photo_bytes(i)).hexdigest(),
                    "bytes": len(_photo_bytes(i)), "width": 40, "height": 24, "format": "JPEG",
                    "mode": "RGB", "key": f"raw/ds=2026-01-05/{i}.jpg"} for i in ids],
    }
    image_rows, tile_rows, sr_rows, output_rows = [], [], [], []
    for image_id, (h, w) in OK_IMAGES.items():
        geo = tiling.Geometry(height=h, width=w, tile=TILE, halo=HALO)
        image_rows.append({
            "image_id": image_id, "status": "ok", "reason": None, "message": None, "source_mode": "RGB",
            "hr_width": w * SCALE, "hr_height": h * SCALE, "lr_width": w, "lr_height": h, "tile": TILE,
            "halo": HALO, "rows": geo.rows, "cols": geo.cols, "tiles": geo.count, "lr_png": b"lr",
        })
        plane = np.linspace(0.1, 0.9, h * w, dtype=np.float32).reshape(h, w)
        for t in tiling.split(plane, image_id, TILE, HALO)[1]:
            rec = t.to_record()
            rec.update(min=float(t.pixels.min()), max=float(t.pixels.max()))
            tile_rows.append(rec)
            core = np.full((t.h * SCALE, t.w * SCALE), 0.5, np.float32)
            sr_rows.append({
                "image_id": image_id, "row": t.row, "col": t.col, "y": t.y, "x": t.x, "h": t.h, "w": t.w,
                "scale": SCALE, "sr_h": t.h * SCALE, "sr_w": t.w * SCALE,
                "pixels": tiling.encode_sr_pixels(core), "min": 0.5, "max": 0.5, "nonfinite": 0,
            })
        output_rows.append(output_row(image_id, h * SCALE, w * SCALE))
    image_rows.append({
        "image_id": QUARANTINED, "status": "quarantined", "reason": "too_small", "message": "1x1",
        **dict.fromkeys(("source_mode", "hr_width", "hr_height", "lr_width", "lr_height", "rows", "cols",
                         "tiles", "lr_png")), "tile": TILE, "halo": HALO,
    })
    return {"manifest": manifest, "images": image_rows, "tiles": tile_rows, "sr_tiles": sr_rows,
            "outputs": output_rows}


def output_row(image_id: str, height: int, width: int, png: bytes | None = None) -> dict[str, Any]:
    png = images_mod.encode_png(np.zeros((height, width), np.uint8)) if png is None else png
    return {"image_id": image_id, "png": png, "width": width, "height": height, "bytes": len(png),
            "sha256": hashlib.sha256(png).hexdigest()}


def frames_of(day: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """The metadata frames run_suites takes (the Spark job builds the same from Parquet)."""
    return {
        "manifest": manifest_records(day["manifest"]),
        "images": pd.DataFrame(day["images"]).drop(columns=["lr_png"]),
        "tiles": pd.DataFrame(day["tiles"]).drop(columns=["pixels"]),
        "sr_tiles": pd.DataFrame(day["sr_tiles"]).drop(columns=["pixels"]),
        "outputs": png_facts(pd.DataFrame(day["outputs"])),
    }


@pytest.fixture(scope="module")
def good_result() -> dict[str, Any]:
    return run_suites(frames_of(make_day()), SCALE)


def suite(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in result["suites"] if s["name"] == name)


def failed_rules(result: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(suite, expectation type, column or 'a,b') of every failed expectation."""
    out = set()
    for s in result["suites"]:
        for f in s["failed"]:
            out.add((s["name"], f["expectation"], f.get("column") or ",".join(f.get("columns", []))))
    return out


# --------------------------------------------------------------------------- the good day


def test_every_gate_passes_on_a_good_day(good_result: dict[str, Any]) -> None:
    assert good_result["success"] is True, format_failures(good_result)
    assert [s["name"] for s in good_result["suites"]] == list(SUITES)
    for s in good_result["suites"]:
        assert s["success"] is True and s["failed"] == []
        assert s["statistics"]["unsuccessful_expectations"] == 0
        assert s["statistics"]["evaluated_expectations"] >= 5
    assert good_result["inputs"] == {"manifest": 3, "images": 3, "tiles": 7, "sr_tiles": 7, "outputs": 2}
    assert suite(good_result, "tiles")["rows"] == 7  # 2x3 grid of p1 + 1 of p2
    assert enforce(good_result) is good_result


def test_quality_json_shape(good_result: dict[str, Any]) -> None:
    day = make_day()
    day["sr_tiles"][0]["nonfinite"] = 3
    result = run_suites(frames_of(day), SCALE)
    for r in (good_result, result):
        assert set(r) == {"success", "scale", "inputs", "suites"}
        assert r["scale"] == SCALE and set(r["inputs"]) == set(FRAMES)
        json.dumps(r, allow_nan=False)  # strict JSON: no NaN/Infinity, no numpy types
        for s in r["suites"]:
            assert set(s) == {"name", "success", "rows", "statistics", "failed"}
            assert set(s["statistics"]) >= {"evaluated_expectations", "successful_expectations",
                                            "unsuccessful_expectations", "success_percent"}
    assert result["success"] is False
    assert [s["name"] for s in result["suites"] if not s["success"]] == ["sr_tiles"]
    (entry,) = suite(result, "sr_tiles")["failed"]
    assert entry["expectation"] == "expect_column_values_to_be_between"
    assert entry["column"] == "nonfinite"
    assert entry["kwargs"] == {"column": "nonfinite", "min_value": 0, "max_value": 0}
    assert entry["unexpected_count"] == 1 and entry["element_count"] == 7
    assert entry["description"] == "no NaN or Inf in SR pixels"
    (row,) = entry["sample_rows"]
    assert row["image_id"] == "p1" and (row["row"], row["col"]) == (0, 0) and row["nonfinite"] == 3
    assert "pixels" not in row and "png" not in row


# --------------------------------------------------------------------------- each corruption is caught

Mutation = Callable[[dict[str, Any]], None]


def _drop(records: list[dict], **match: Any) -> None:
    hit = [r for r in records if all(r.get(k) == v for k, v in match.items())]
    assert hit, match
    for r in hit:
        records.remove(r)


def _set(records: list[dict], match: dict[str, Any], **values: Any) -> None:
    hit = [r for r in records if all(r.get(k) == v for k, v in match.items())]
    assert hit, match
    for r in hit:
        r.update(values)


def _missing_tile(d: dict) -> None:  # split lost a tile, so inference never saw it either
    _drop(d["tiles"], image_id="p1", row=1, col=2)
    _drop(d["sr_tiles"], image_id="p1", row=1, col=2)


def _wrong_output_size(d: dict) -> None:  # a real PNG, consistently recorded, of the wrong size
    d["outputs"][0] = output_row("p1", 24, 38)


def _bad_png(d: dict) -> None:
    png = b"GIF89a" + d["outputs"][1]["png"][6:]
    d["outputs"][1] = output_row("p2", 16, 16, png=png)


CORRUPTIONS: dict[str, tuple[Mutation, tuple[str, str, str], dict[str, Any]]] = {
    "missing tile": (_missing_tile, ("tiles", "expect_column_values_to_be_in_set", "present"),
                     {"image_id": "p1", "row": 1, "col": 2, "present": False, "expected": True}),
    "NaN in an LR tile": (lambda d: _set(d["tiles"], {"image_id": "p2"}, min=float("nan")),
                          ("tiles", "expect_column_values_to_be_in_set", "finite"),
                          {"image_id": "p2", "finite": False, "min": None}),
    "LR pixel out of [0, 1]": (lambda d: _set(d["tiles"], {"image_id": "p2"}, max=1.5),
                               ("tiles", "expect_column_values_to_be_between", "max"),
                               {"image_id": "p2", "max": 1.5}),
    "tile outside the grid": (lambda d: d["tiles"].append({**d["tiles"][-1], "row": 1}),
                              ("tiles", "expect_column_values_to_be_in_set", "expected"),
                              {"image_id": "p2", "row": 1, "expected": False, "present": True}),
    "duplicate tile": (lambda d: d["tiles"].append(dict(d["tiles"][-1])),
                       ("tiles", "expect_compound_columns_to_be_unique", "image_id,row,col"),
                       {"image_id": "p2", "row": 0, "col": 0}),
    "NaN in an SR tile": (lambda d: _set(d["sr_tiles"], {"image_id": "p2"}, nonfinite=64),
                          ("sr_tiles", "expect_column_values_to_be_between", "nonfinite"),
                          {"image_id": "p2", "nonfinite": 64}),
    "wrong SR size": (lambda d: _set(d["sr_tiles"], {"image_id": "p1", "row": 1, "col": 2}, sr_h=9),
                      ("sr_tiles", "expect_column_pair_values_to_be_equal", "sr_h,expected_sr_h"),
                      {"image_id": "p1", "row": 1, "col": 2, "h": 4, "sr_h": 9, "expected_sr_h": 8}),
    "missing SR tile": (lambda d: _drop(d["sr_tiles"], image_id="p1", row=0, col=1),
                        ("sr_tiles", "expect_column_values_to_be_in_set", "has_sr"),
                        {"image_id": "p1", "row": 0, "col": 1, "has_sr": False, "sr_count": 5}),
    "SR at the wrong scale": (lambda d: _set(d["sr_tiles"], {"image_id": "p2"}, scale=3, sr_h=24, sr_w=24),
                              ("sr_tiles", "expect_column_values_to_be_in_set", "scale"),
                              {"image_id": "p2", "scale": 3}),
    "missing output": (lambda d: _drop(d["outputs"], image_id="p2"),
                       ("outputs", "expect_column_values_to_be_between", "output_count"),
                       {"image_id": "p2", "output_count": 0, "has_output": False}),
    "duplicate output": (lambda d: d["outputs"].append(dict(d["outputs"][1])),
                         ("outputs", "expect_column_values_to_be_between", "output_count"),
                         {"image_id": "p2", "output_count": 2}),
    "output for a quarantined photo": (lambda d: d["outputs"].append(output_row(QUARANTINED, 2, 2)),
                                       ("outputs", "expect_column_values_to_be_in_set", "has_input"),
                                       {"image_id": QUARANTINED, "has_input": False}),
    "output of the wrong dimensions": (_wrong_output_size,
                                       ("outputs", "expect_column_pair_values_to_be_equal",
                                        "width,expected_width"),
                                       {"image_id": "p1", "width": 38, "expected_width": 40}),
    "output that is not a PNG": (_bad_png, ("outputs", "expect_column_values_to_be_in_set", "png_signature"),
                                 {"image_id": "p2", "png_signature": False}),
    "output size not the PNG's": (lambda d: _set(d["outputs"], {"image_id": "p2"}, width=18),
                                  ("outputs", "expect_column_values_to_be_in_set", "png_size_matches"),
                                  {"image_id": "p2", "width": 18, "png_width": 16}),
    "output checksum wrong": (lambda d: _set(d["outputs"], {"image_id": "p2"}, sha256="0" * 64),
                              ("outputs", "expect_column_values_to_be_in_set", "sha256_matches"),
                              {"image_id": "p2", "sha256_matches": False}),
    "manifest bad checksum": (lambda d: _set(d["manifest"]["images"], {"image_id": "p2"}, sha256="abc123"),
                              ("raw_manifest", "expect_column_values_to_match_regex", "sha256"),
                              {"image_id": "p2", "sha256": "abc123"}),
    "manifest zero size": (lambda d: _set(d["manifest"]["images"], {"image_id": "p1"}, bytes=0),
                           ("raw_manifest", "expect_column_values_to_be_between", "bytes"),
                           {"image_id": "p1", "bytes": 0}),
    "manifest undecodable format": (lambda d: _set(d["manifest"]["images"], {"image_id": "p1"}, format="PSD"),
                                    ("raw_manifest", "expect_column_values_to_be_in_set", "format"),
                                    {"image_id": "p1", "format": "PSD"}),
    "manifest without an id": (lambda d: _set(d["manifest"]["images"], {"image_id": QUARANTINED},
                                              image_id=None),
                               ("raw_manifest", "expect_column_values_to_not_be_null", "image_id"),
                               {"image_id": None}),
    "photo the split never saw": (lambda d: _drop(d["images"], image_id=QUARANTINED),
                                  ("raw_manifest", "expect_column_values_to_be_in_set", "split_accounted"),
                                  {"image_id": QUARANTINED, "split_accounted": False}),
    "geometry that does not imply the grid": (
        lambda d: _set(d["images"], {"image_id": "p1"}, rows=3, tiles=9),
        ("images", "expect_column_values_to_be_in_set", "geometry_matches"),
        {"image_id": "p1", "rows": 3, "expected_rows": 2}),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_fails_its_gate_with_sample_rows(name: str) -> None:
    mutate, rule, expected_row = CORRUPTIONS[name]
    day = make_day()
    mutate(day)
    result = run_suites(frames_of(day), SCALE)

    assert result["success"] is False
    assert rule in failed_rules(result), failed_rules(result)
    entry = next(f for f in suite(result, rule[0])["failed"]
                 if f["expectation"] == rule[1] and (f.get("column") or ",".join(f["columns"])) == rule[2])
    assert entry["unexpected_count"] >= 1 and 1 <= len(entry["sample_rows"]) <= SAMPLE_ROWS
    assert any(expected_row.items() <= row.items() for row in entry["sample_rows"]), entry["sample_rows"]
    json.dumps(result, allow_nan=False)

    with pytest.raises(QualityGateError) as err:
        enforce(result)
    message = str(err.value)
    assert f"- {rule[0]}: {rule[1]}(" in message  # names the suite and the expectation
    assert json.dumps(entry["sample_rows"][0], default=str) in message  # shows a row
    assert err.value.result is result


def test_a_missing_tile_also_breaks_the_per_image_count() -> None:
    day = make_day()
    _missing_tile(day)
    result = run_suites(frames_of(day), SCALE)
    entry = next(f for f in suite(result, "tiles")["failed"] if f.get("column") == "count_matches")
    assert {"image_id": "p1", "tile_count": 5, "expected_tiles": 6}.items() <= entry["sample_rows"][0].items()
    # The SR side is consistent with the (short) tile set, so only the tiles gate fails.
    assert [s["name"] for s in result["suites"] if not s["success"]] == ["tiles"]


def test_sample_rows_are_capped_and_counts_are_complete() -> None:
    day = make_day()
    _set(day["tiles"], {}, min=-0.25)
    entry = next(f for f in suite(run_suites(frames_of(day), SCALE), "tiles")["failed"]
                 if f.get("column") == "min")
    assert entry["unexpected_count"] == 7 and len(entry["sample_rows"]) == SAMPLE_ROWS


def test_a_day_with_every_photo_quarantined_passes_with_empty_datasets() -> None:
    day = make_day()
    for row in day["images"]:
        row.update(status="quarantined", reason="too_small", lr_width=None, lr_height=None, rows=None,
                   cols=None, tiles=None)
    frames = frames_of(day)
    frames.update({name: frames[name].iloc[0:0] for name in ("tiles", "sr_tiles", "outputs")})
    result = run_suites(frames, SCALE)
    assert result["success"] is True, format_failures(result)
    assert result["inputs"]["tiles"] == 0


def test_a_failure_message_lists_each_failed_suite_and_expectation() -> None:
    day = make_day()
    _missing_tile(day)
    _drop(day["outputs"], image_id="p2")
    _set(day["manifest"]["images"], {"image_id": "p1"}, bytes=0)
    with pytest.raises(QualityGateError) as err:
        enforce(run_suites(frames_of(day), SCALE))
    lines = str(err.value).splitlines()
    assert lines[0] == "data-quality gate failed: 3 of 5 suites (raw_manifest, tiles, outputs)"
    text = str(err.value)
    for fragment in ("- raw_manifest: expect_column_values_to_be_between(column=bytes, min_value=0",
                     "- tiles: expect_column_values_to_be_in_set(column=present, value_set=[True])",
                     "- outputs: expect_column_values_to_be_between(column=output_count",
                     '"image_id": "p2"', '"output_count": 0', '"row": 1', '"col": 2'):
        assert fragment in text


def test_run_suites_refuses_incomplete_inputs() -> None:
    frames = frames_of(make_day())
    with pytest.raises(ValueError, match="missing \\['outputs'\\]"):
        run_suites({k: v for k, v in frames.items() if k != "outputs"}, SCALE)
    frames["tiles"] = frames["tiles"].drop(columns=["max"])
    with pytest.raises(ValueError, match="tiles frame lacks columns \\['max'\\]"):
        run_suites(frames, SCALE)


def test_error_results_still_format() -> None:
    with pytest.raises(QualityGateError, match="could not run: ObjectNotFound: no manifest"):
        enforce({"success": False, "error": "ObjectNotFound: no manifest", "suites": []})


# --------------------------------------------------------------------------- helpers agree with the pipeline


def test_expected_grid_is_the_grid_tiling_cuts() -> None:
    day = make_day()
    grid = expected_grid(pd.DataFrame(day["images"]))
    got = sorted((t["image_id"], t["row"], t["col"], t["h"], t["w"]) for t in day["tiles"])
    want = sorted((r.image_id, int(r.row), int(r.col), int(r.expected_h), int(r.expected_w))
                  for r in grid.itertuples())
    assert want == got


def test_decodable_formats_match_the_decoder() -> None:
    assert set(quality.DECODABLE_FORMATS) == images_mod.ALLOWED_FORMATS


def test_png_header() -> None:
    png = images_mod.encode_png(np.zeros((3, 5), np.uint8))
    assert png_header(png) == {"png_signature": True, "png_length": len(png),
                               "png_sha256": hashlib.sha256(png).hexdigest(), "png_width": 5, "png_height": 3}
    assert png_header(b"\x89PNG")["png_signature"] is False and png_header(b"\x89PNG")["png_width"] is None
    assert png_header(None)["png_signature"] is False
    assert png.startswith(PNG_SIGNATURE)


def test_jsonable() -> None:
    assert quality.jsonable({"a": np.int32(3), "b": np.float32(0.5), "c": float("nan"), "d": pd.NA,
                             "e": float("-inf"), "f": np.bool_(True), "g": [np.int64(1)]}) == \
        {"a": 3, "b": 0.5, "c": None, "d": None, "e": "-inf", "f": True, "g": [1]}


def test_importing_the_module_loads_neither_gx_nor_pandas() -> None:
    code = ("import sys, superres.quality; "
            "bad = [m for m in ('great_expectations', 'pandas', 'numpy') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --------------------------------------------------------------------------- the Spark job


def _load_job() -> Any:
    spec = importlib.util.spec_from_file_location("spark_job_quality", ROOT / "spark_jobs" / "quality.py")
    assert spec and spec.loader
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


def test_job_without_a_manifest_still_writes_quality_json(tmp_path: Path) -> None:
    """The manifest is read before Spark starts, so this needs no JVM."""
    from superres.storage import LocalStorage, ObjectNotFound

    storage, ds = LocalStorage(tmp_path / "store"), "2026-01-07"
    with pytest.raises(ObjectNotFound):
        _load_job().main(["--ds", ds, "--storage-uri", str(storage.root), "--staging-uri",
                          str(tmp_path / "staging"), "--scale", "3"])
    report = storage.read_json(layout.report_key(ds, "quality.json"))
    assert report["success"] is False and report["ds"] == ds and report["scale"] == 3
    assert report["error"].startswith("ObjectNotFound: ") and report["suites"] == []
    assert "could not run: ObjectNotFound" in format_failures(report)
    assert not storage.exists(layout.report_key(ds, "stages/quality.json"))


def _write_day(storage: Any, staging: Path, ds: str, day: dict[str, Any],
               skip: tuple[str, ...] = ()) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from superres.pipeline.inference import SR_TILE_SCHEMA
    from superres.pipeline.split import IMAGE_SCHEMA, TILE_SCHEMA

    output_schema = pa.schema([("image_id", pa.string()), ("png", pa.binary()), ("width", pa.int32()),
                               ("height", pa.int32()), ("bytes", pa.int64()), ("sha256", pa.string())])
    storage.write_json(layout.manifest_key(ds), day["manifest"])
    for name, schema in (("images", IMAGE_SCHEMA), ("tiles", TILE_SCHEMA), ("sr_tiles", SR_TILE_SCHEMA),
                         ("outputs", output_schema)):
        if name in skip:
            continue
        part = Path(layout.staging_path(str(staging), name, ds))
        part.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(day[name], schema=schema), part / "part-00000.parquet")


def _local_spark() -> None:
    """One core for the job: session() reuses this session instead of starting local[*]."""
    from pyspark.sql import SparkSession

    SparkSession.builder.master("local[1]").appName("test-quality") \
        .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "1").getOrCreate()


@pytest.mark.spark
def test_spark_quality_job_writes_the_report_and_fails_the_task(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from pyspark.sql import SparkSession

    from superres.storage import LocalStorage

    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    job = _load_job()
    storage, staging = LocalStorage(tmp_path / "store"), tmp_path / "staging"

    def run(ds: str) -> int:
        _local_spark()
        try:
            return job.main(["--ds", ds, "--storage-uri", str(storage.root), "--staging-uri", str(staging),
                             "--scale", str(SCALE)])
        finally:
            assert SparkSession.getActiveSession() is None  # the job stopped its session
            active = SparkSession._instantiatedSession
            if active is not None:  # pragma: no cover - only if the job leaked it
                active.stop()

    # 0. The Spark SQL PNG facts the job computes equal the pure-Python ones.
    _local_spark()
    png = make_day()["outputs"][1]["png"]
    bodies = [png, png[:20], b"GIF89a" + png[6:], b"", None]
    spark = SparkSession.getActiveSession()
    sql = [f"{expr} AS {name}" for name, expr in quality.png_sql().items()]
    got = [r.asDict() for r in spark.createDataFrame([(b,) for b in bodies], "png binary").selectExpr(*sql)
           .collect()]
    assert got == [png_header(b) for b in bodies]

    # 1. A good day passes; quality.json and the stage summary are written.
    good = "2026-01-05"
    _write_day(storage, staging, good, make_day())
    assert run(good) == 0
    report = storage.read_json(layout.report_key(good, "quality.json"))
    assert report["success"] is True and report["ds"] == good and report["missing_datasets"] == []
    assert [s["name"] for s in report["suites"]] == list(SUITES)
    assert report["inputs"] == {"manifest": 3, "images": 3, "tiles": 7, "sr_tiles": 7, "outputs": 2}
    summary = storage.read_json(layout.report_key(good, "stages/quality.json"))
    assert summary["stage"] == "quality" and summary["success"] is True
    assert summary["suites"] == dict.fromkeys(SUITES, True)

    # 2. A bad day: an SR tile with NaNs, a corrupt PNG, and no tiles dataset at all.
    bad = "2026-01-06"
    day = make_day()
    _set(day["sr_tiles"], {"image_id": "p2"}, nonfinite=5)
    day["outputs"][0]["png"] = b"\x00" * 8 + day["outputs"][0]["png"][8:]
    _write_day(storage, staging, bad, day, skip=("tiles",))
    with pytest.raises(QualityGateError) as err:
        run(bad)
    report = storage.read_json(layout.report_key(bad, "quality.json"))
    assert report["success"] is False and report["missing_datasets"] == ["tiles"]
    assert {("tiles", "expect_column_values_to_be_in_set", "present"),
            ("sr_tiles", "expect_column_values_to_be_between", "nonfinite"),
            ("outputs", "expect_column_values_to_be_in_set", "png_signature"),
            ("outputs", "expect_column_values_to_be_in_set", "sha256_matches")} <= failed_rules(report)
    png_entry = next(f for f in suite(report, "outputs")["failed"] if f.get("column") == "png_signature")
    (row,) = png_entry["sample_rows"]
    assert row["image_id"] == "p1" and row["png_signature"] is False and row["png_width"] == 40
    rows = [r for s in report["suites"] for f in s["failed"] for r in f["sample_rows"]]
    assert rows and not any({"png", "pixels", "lr_png"} & set(r) for r in rows)
    assert "- outputs: expect_column_values_to_be_in_set(column=png_signature" in str(err.value)
    assert not storage.exists(layout.report_key(bad, "stages/quality.json"))

