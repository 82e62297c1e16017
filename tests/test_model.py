from __future__ import annotations

import json

import pytest
import torch

from superres.model import (
    FSRCNN,
    ModelMeta,
    ModelSpec,
    WeightsError,
    load_model,
    pick_device,
    save_model,
)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("dsm", [(56, 12, 4), (32, 5, 1)])
def test_output_is_scale_times_input(scale: int, dsm: tuple[int, int, int]) -> None:
    d, s, m = dsm
    model = FSRCNN(ModelSpec(scale=scale, d=d, s=s, m=m))
    out = model(torch.zeros(2, 1, 7, 9))
    assert out.shape == (2, 1, 7 * scale, 9 * scale)


def test_paper_layer_shapes() -> None:
    model = FSRCNN(ModelSpec(scale=3))
    assert model.feature[0].weight.shape == (56, 1, 5, 5)
    assert model.shrink[0].weight.shape == (12, 56, 1, 1)
    assert len([m for m in model.mapping if isinstance(m, torch.nn.Conv2d)]) == 4
    assert model.expand[0].weight.shape == (56, 12, 1, 1)
    assert model.deconv.weight.shape == (56, 1, 9, 9) and model.deconv.stride == (3, 3)
    assert sum(p.numel() for p in model.parameters()) > 12_000


def test_halo_covers_the_receptive_field() -> None:
    assert ModelSpec(scale=2).halo == 8
    assert ModelSpec(scale=4, d=32, s=5, m=1).halo == 4


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="scale"):
        ModelSpec(scale=5)


def test_save_load_round_trip(tmp_path) -> None:
    spec = ModelSpec(scale=3)
    model = FSRCNN(spec)
    save_model(model, tmp_path / "m.pt", ModelMeta.for_spec(spec, training_data=["T91"]))
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["scale"] == 3 and meta["d"] == 56 and meta["training_data"] == ["T91"]
    loaded = load_model(tmp_path / "m.pt", scale=3)
    x = torch.rand(1, 1, 10, 10)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    # the file is a plain state_dict, loadable with weights_only=True
    assert isinstance(torch.load(tmp_path / "m.pt", weights_only=True), dict)


def test_refuses_wrong_scale_and_arch(tmp_path) -> None:
    spec = ModelSpec(scale=2)
    save_model(FSRCNN(spec), tmp_path / "x2.pt", ModelMeta.for_spec(spec))
    with pytest.raises(WeightsError, match="x2 model but x4 was requested"):
        load_model(tmp_path / "x2.pt", scale=4)
    with pytest.raises(WeightsError, match=r"fsrcnn\(32,5,1\)"):
        load_model(tmp_path / "x2.pt", spec=ModelSpec(scale=2, d=32, s=5, m=1))


def test_refuses_tensors_that_do_not_match_metadata(tmp_path) -> None:
    small = ModelSpec(scale=2, d=32, s=5, m=1)
    save_model(FSRCNN(small), tmp_path / "m.pt", ModelMeta.for_spec(ModelSpec(scale=2)))
    with pytest.raises(WeightsError, match="tensors do not match"):
        load_model(tmp_path / "m.pt")


def test_refuses_missing_or_broken_metadata(tmp_path) -> None:
    torch.save(FSRCNN(ModelSpec()).state_dict(), tmp_path / "m.pt")
    with pytest.raises(WeightsError, match="metadata file m.json is missing"):
        load_model(tmp_path / "m.pt")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(WeightsError, match="unreadable model metadata"):
        load_model(tmp_path / "m.pt")
    with pytest.raises(WeightsError, match="does not exist"):
        load_model(tmp_path / "nope.pt")


def test_device_selection() -> None:
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device("cuda")
