"""FSRCNN's hyper-parameters and its weights format, without importing torch.

A Spark driver only needs the spec (split: the halo) or to refuse a wrong
weights file before any Spark work (inference); importing torch for that
costs 1.5-2 s per task.  :func:`check_weights` reads the ``.pt`` archive's
pickle with an unpickler that builds nothing but tensor shapes, so it checks
the same things ``load_model``'s strict ``load_state_dict`` does: every
parameter present, none extra, every shape right, every storage complete, and
every value finite (a NaN weight would turn every output black).
"""

from __future__ import annotations

import json
import math
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
SCALES = (2, 3, 4)


class WeightsError(ValueError):
    """A weights file that does not fit the requested model."""


@dataclass(frozen=True)
class ModelSpec:
    """FSRCNN hyper-parameters. ``(56, 12, 4)`` is FSRCNN, ``(32, 5, 1)`` FSRCNN-s."""

    scale: int = 2
    d: int = 56
    s: int = 12
    m: int = 4

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale}")
        for name in ("d", "s", "m"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @property
    def arch(self) -> str:
        return f"fsrcnn({self.d},{self.s},{self.m})"

    @property
    def halo(self) -> int:
        """LR pixels of context an output pixel depends on, on each side.

        Conv5 reaches 2, each of the m Conv3 layers 1, and the 9x9 transposed
        conv at stride ``scale`` at most 2 LR pixels (ceil(4 / scale) <= 2).
        A tile that carries this much halo gives exactly the whole-image result.
        """
        deconv = max(math.floor(4 / self.scale), math.floor((self.scale + 3) / self.scale))
        return 2 + self.m + deconv


FSRCNN_SPEC = dict(d=56, s=12, m=4)
FSRCNN_S_SPEC = dict(d=32, s=5, m=1)


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The ``state_dict`` shapes of :class:`superres.model.FSRCNN` for ``spec`` (tested equal)."""
    d, s = spec.d, spec.s
    shapes: dict[str, tuple[int, ...]] = {
        "feature.0.weight": (d, 1, 5, 5), "feature.0.bias": (d,), "feature.1.weight": (d,),
        "shrink.0.weight": (s, d, 1, 1), "shrink.0.bias": (s,), "shrink.1.weight": (s,),
    }
    for i in range(spec.m):
        shapes |= {f"mapping.{2 * i}.weight": (s, s, 3, 3), f"mapping.{2 * i}.bias": (s,),
                   f"mapping.{2 * i + 1}.weight": (s,)}
    return shapes | {"expand.0.weight": (d, s, 1, 1), "expand.0.bias": (d,), "expand.1.weight": (d,),
                     "deconv.weight": (d, 1, 9, 9), "deconv.bias": (1,)}


def metadata_path(weights: Path) -> Path:
    return Path(weights).with_suffix(".json")


@dataclass
class ModelMeta:
    """What a weights file is: checked on load, written on save."""

    arch: str
    d: int
    s: int
    m: int
    scale: int
    training_data: list[str] = field(default_factory=list)
    validation: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(scale=self.scale, d=self.d, s=self.s, m=self.m)

    @classmethod
    def for_spec(cls, spec: ModelSpec, **extra: Any) -> ModelMeta:
        return cls(arch="fsrcnn", d=spec.d, s=spec.s, m=spec.m, scale=spec.scale, **extra)


def read_meta(weights: Path) -> ModelMeta:
    path = metadata_path(weights)
    if not path.exists():
        raise WeightsError(f"{weights}: metadata file {path.name} is missing")
    try:
        raw = json.loads(path.read_text())
        meta = ModelMeta(**raw)
    except (json.JSONDecodeError, TypeError) as exc:
        raise WeightsError(f"{path}: unreadable model metadata ({exc})") from exc
    if meta.arch != "fsrcnn":
        raise WeightsError(f"{weights}: architecture {meta.arch!r} is not fsrcnn")
    return meta


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: str
    numel: int


@dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]


class _StateDict(dict):
    """``OrderedDict`` as pickled by ``state_dict()``: it carries a ``_metadata`` attribute."""


_STORAGE_BYTES = {"FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2}


class _ShapeUnpickler(pickle.Unpickler):
    """Reads a ``torch.save`` state_dict pickle into :class:`_Tensor` records; nothing else loads."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return _StateDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, *_: _Tensor(storage, int(offset), tuple(size))
        if (module, name) in (("torch._utils", "_rebuild_parameter"),
                              ("torch._utils", "_rebuild_parameter_with_state")):
            return lambda data, *_: data  # an nn.Parameter saved as such: its tensor
        if module == "torch" and name in _STORAGE_BYTES:
            return name
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a weights file")

    def persistent_load(self, pid: Any) -> _Storage:
        kind, dtype, key, _location, numel = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {kind!r}")
        return _Storage(str(key), str(dtype), int(numel))


def requested_meta(weights: Path, scale: int | None = None) -> ModelMeta:
    """The metadata of an existing weights file, refused unless it is for ``scale``."""
    weights = Path(weights)
    if not weights.exists():
        raise WeightsError(f"weights file {weights} does not exist")
    meta = read_meta(weights)
    if scale is not None and meta.scale != scale:
        raise WeightsError(f"{weights.name} is a x{meta.scale} model but x{scale} was requested")
    return meta


def check_weights(weights: Path, scale: int | None = None) -> ModelMeta:
    """Refuse a weights file that ``load_model`` would refuse, without torch; returns its metadata.

    The scale is the one the sidecar ``.json`` says; the tensors alone cannot tell x2 from x3.
    """
    weights = Path(weights)
    meta = requested_meta(weights, scale)
    want = expected_shapes(meta.spec)
    try:
        with zipfile.ZipFile(weights) as zf:
            names = zf.namelist()
            pkl = next(n for n in names if n.endswith("/data.pkl"))
            root = pkl[: -len("data.pkl")]
            with zf.open(pkl) as fh:
                state = _ShapeUnpickler(fh).load()
            sizes = {n[len(root) + len("data/"):]: zf.getinfo(n).file_size
                     for n in names if n.startswith(root + "data/")}
    except (zipfile.BadZipFile, StopIteration, pickle.UnpicklingError, EOFError, ValueError,
            TypeError, OSError) as exc:
        why = str(exc) or type(exc).__name__
        raise WeightsError(f"{weights.name}: not a readable PyTorch state_dict ({why})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, _Tensor) for v in state.values()):
        raise WeightsError(f"{weights.name}: not a state_dict of tensors")
    got = {k: v.shape for k, v in state.items()}
    if got != want:
        missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
        wrong = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
        raise WeightsError(f"{weights.name}: tensors do not match {meta.spec.arch} x{meta.scale}: "
                           f"missing {missing}, unexpected {extra}, wrong shape {wrong}")
    for k, t in state.items():
        need = t.offset + math.prod(t.shape)
        width = _STORAGE_BYTES.get(t.storage.dtype, 0)
        if t.storage.numel < need or sizes.get(t.storage.key, -1) < t.storage.numel * width:
            raise WeightsError(f"{weights.name}: tensor {k} is truncated")
    _check_finite(weights, root, state)
    return meta


def non_finite_message(name: str, tensor: str, count: int) -> str:
    """The one refusal of a tensor holding NaN or infinity (here and in ``superres.model``)."""
    return (f"{name}: tensor {tensor} holds {count} non-finite value{'s' if count > 1 else ''} "
            "(NaN or infinity); the weights are unusable")


def _check_finite(weights: Path, root: str, state: dict[str, _Tensor]) -> None:
    """Refuse NaN or infinity in any tensor, reading the storages with numpy (no torch)."""
    import numpy as np

    with zipfile.ZipFile(weights) as zf:
        order = ">" if root + "byteorder" in zf.namelist() and zf.read(root + "byteorder") == b"big" else "<"
        for k, t in state.items():
            raw = zf.read(f"{root}data/{t.storage.key}")
            if t.storage.dtype == "BFloat16Storage":  # the top half of a float32
                values = (np.frombuffer(raw, order + "u2").astype(np.uint32) << 16).view(np.float32)
            else:
                width = _STORAGE_BYTES[t.storage.dtype]
                values = np.frombuffer(raw, f"{order}f{width}")
            bad = int(np.count_nonzero(~np.isfinite(values[t.offset: t.offset + math.prod(t.shape)])))
            if bad:
                raise WeightsError(non_finite_message(weights.name, k, bad))


def models_dir() -> Path:
    """Where the weights live: ``SUPERRES_MODELS_DIR`` or the project's ``include/models``."""
    import os

    env = os.environ.get("SUPERRES_MODELS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "include" / "models"


def default_weights(scale: int, directory: str | Path | None = None) -> Path:
    return Path(directory or models_dir()) / f"fsrcnn_x{scale}.pt"
