"""Hostile arguments and input files for ``python -m superres upscale`` and ``evaluate``.

Hypothesis builds folders of tiny files (random bytes under image extensions, valid
images of odd sizes and modes, images cut short, empty files, names whose stems
collide) and command lines around them (bad numbers, an ``--out`` or ``--json`` that
is a file or a folder, missing paths, weights of another scale), and runs
``superres.cli.main`` in-process with the shipped weights.  The property: either the
run succeeds and wrote exactly one output per input, or it fails with a non-zero exit
and only ``error:`` lines (besides progress) on stderr, never a traceback; argparse's
own refusals (exit 2 with its usage) count as clean failures.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from superres import images
from superres.cli import main
from superres.weights import default_weights

MODELS = Path(__file__).resolve().parents[2] / "include" / "models"
EXTENSIONS = [".png", ".jpg", ".JPG", ".jpeg", ".gif", ".bmp", ".tif", ".webp", ".PNG"]
STEMS = ["x", "X", "x.jpg", "a", "a.png"]  # stems that collide once the extension is dropped
SIGNATURES = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"<html>"]
PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """``--threads`` sets torch's global thread count; put it back for the other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- input files


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    """A valid tiny image in one of the formats and modes the decoder meets."""
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "TIFF"]))
    mode = draw(st.sampled_from({"PNG": ["L", "LA", "RGB", "RGBA", "P"], "JPEG": ["L", "RGB"],
                                 "BMP": ["L", "RGB"], "GIF": ["L", "P"], "TIFF": ["L", "RGB"]}[fmt]))
    seed = draw(st.integers(0, 2**16))
    flat = draw(st.booleans())
    rng = np.random.default_rng(seed)
    rgba = np.full((h, w, 4), 90, np.uint8) if flat else rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    img = Image.fromarray(rgba, "RGBA")
    img = img.convert("RGB").convert("P") if mode == "P" else img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def file_body(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["image"] * 6 + ["cut", "noise", "empty"]))
    if kind == "empty":
        return b""
    if kind == "noise":
        return draw(st.sampled_from(SIGNATURES)) + draw(st.binary(max_size=48))
    data = draw(image_bytes())
    if kind == "cut":
        return data[: draw(st.integers(1, max(1, len(data) - 1)))]
    return data


# (folder index, stem, extension, body): up to 4 files in in0/ and in1/
files = st.lists(st.tuples(st.integers(0, 1), st.sampled_from(STEMS), st.sampled_from(EXTENSIONS),
                           file_body()), min_size=0, max_size=4)


def write_files(root: Path, spec: list[tuple[int, str, str, bytes]]) -> list[Path]:
    written: dict[Path, bytes] = {}
    for folder, stem, ext, body in spec:
        written[root / f"in{folder}" / f"{stem}{ext}"] = body
    for path, body in written.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    return list(written)


# --------------------------------------------------------------------------- the property


@dataclass
class Run:
    code: int
    out: str
    err: str


def run_cli(argv: list[str]) -> Run:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse refusing an argument
            code = exc.code if isinstance(exc.code, int) else 2
            assert code == 2, f"SystemExit({exc.code!r}) from {argv}"
            assert "usage:" in err.getvalue() and ": error: " in err.getvalue(), err.getvalue()
            return Run(code, out.getvalue(), err.getvalue())
    return Run(code, out.getvalue(), err.getvalue())


def assert_clean(run: Run) -> None:
    """No traceback; a failure says so in ``error:`` lines, and stderr holds nothing else but progress."""
    assert "Traceback" not in run.err and "Traceback" not in run.out
    if "usage:" in run.err:  # argparse's refusal: its usage text and one error line
        return
    lines = [line for line in run.err.splitlines() if line.strip()]
    assert all(line.startswith(("error: ", "[")) for line in lines), run.err
    if run.code != 0:
        assert any(line.startswith("error: ") for line in lines), run.err


def number(draw: st.DrawFn, name: str, values: st.SearchStrategy[int]) -> list[str]:
    """``[name, value]`` a third of the time (often a bad value), else nothing."""
    value = draw(st.sampled_from([None, None]) | values)
    return [] if value is None else [name, str(value)]


def decodable_sizes(paths: list[Path], scale: int, max_pixels: int) -> list[tuple[int, int]] | None:
    """Output sizes the inputs should give, or None when some input cannot be decoded."""
    sizes = []
    for path in paths:
        try:
            dec = images.read(path, max_pixels=max_pixels)
        except (images.ImageError, OSError):
            return None
        sizes.append((dec.width * scale, dec.height * scale))
    return sorted(sizes)


@PROPERTY
@given(spec=files, data=st.data())
def test_upscale_writes_one_output_per_input_or_fails_cleanly(spec, data) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = write_files(root, spec)
        scale = data.draw(st.sampled_from([2, 3, 4]), label="scale")
        model_scale = data.draw(st.sampled_from([scale] * 5 + [2, 3]), label="model scale")
        how = data.draw(st.sampled_from(["files", "folders", "files twice", "missing"]), label="inputs")
        if how == "folders":
            args = sorted({str(p.parent) for p in inputs}) or [str(root / "in0")]
            (root / "in0").mkdir(exist_ok=True)
        elif how == "files twice":
            args = [str(p) for p in inputs + inputs[:1]]
        elif how == "missing":
            args = [str(p) for p in inputs] + [str(root / "missing.png")]
        else:
            args = [str(p) for p in inputs]
        if not args:
            args = [str(root / "none.jpg")]
        out_kind = data.draw(st.sampled_from(["new", "new", "nested", "existing file", "an input folder"]),
                             label="--out")
        out = {"new": root / "out", "nested": root / "a" / "b" / "out",
               "existing file": root / "taken.png", "an input folder": root / "in0"}[out_kind]
        if out_kind == "existing file":
            out.write_bytes(b"keep")
        tile = number(data.draw, "--tile", st.integers(-3, 40))
        threads = number(data.draw, "--threads", st.integers(-2, 2))
        max_pixels = data.draw(st.sampled_from([None, None, None, -1, 0, 1, 30, 10_000]),
                               label="--max-pixels")
        limit = images.DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
        argv = ["upscale", *args, "--scale", str(scale), "--out", str(out),
                "--model", str(default_weights(model_scale, MODELS)), *tile, *threads,
                *([] if max_pixels is None else ["--max-pixels", str(max_pixels)])]
        before = set(out.iterdir()) if out.is_dir() else set()

        run = run_cli(argv)

        event(f"exit {run.code}{' (argparse)' if 'usage:' in run.err else ''}")
        assert_clean(run)
        new = sorted(set(out.iterdir()) - before) if out.is_dir() else []
        if out_kind == "existing file":
            assert run.code != 0 and out.read_bytes() == b"keep"
        unique = list(dict.fromkeys(p.resolve() for p in inputs))
        if run.code == 0:
            assert how != "missing" and model_scale == scale and unique
            assert len(new) == len(unique)
            assert all(p.suffix == ".png" for p in new)
            got = sorted(Image.open(p).size for p in new)
            assert got == decodable_sizes(unique, scale, limit)
        match = re.search(r"upscaled (\d+)/(\d+) ", run.out)
        if match:  # the count printed is the files written
            assert int(match.group(1)) == len(new)
            assert all(images.read(p).pixels.size for p in new)


@PROPERTY
@given(spec=files, data=st.data())
def test_evaluate_scores_every_image_or_fails_cleanly(spec, data) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_files(root, spec)
        # evaluate needs images of at least 16 px at x2: add some that can be scored, among the
        # hostile files (in0/) or on their own (hr/)
        mixed = data.draw(st.booleans(), label="scorable images among the hostile ones")
        good = root / ("in0" if mixed else "hr")
        good.mkdir(exist_ok=True)
        for i in range(data.draw(st.integers(0, 2), label="scorable")):
            side = data.draw(st.integers(14, 28), label="side")
            flat = data.draw(st.booleans(), label="flat")
            rng = np.random.default_rng(i)
            pixels = np.full((side, side + 3, 3), 120, np.uint8) if flat else \
                rng.integers(0, 256, (side, side + 3, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(good / f"big{i}.{data.draw(st.sampled_from(['png', 'bmp']))}")
        scale = data.draw(st.sampled_from([2, 3, 4]), label="scale")
        where = data.draw(st.sampled_from(["folder", "folder", "missing", "a file"]), label="hr_dir")
        hr = {"folder": good, "missing": root / "nope", "a file": root / "f.png"}[where]
        if where == "a file":
            hr.write_bytes(b"\x89PNG\r\n\x1a\n")
        if where == "folder":
            hr.mkdir(exist_ok=True)
        json_kind = data.draw(st.sampled_from(["none", "new", "nested", "parent is a file", "a folder"]),
                              label="--json")
        report = {"none": None, "new": root / "r.json", "nested": root / "x" / "y" / "r.json",
                  "parent is a file": root / "blocker" / "r.json", "a folder": root / "rdir"}[json_kind]
        if json_kind == "parent is a file":
            (root / "blocker").write_text("")
        if json_kind == "a folder":
            report.mkdir()
        tile = number(data.draw, "--tile", st.integers(-3, 40))
        threads = number(data.draw, "--threads", st.integers(-2, 2))
        argv = ["evaluate", str(hr), "--scale", str(scale), "--model", str(default_weights(scale, MODELS)),
                *tile, *threads, *([] if report is None else ["--json", str(report)])]

        run = run_cli(argv)

        event(f"exit {run.code}{' (argparse)' if 'usage:' in run.err else ''}")
        assert_clean(run)
        if "usage:" in run.err:
            return
        listed = images.list_images(hr) if hr.is_dir() else []
        if json_kind in ("parent is a file", "a folder") or where != "folder":
            assert run.code != 0
            assert "[1/" not in run.err  # refused before any scoring
        if report is not None and report.is_file():
            text = report.read_text()
            parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the JSON report"))
            assert len(parsed["images"]) + len(parsed["failed"]) == len(listed)
            assert all(isinstance(parsed["identical"][k], int) for k in ("psnr", "psnr_bicubic"))
        if run.code == 0:
            assert listed and where == "folder"
            assert "MEAN" in run.out
            if report is not None:
                assert report.is_file()
