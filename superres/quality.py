"""Data-quality gates (Great Expectations 1.x): the *audit* of write-audit-publish.

Spark writes the date's staging Parquet, these gates audit it together with the
fetch manifest, and the evaluate job publishes only when every gate passes.

Each gate is a pair of pure functions: ``<gate>_frame(...)`` derives the one
small metadata DataFrame the gate validates (joins, per-image counts and boolean
columns are computed beforehand, so every rule is a plain expectation on a named
column), and ``<gate>_suite(...)`` builds its ``ExpectationSuite``.  The suites
live in code, versioned with the project, and run in an ephemeral GX context:
there is no GX project directory to drift from the code.

Missing rows are made visible by outer joins with what *must* exist (the tile
grid implied by each image's geometry, the input tiles, the ok images), with
``present``/``has_*`` flags; a rule that only applies to rows that exist is a
nullable boolean that is NA elsewhere (GX skips missing values), so a missing row
is reported as missing, not again as a row of nulls.

GX and pandas are imported inside functions only: the Airflow DAG may import
this module at parse time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations import ExpectationSuite
    from great_expectations.core import ExpectationSuiteValidationResult
    from great_expectations.core.expectation_validation_result import ExpectationValidationResult

# The formats superres.images.decode accepts (its ALLOWED_FORMATS; kept here to avoid importing PIL).
DECODABLE_FORMATS = ("BMP", "GIF", "JPEG", "PNG", "PPM", "TIFF", "WEBP")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHA256_REGEX = r"^[0-9a-f]{64}$"  # hashlib's hexdigest: lower-case only
STATUSES = ("ok", "quarantined")
SAMPLE_ROWS = 5
KEY = ("image_id", "row", "col")

# The input frames run_suites needs and the metadata columns of each (never pixels or PNG bytes).
FRAMES = ("manifest", "images", "tiles", "sr_tiles", "outputs")
MANIFEST_COLUMNS = ("image_id", "sha256", "bytes", "width", "height", "format", "key")
IMAGE_COLUMNS = ("image_id", "status", "lr_width", "lr_height", "tile", "rows", "cols", "tiles")
TILE_COLUMNS = ("image_id", "row", "col", "h", "w", "min", "max")
SR_TILE_COLUMNS = ("image_id", "row", "col", "h", "w", "scale", "sr_h", "sr_w", "nonfinite")
OUTPUT_COLUMNS = ("image_id", "width", "height", "bytes", "sha256")
PNG_FACT_COLUMNS = ("png_signature", "png_length", "png_sha256", "png_width", "png_height")

_RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_ROWS}
_BINARY_COLUMNS = ("pixels", "png", "lr_png", "data")


class QualityGateError(RuntimeError):
    """A gate failed; the message names each failed expectation and shows sample rows."""

    def __init__(self, message: str, result: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.result = result


# --------------------------------------------------------------------------- small pandas helpers


def _require(df: pd.DataFrame, columns: Iterable[str], name: str) -> pd.DataFrame:
    """The named columns of an input frame (a copy), or a ValueError naming what is missing."""
    columns = list(columns)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"the {name} frame lacks columns {missing} (it has {list(df.columns)})")
    return df.loc[:, columns].copy()


def _ints(df: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """Nullable Int64 columns, so joins that leave gaps keep integers (and NA) instead of floats."""
    import pandas as pd

    for c in columns:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    return df


def _only_where(values: pd.Series, applies: pd.Series) -> pd.Series:
    """A nullable boolean that is NA where the rule does not apply (GX then skips the row)."""
    import pandas as pd

    return values.fillna(False).astype("boolean").where(applies.fillna(False).astype(bool), pd.NA)


def _counts(df: pd.DataFrame, by: str = "image_id") -> pd.Series:
    return df.groupby(by, dropna=False).size()


def _merge_flags(merged: pd.DataFrame, left: str, right: str) -> pd.DataFrame:
    """Turn an outer merge's indicator into two booleans: which side(s) a row came from."""
    merged[left] = merged["_merge"] != "right_only"
    merged[right] = merged["_merge"] != "left_only"
    return merged.drop(columns="_merge")


def _sorted(df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Stable row order (and a 0..n-1 index), so sample rows are the same on every rerun."""
    return df.sort_values(list(by), kind="stable", na_position="first").reset_index(drop=True)


# --------------------------------------------------------------------------- input preparation


def manifest_records(manifest: Mapping[str, Any]) -> pd.DataFrame:
    """The fetch manifest's ``images[]`` as rows (``quarantined[]`` photos were never stored)."""
    import pandas as pd

    df = pd.DataFrame.from_records(list(manifest.get("images") or []))
    return df.reindex(columns=list(dict.fromkeys([*MANIFEST_COLUMNS, *df.columns])))


def png_header(data: bytes | None) -> dict[str, Any]:
    """Signature, length, sha256 and IHDR size of one PNG body, exactly as :func:`png_sql` computes them."""
    if data is None:
        return {"png_signature": False, "png_length": None, "png_sha256": None,
                "png_width": None, "png_height": None}
    data = bytes(data)
    ihdr = len(data) >= 24 and data[12:16] == b"IHDR"
    return {
        "png_signature": data[:8] == PNG_SIGNATURE,
        "png_length": len(data),
        "png_sha256": hashlib.sha256(data).hexdigest(),
        "png_width": int.from_bytes(data[16:20], "big") if ihdr else None,
        "png_height": int.from_bytes(data[20:24], "big") if ihdr else None,
    }


def png_facts(outputs: pd.DataFrame, column: str = "png") -> pd.DataFrame:
    """An outputs frame holding PNG bytes -> its metadata columns plus :data:`PNG_FACT_COLUMNS`."""
    import pandas as pd

    facts = pd.DataFrame([png_header(b) for b in outputs[column]], index=outputs.index,
                         columns=list(PNG_FACT_COLUMNS))
    return pd.concat([outputs.drop(columns=[column]), facts], axis=1)


def png_sql(column: str = "png") -> dict[str, str]:
    """Spark SQL for :data:`PNG_FACT_COLUMNS` on a binary column: the PNG bytes never leave the executors."""
    ihdr = f"length({column}) >= 24 AND substring({column}, 13, 4) = X'{b'IHDR'.hex().upper()}'"

    def be32(pos: int) -> str:
        return f"CASE WHEN {ihdr} THEN CAST(conv(hex(substring({column}, {pos}, 4)), 16, 10) AS BIGINT) END"

    return {
        "png_signature": f"coalesce(substring({column}, 1, 8) = X'{PNG_SIGNATURE.hex().upper()}', false)",
        "png_length": f"CAST(length({column}) AS BIGINT)",
        "png_sha256": f"sha2({column}, 256)",
        "png_width": be32(17),
        "png_height": be32(21),
    }


# --------------------------------------------------------------------------- frames the gates validate


def raw_manifest_frame(manifest: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """One row per stored photo, plus whether the split stage accounted for it."""
    df = _require(manifest, MANIFEST_COLUMNS, "manifest")
    split = _require(images, ("image_id", "status"), "images").drop_duplicates("image_id")
    df["split_status"] = df["image_id"].map(split.set_index("image_id")["status"])
    df["split_accounted"] = df["image_id"].isin(split["image_id"].dropna())
    return _sorted(df, ["image_id"])


def _valid_geometry(df: pd.DataFrame) -> pd.Series:
    valid = (df["status"] == "ok") & (df["lr_width"] >= 1) & (df["lr_height"] >= 1) & (df["tile"] >= 1)
    return valid.fillna(False).astype(bool)


def images_frame(images: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per split image: is it a known photo, and do rows/cols/tiles follow from its LR size?"""
    df = _ints(_require(images, IMAGE_COLUMNS, "images"),
               ("lr_width", "lr_height", "tile", "rows", "cols", "tiles"))
    valid = _valid_geometry(df)
    tile = df["tile"].where(valid)
    df["expected_rows"] = -(-df["lr_height"].where(valid) // tile)  # ceil, as tiling.Geometry.rows
    df["expected_cols"] = -(-df["lr_width"].where(valid) // tile)
    matches = valid & (df["rows"] == df["expected_rows"]) & (df["cols"] == df["expected_cols"]) \
        & (df["tiles"] == df["rows"] * df["cols"])
    df["geometry_matches"] = _only_where(matches, df["status"] == "ok")
    known = _require(manifest, ("image_id",), "manifest")["image_id"].dropna()
    df["in_manifest"] = df["image_id"].isin(known)
    return _sorted(df, ["image_id"])


def expected_grid(images: pd.DataFrame) -> pd.DataFrame:
    """Every tile key an ok image must have, with its core size, as :func:`superres.tiling.split` cuts it."""
    import numpy as np
    import pandas as pd

    from superres.tiling import Geometry

    df = _ints(_require(images, ("image_id", "status", "lr_width", "lr_height", "tile"), "images"),
               ("lr_width", "lr_height", "tile"))
    parts = []
    for image_id, h, w, t in df.loc[_valid_geometry(df), ["image_id", "lr_height", "lr_width", "tile"]] \
            .itertuples(index=False):
        geo = Geometry(height=int(h), width=int(w), tile=int(t), halo=0)
        row = np.repeat(np.arange(geo.rows), geo.cols)
        col = np.tile(np.arange(geo.cols), geo.rows)
        parts.append(pd.DataFrame({
            "image_id": image_id, "row": row, "col": col,
            "expected_h": np.minimum(geo.tile, geo.height - row * geo.tile),
            "expected_w": np.minimum(geo.tile, geo.width - col * geo.tile),
        }))
    ints = ("row", "col", "expected_h", "expected_w")
    empty = pd.DataFrame({"image_id": pd.Series(dtype=object), **{c: pd.Series(dtype="int64") for c in ints}})
    grid = pd.concat([empty, *parts], ignore_index=True) if parts else empty
    return _ints(grid, ints)


def tiles_frame(images: pd.DataFrame, tiles: pd.DataFrame) -> pd.DataFrame:
    """Expected grid outer-joined with the tiles: one row per tile that exists or should."""
    import numpy as np
    import pandas as pd

    grid = expected_grid(images)
    got = _ints(_require(tiles, TILE_COLUMNS, "tiles"), ("row", "col", "h", "w"))
    df = _merge_flags(grid.merge(got, on=list(KEY), how="outer", indicator=True), "expected", "present")
    df["tile_count"] = df["image_id"].map(_counts(got)).fillna(0).astype("int64")
    df["expected_tiles"] = df["image_id"].map(_counts(grid)).fillna(0).astype("int64")
    df["count_matches"] = df["tile_count"] == df["expected_tiles"]
    lo, hi = (df[c].astype("float64").to_numpy() for c in ("min", "max"))
    df["finite"] = _only_where(pd.Series(np.isfinite(lo) & np.isfinite(hi), index=df.index), df["present"])
    return _sorted(df, KEY)


def sr_tiles_frame(tiles: pd.DataFrame, sr_tiles: pd.DataFrame, scale: int) -> pd.DataFrame:
    """Input tiles outer-joined with SR tiles: one row per tile key on either side."""
    src = _ints(_require(tiles, KEY, "tiles"), ("row", "col"))
    sr = _ints(_require(sr_tiles, SR_TILE_COLUMNS, "sr_tiles"),
               ("row", "col", "h", "w", "scale", "sr_h", "sr_w", "nonfinite"))
    df = _merge_flags(src.merge(sr, on=list(KEY), how="outer", indicator=True), "has_tile", "has_sr")
    complete = df[["h", "w", "scale", "sr_h", "sr_w", "nonfinite"]].notna().all(axis=1)
    df["sr_complete"] = _only_where(complete, df["has_sr"])
    df["expected_sr_h"] = df["h"] * scale
    df["expected_sr_w"] = df["w"] * scale
    df["tile_count"] = df["image_id"].map(_counts(src)).fillna(0).astype("int64")
    df["sr_count"] = df["image_id"].map(_counts(sr)).fillna(0).astype("int64")
    df["count_matches"] = df["tile_count"] == df["sr_count"]
    return _sorted(df, KEY)


def outputs_frame(images: pd.DataFrame, outputs: pd.DataFrame, scale: int) -> pd.DataFrame:
    """Ok images outer-joined with outputs (metadata + PNG facts): one row per image on either side."""
    imgs = _ints(_require(images, ("image_id", "status", "lr_width", "lr_height"), "images"),
                 ("lr_width", "lr_height"))
    ok = imgs.loc[imgs["status"] == "ok", ["image_id", "lr_width", "lr_height"]]
    out = _ints(_require(outputs, (*OUTPUT_COLUMNS, *PNG_FACT_COLUMNS), "outputs"),
                ("width", "height", "bytes", "png_length", "png_width", "png_height"))
    df = _merge_flags(ok.merge(out, on="image_id", how="outer", indicator=True), "has_input", "has_output")
    df["output_count"] = df["image_id"].map(_counts(out)).fillna(0).astype("int64")
    df["expected_width"] = df["lr_width"] * scale
    df["expected_height"] = df["lr_height"] * scale
    has = df["has_output"]
    df["output_complete"] = _only_where(df[list(OUTPUT_COLUMNS)].notna().all(axis=1), has)
    df["png_signature"] = _only_where(df["png_signature"].astype("boolean"), has)
    same_size = (df["png_width"] == df["width"]) & (df["png_height"] == df["height"])
    df["png_size_matches"] = _only_where(same_size, has)
    df["bytes_match"] = _only_where(df["bytes"] == df["png_length"], has)
    df["sha256_matches"] = _only_where(df["sha256"] == df["png_sha256"], has)
    return _sorted(df, ["image_id"])


# --------------------------------------------------------------------------- suites


def _gxe():
    import great_expectations.expectations as gxe

    return gxe


def _suite(name: str, expectations: list[Any]) -> ExpectationSuite:
    import great_expectations as gx

    return gx.ExpectationSuite(name=name, expectations=expectations)


def _not_null(*columns: str, why: str) -> list[Any]:
    return [_gxe().ExpectColumnValuesToNotBeNull(column=c, description=why) for c in columns]


def _true(column: str, why: str) -> Any:
    return _gxe().ExpectColumnValuesToBeInSet(column=column, value_set=[True], description=why)


def _positive(*columns: str, why: str) -> list[Any]:
    return [_gxe().ExpectColumnValuesToBeBetween(column=c, min_value=0, strict_min=True, description=why)
            for c in columns]


def _equal(column_a: str, column_b: str, why: str) -> Any:
    """Column pair equality on rows where both exist (a missing side is another rule's business)."""
    return _gxe().ExpectColumnPairValuesToBeEqual(column_A=column_a, column_B=column_b,
                                                  ignore_row_if="either_value_is_missing", description=why)


def raw_manifest_suite() -> ExpectationSuite:
    """The fetch manifest: every stored photo is identified, checksummed, non-empty and decodable."""
    gxe = _gxe()
    return _suite("raw_manifest", [
        *_not_null(*MANIFEST_COLUMNS, why="every stored photo has a complete manifest record"),
        gxe.ExpectColumnValuesToBeUnique(column="image_id", description="a photo is stored once"),
        gxe.ExpectColumnValuesToMatchRegex(column="sha256", regex=SHA256_REGEX,
                                           description="sha256 is 64 lower-case hex digits"),
        *_positive("bytes", why="a stored photo is not empty"),
        *_positive("width", "height", why="a stored photo has a positive size"),
        gxe.ExpectColumnValuesToBeInSet(column="format", value_set=list(DECODABLE_FORMATS),
                                        description="the format is one the decoder accepts"),
        _true("split_accounted", "split has a row (ok or quarantined) for every stored photo"),
    ])


def images_suite() -> ExpectationSuite:
    """The split's image rows: known photos, a known status, geometry that implies the tile grid."""
    gxe = _gxe()
    return _suite("images", [
        *_not_null("image_id", "status", why="every image row has an id and a status"),
        gxe.ExpectColumnValuesToBeUnique(column="image_id", description="split writes one row per photo"),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=list(STATUSES),
                                        description="status is ok or quarantined"),
        _true("in_manifest", "every split image is a photo listed in the manifest"),
        _true("geometry_matches", "ok images have a positive LR size and rows/cols/tiles = ceil(lr/tile)"),
    ])


def tiles_suite() -> ExpectationSuite:
    """The LR tiles: exactly the grid each ok image's geometry implies, with Y in [0, 1]."""
    gxe = _gxe()
    return _suite("tiles", [
        *_not_null(*KEY, why="tile keys are never null"),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=list(KEY),
                                            description="one tile per (image_id, row, col)"),
        _true("present", "every tile of an ok image's grid exists (none missing)"),
        _true("expected", "no tile outside an ok image's grid (no extra or orphan tiles)"),
        _true("count_matches", "per image, tile count == rows * cols of its geometry"),
        _equal("h", "expected_h", "the core height is the one the geometry cuts"),
        _equal("w", "expected_w", "the core width is the one the geometry cuts"),
        _true("finite", "tile min/max are finite (no NaN or Inf pixels)"),
        *[gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0.0, max_value=1.0,
                                            description="tile pixels hold Y in [0, 1]")
          for c in ("min", "max")],
    ])


def sr_tiles_suite(scale: int) -> ExpectationSuite:
    """The SR tiles: one per input tile, ``scale`` times its core, all pixels finite."""
    gxe = _gxe()
    return _suite("sr_tiles", [
        *_not_null(*KEY, why="SR tile keys are never null"),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=list(KEY),
                                            description="one SR tile per (image_id, row, col)"),
        _true("has_sr", "every input tile has an SR tile (none missing)"),
        _true("has_tile", "no SR tile without an input tile"),
        _true("count_matches", "per image, SR tile count == input tile count"),
        _true("sr_complete", "SR tile sizes, scale and nonfinite count are never null"),
        gxe.ExpectColumnValuesToBeInSet(column="scale", value_set=[scale],
                                        description=f"SR tiles were made at the run's x{scale}"),
        _equal("sr_h", "expected_sr_h", f"sr_h == {scale} * h"),
        _equal("sr_w", "expected_sr_w", f"sr_w == {scale} * w"),
        gxe.ExpectColumnValuesToBeBetween(column="nonfinite", min_value=0, max_value=0,
                                          description="no NaN or Inf in SR pixels"),
    ])


def outputs_suite(scale: int) -> ExpectationSuite:
    """The stitched PNGs: exactly one per ok image, ``scale`` times its LR size, a real PNG as recorded."""
    gxe = _gxe()
    return _suite("outputs", [
        *_not_null("image_id", why="output rows have an image id"),
        gxe.ExpectColumnValuesToBeBetween(column="output_count", min_value=1, max_value=1,
                                          description="every ok image has exactly one output"),
        _true("has_input", "no output for a quarantined or unknown image"),
        _true("output_complete", "output width, height, bytes and sha256 are never null"),
        _equal("width", "expected_width", f"width == {scale} * lr_width"),
        _equal("height", "expected_height", f"height == {scale} * lr_height"),
        *_positive("bytes", why="an output PNG is not empty"),
        _true("png_signature", "the output starts with the PNG signature"),
        _true("png_size_matches", "the PNG's IHDR size equals the recorded width and height"),
        _true("bytes_match", "bytes equals the PNG's length"),
        _true("sha256_matches", "sha256 is the PNG's checksum"),
    ])


# --------------------------------------------------------------------------- running and reporting


@dataclass(frozen=True)
class Gate:
    """A named gate: how to derive its frame from the inputs, and its suite."""

    name: str
    frame: Callable[[Mapping[str, pd.DataFrame], int], pd.DataFrame]
    suite: Callable[[int], ExpectationSuite]


GATES = (
    Gate("raw_manifest", lambda f, s: raw_manifest_frame(f["manifest"], f["images"]),
         lambda s: raw_manifest_suite()),
    Gate("images", lambda f, s: images_frame(f["images"], f["manifest"]), lambda s: images_suite()),
    Gate("tiles", lambda f, s: tiles_frame(f["images"], f["tiles"]), lambda s: tiles_suite()),
    Gate("sr_tiles", lambda f, s: sr_tiles_frame(f["tiles"], f["sr_tiles"], s), sr_tiles_suite),
    Gate("outputs", lambda f, s: outputs_frame(f["images"], f["outputs"], s), outputs_suite),
)
SUITES = tuple(g.name for g in GATES)


def validate(checks: Sequence[tuple[str, pd.DataFrame, ExpectationSuite]]
             ) -> list[ExpectationSuiteValidationResult]:
    """Run each suite on its frame in one ephemeral GX context (nothing is persisted)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm bars in task logs
    source = context.data_sources.add_pandas("superres_quality")
    results = []
    for name, frame, suite in checks:
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=context.suites.add(suite)))
        results.append(definition.run(batch_parameters={"dataframe": frame}, result_format=_RESULT_FORMAT))
    return results


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars unwrapped, NA/NaN as null, infinities as strings."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        with contextlib.suppress(TypeError, ValueError):  # numpy scalars -> Python scalars
            value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else (value if math.isfinite(value) else str(value))
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def sample_rows(frame: pd.DataFrame, index: Sequence[Any] | None, limit: int = SAMPLE_ROWS) -> list[dict]:
    """Up to ``limit`` offending rows as plain dicts, without any bytes-valued column."""
    if not index:
        return []
    labels = [i for i in list(index)[:limit] if i in frame.index]
    rows = frame.loc[labels]
    keep = [c for c in rows.columns if c not in _BINARY_COLUMNS
            and not rows[c].map(lambda v: isinstance(v, (bytes, bytearray, memoryview))).any()]
    return [jsonable(r) for r in rows[keep].to_dict(orient="records")]


def _exception(info: Any) -> str | None:
    """GX's exception_info is either one record or a dict of records keyed by metric."""
    if not isinstance(info, Mapping):
        return None
    records = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, Mapping)]
    messages = [str(r.get("exception_message")) for r in records if r.get("raised_exception")]
    return "; ".join(messages) or None


def failure(frame: pd.DataFrame, result: ExpectationValidationResult) -> dict[str, Any]:
    """One failed expectation: its type, column(s), description, counts and sample rows."""
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    detail = dict(result.result or {})
    entry: dict[str, Any] = {"expectation": config.type}
    if "column" in kwargs:
        entry["column"] = kwargs["column"]
    elif "column_A" in kwargs:
        entry["columns"] = [kwargs["column_A"], kwargs["column_B"]]
    elif "column_list" in kwargs:
        entry["columns"] = list(kwargs["column_list"])
    entry.update(
        description=getattr(config, "description", None),
        kwargs=jsonable(kwargs),
        element_count=jsonable(detail.get("element_count")),
        unexpected_count=jsonable(detail.get("unexpected_count")),
        sample_rows=sample_rows(frame, detail.get("partial_unexpected_index_list")),
    )
    if "observed_value" in detail:
        entry["observed_value"] = jsonable(detail["observed_value"])
    error = _exception(result.exception_info)
    if error:
        entry["exception"] = error
    return entry


def suite_report(name: str, frame: pd.DataFrame, result: ExpectationSuiteValidationResult) -> dict[str, Any]:
    """The quality.json entry of one gate."""
    stats = jsonable(dict(result.statistics))
    return {
        "name": name,
        "success": bool(result.success),
        "rows": int(len(frame)),
        "statistics": stats,
        "failed": [failure(frame, r) for r in result.results if not r.success],
    }


def run_suites(frames: Mapping[str, pd.DataFrame], scale: int) -> dict[str, Any]:
    """Run every gate on the date's metadata frames; the result is ``reports/ds=…/quality.json``.

    ``frames`` holds :data:`FRAMES`: the manifest rows (:func:`manifest_records`) and the
    images, tiles, sr_tiles and outputs datasets (metadata columns; outputs with
    :data:`PNG_FACT_COLUMNS`, see :func:`png_facts` / :func:`png_sql`).
    """
    missing = [name for name in FRAMES if name not in frames]
    if missing:
        raise ValueError(f"run_suites needs the frames {list(FRAMES)}; missing {missing}")
    checks = [(g.name, g.frame(frames, scale), g.suite(scale)) for g in GATES]
    suites = [suite_report(name, frame, res) for (name, frame, _), res in zip(checks, validate(checks),
                                                                               strict=True)]
    return {
        "success": all(s["success"] for s in suites),
        "scale": scale,
        "inputs": {name: int(len(frames[name])) for name in FRAMES},
        "suites": suites,
    }


def _describe(entry: Mapping[str, Any]) -> str:
    what = ", ".join(f"{k}={v}" for k, v in entry.get("kwargs", {}).items())
    line = f"{entry['expectation']}({what})"
    if entry.get("unexpected_count") is not None:
        line += f": {entry['unexpected_count']} of {entry.get('element_count')} rows unexpected"
    if entry.get("observed_value") is not None:
        line += f": observed {entry['observed_value']}"
    if entry.get("description"):
        line += f" [{entry['description']}]"
    if entry.get("exception"):
        line += f" (raised: {entry['exception']})"
    return line


def format_failures(result: Mapping[str, Any]) -> str:
    """A readable account of a failed result: each failed suite and expectation, with sample rows."""
    if result.get("error"):
        return f"quality gates could not run: {result['error']}"
    failed = [s for s in result.get("suites", []) if not s.get("success")]
    lines = [f"data-quality gate failed: {len(failed)} of {len(result.get('suites', []))} suites "
             f"({', '.join(s['name'] for s in failed)})"]
    for suite in failed:
        for entry in suite.get("failed", []):
            lines.append(f"- {suite['name']}: {_describe(entry)}")
            lines.extend(f"    {json.dumps(row, default=str)}" for row in entry.get("sample_rows", []))
    return "\n".join(lines)


def enforce(result: Mapping[str, Any]) -> Mapping[str, Any]:
    """Pass a successful result through; raise :class:`QualityGateError` for a failed one."""
    if not result.get("success"):
        raise QualityGateError(format_failures(result), result)
    return result
