"""superres.weights: the weights format checked without torch, agreeing with load_model."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from superres.model import FSRCNN, ModelMeta, ModelSpec, WeightsError, load_model, save_model
from superres.weights import check_weights, expected_shapes

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("spec", [ModelSpec(2), ModelSpec(3, 32, 5, 1), ModelSpec(4, 8, 3, 2)])
def test_expected_shapes_are_fsrcnns_state_dict(spec: ModelSpec) -> None:
    assert expected_shapes(spec) == {k: tuple(v.shape) for k, v in FSRCNN(spec).state_dict().items()}


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_shipped_weights_pass(scale: int) -> None:
    from superres.weights import default_weights

    meta = check_weights(default_weights(scale), scale=scale)
    assert (meta.scale, meta.d, meta.s, meta.m) == (scale, 56, 12, 4)


def _both_refuse(path: Path, match: str, scale: int | None = None) -> None:
    with pytest.raises(WeightsError, match=match):
        check_weights(path, scale=scale)
    with pytest.raises(WeightsError):
        load_model(path, scale=scale)


def test_good_file_passes_and_bad_files_are_refused_like_load_model(tmp_path) -> None:
    spec = ModelSpec(scale=2)
    good = tmp_path / "good.pt"
    save_model(FSRCNN(spec), good, ModelMeta.for_spec(spec))
    assert check_weights(good, scale=2).spec == spec

    _both_refuse(good, "x2 model but x3 was requested", scale=3)
    _both_refuse(tmp_path / "absent.pt", "does not exist")

    # tensors of another architecture under FSRCNN(56,12,4) metadata
    small = tmp_path / "small.pt"
    save_model(FSRCNN(ModelSpec(2, 32, 5, 1)), small, ModelMeta.for_spec(spec))
    _both_refuse(small, r"tensors do not match .*wrong shape \['deconv.weight'")

    # Parameters rather than tensors (torch.save(dict(model.named_parameters()))) load, so pass too
    params = tmp_path / "params.pt"
    model = FSRCNN(spec)
    torch.save({**dict(model.named_parameters()), **dict(model.named_buffers())}, params)
    params.with_suffix(".json").write_text(good.with_suffix(".json").read_text())
    assert check_weights(params).spec == spec
    load_model(params)

    # a parameter missing
    state = FSRCNN(spec).state_dict()
    del state["deconv.bias"]
    missing = tmp_path / "missing.pt"
    torch.save(state, missing)
    missing.with_suffix(".json").write_text(good.with_suffix(".json").read_text())
    _both_refuse(missing, r"missing \['deconv.bias'\]")


def test_truncated_garbage_and_foreign_pickles_are_refused(tmp_path) -> None:
    spec = ModelSpec(scale=2)
    good = tmp_path / "good.pt"
    save_model(FSRCNN(spec), good, ModelMeta.for_spec(spec))
    meta_text = good.with_suffix(".json").read_text()

    def variant(name: str, data: bytes) -> Path:
        path = tmp_path / f"{name}.pt"
        path.write_bytes(data)
        path.with_suffix(".json").write_text(meta_text)
        return path

    _both_refuse(variant("cut", good.read_bytes()[:4000]), "not a readable PyTorch state_dict")
    _both_refuse(variant("noise", bytes(range(256)) * 40), "not a readable PyTorch state_dict")

    # one tensor's storage shortened inside an otherwise valid archive
    short = tmp_path / "short.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(short, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if "/data/" in item.filename and len(data) == 56 * 81 * 4:  # deconv.weight
                data = data[:100]
            dst.writestr(item, data)
    short.with_suffix(".json").write_text(meta_text)
    with pytest.raises(WeightsError, match="deconv.weight is truncated"):
        check_weights(short)

    # a pickle that would build something other than tensors is never executed
    foreign = tmp_path / "foreign.pt"
    torch.save({"feature.0.weight": Path("/etc/passwd")}, foreign)
    foreign.with_suffix(".json").write_text(meta_text)
    _both_refuse(foreign, "unexpected object pathlib")


def test_split_and_inference_drivers_do_not_import_torch() -> None:
    code = ("import sys; sys.path.insert(0, 'spark_jobs'); import split, inference; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_tensors_are_refused_naming_the_tensor(tmp_path, dtype, bad) -> None:
    import io

    from superres.model import model_from_bytes

    spec = ModelSpec(scale=2, d=8, s=4, m=1)
    state = {k: v.to(dtype) for k, v in FSRCNN(spec).state_dict().items()}
    state["shrink.0.bias"][2] = bad
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    meta = ModelMeta.for_spec(spec)
    save_model(FSRCNN(spec), tmp_path / "meta.pt", meta)
    path.with_suffix(".json").write_text((tmp_path / "meta.json").read_text())

    _both_refuse(path, r"tensor shrink\.0\.bias holds 1 non-finite value")
    buf = io.BytesIO()
    torch.save(state, buf)
    with pytest.raises(WeightsError, match=r"tensor shrink\.0\.bias holds 1 non-finite value"):
        model_from_bytes(buf.getvalue(), meta)
    # the same tensors, finite, load
    state["shrink.0.bias"][2] = 0.5
    torch.save(state, path)
    assert check_weights(path, scale=2).spec == spec
    load_model(path, scale=2)


def test_model_from_bytes_refuses_tensors_of_another_shape_as_a_weights_error() -> None:
    import io

    from superres.model import model_from_bytes

    buf = io.BytesIO()
    torch.save(FSRCNN(ModelSpec(2, 8, 4, 1)).state_dict(), buf)
    with pytest.raises(WeightsError, match="tensors do not match"):
        model_from_bytes(buf.getvalue(), ModelMeta.for_spec(ModelSpec(2, 16, 4, 1)))
