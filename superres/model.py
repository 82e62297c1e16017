"""FSRCNN (Dong et al., ECCV 2016) and its weights format.

A weights file is a plain ``state_dict`` (``<name>.pt``) next to a small JSON
metadata file (``<name>.json``) that says which architecture and scale it is
for.  Loading checks both, so a x3 file can never silently drive a x2 job.
The format itself lives in :mod:`superres.weights`, which needs no torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# The weights format without torch (spec, metadata, structural check), re-exported here.
from superres.weights import (  # noqa: F401
    FORMAT_VERSION,
    FSRCNN_S_SPEC,
    FSRCNN_SPEC,
    SCALES,
    ModelMeta,
    ModelSpec,
    WeightsError,
    check_weights,
    default_weights,
    metadata_path,
    models_dir,
    non_finite_message,
    read_meta,
)


class FSRCNN(nn.Module):
    """Conv5(d) -> Conv1(s) -> m x Conv3(s) -> Conv1(d) -> Deconv9(stride=scale).

    Input and output are single-channel (Y) tensors in [0, 1], NCHW.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        d, s, m = spec.d, spec.s, spec.m
        self.feature = nn.Sequential(nn.Conv2d(1, d, 5, padding=2), nn.PReLU(d))
        self.shrink = nn.Sequential(nn.Conv2d(d, s, 1), nn.PReLU(s))
        self.mapping = nn.Sequential(
            *[layer for _ in range(m) for layer in (nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s))]
        )
        self.expand = nn.Sequential(nn.Conv2d(s, d, 1), nn.PReLU(d))
        self.deconv = nn.ConvTranspose2d(
            d, 1, 9, stride=spec.scale, padding=4, output_padding=spec.scale - 1
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # He init for the convolutions, a small Gaussian for the deconvolution (paper, sec. 4.1).
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, a=0.25, nonlinearity="leaky_relu")
                nn.init.zeros_(mod.bias)
        nn.init.normal_(self.deconv.weight, std=0.001)
        nn.init.zeros_(self.deconv.bias)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.mapping(self.shrink(self.feature(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.body(x))


def deconv_taps(k: int, s: int, p: int) -> tuple[dict[int, list[int]], int]:
    """Per output phase ``r``, the input offsets ``j`` a ``k``-tap stride-``s`` deconvolution
    uses (output ``s*q + r`` reads input ``q - j`` through kernel tap ``s*j + r + p``), and
    the largest ``|j|`` (the sub-pixel kernel's reach)."""
    taps = {r: [j for j in range(-k, k + 1) if 0 <= s * j + r + p < k] for r in range(s)}
    reach = max(max(max(js), -min(js)) for js in taps.values())
    return taps, reach


def subpixel_index(deconv: nn.ConvTranspose2d) -> tuple[torch.Tensor, int]:
    """Where each tap of the deconvolution's sub-pixel kernel comes from.

    Returns ``(index [c*s*s, C, K, K], reach)``: ``index`` holds the flat position in
    ``deconv.weight`` of every sub-pixel tap, or ``deconv.weight.numel()`` (one past
    the end, a zero) where a phase has fewer taps.  Gathering with it
    (:func:`subpixel_weight`) is differentiable, so training can run the fast form.
    """
    c_in, c_out, k, k2 = deconv.weight.shape
    s, p = deconv.stride[0], deconv.padding[0]
    if (k, s, p) != (k2, deconv.stride[1], deconv.padding[1]) or deconv.output_padding != (s - 1, s - 1):
        raise ValueError("only square kernels with output_padding = stride - 1 are supported")
    if deconv.groups != 1 or deconv.dilation != (1, 1):
        raise ValueError("groups and dilation are not supported")
    taps, reach = deconv_taps(k, s, p)
    size = 2 * reach + 1
    zero = c_in * c_out * k * k
    index = torch.full((c_out * s * s, c_in, size, size), zero, dtype=torch.long)
    ci = torch.arange(c_in)
    for co in range(c_out):
        for ry in range(s):
            for rx in range(s):
                oc = (co * s + ry) * s + rx  # pixel_shuffle's channel order
                for jy in taps[ry]:
                    for jx in taps[rx]:
                        ky, kx = s * jy + ry + p, s * jx + rx + p
                        index[oc, :, reach - jy, reach - jx] = ((ci * c_out + co) * k + ky) * k + kx
    return index, reach


def subpixel_weight(weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The sub-pixel kernel gathered from a deconvolution weight (gradients flow back to it)."""
    flat = torch.cat([weight.reshape(-1), weight.new_zeros(1)])
    return flat[index]


def subpixel_deconv(deconv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The exact Conv2d + PixelShuffle form of FSRCNN's transposed convolution.

    ``ConvTranspose2d(C, c, k, stride=s, padding=p, output_padding=s-1)`` maps an
    ``h x w`` input to ``(h*s) x (w*s)``; output pixel ``s*q + r`` (per axis) is
    ``sum_j in[q - j] * W[s*j + r + p]`` over the ``j`` that index the kernel.  So
    every phase ``r`` is an ordinary correlation of the input with a ``K x K``
    sub-kernel, and the ``s*s`` phases are the channels of one Conv2d that
    ``pixel_shuffle`` interleaves.  The kernel is made symmetric (zero taps where
    a phase has fewer) so the Conv2d uses plain ``padding=K//2``; the output size
    and border handling are then exactly those of the deconvolution.

    Returns ``(weight [c*s*s, C, K, K], bias [c*s*s], padding)``.
    """
    index, reach = subpixel_index(deconv)
    s = deconv.stride[0]
    weight = subpixel_weight(deconv.weight.detach(), index)
    bias = deconv.bias.detach().repeat_interleave(s * s) if deconv.bias is not None else None
    return weight, bias, reach


class SubpixelForward:
    """An :class:`FSRCNN`'s forward pass with its deconvolution run in sub-pixel form.

    The same function as ``model(x)``, differentiable with respect to the model's own
    parameters (the stored format stays the ``ConvTranspose2d``), and cheaper on CPU,
    where oneDNN runs a small Conv2d faster than a strided transposed convolution.
    """

    def __init__(self, model: FSRCNN) -> None:
        self.model = model
        self.index, self.reach = subpixel_index(model.deconv)
        self.scale = model.spec.scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        dc = self.model.deconv
        weight = subpixel_weight(dc.weight, self.index)
        if x.is_contiguous(memory_format=torch.channels_last):
            weight = weight.contiguous(memory_format=torch.channels_last)
        bias = dc.bias.repeat_interleave(self.scale * self.scale)
        out = F.conv2d(self.model.body(x), weight, bias, padding=self.reach)
        return F.pixel_shuffle(out, self.scale)


class FastFSRCNN(nn.Module):
    """Inference-only form of an FSRCNN: the same function, computed faster on CPU.

    * the 9x9 transposed convolution becomes a small Conv2d + ``pixel_shuffle``
      (:func:`subpixel_deconv`), which oneDNN runs several times faster;
    * every tensor is channels-last (NHWC), the layout oneDNN's kernels want,
      so no reorder happens between layers;
    * layers are called functionally on detached copies of the weights.

    It is a snapshot: weights are copied when it is built, so rebuild it after
    the source model changes.  Input and output are NCHW, as for :class:`FSRCNN`.
    """

    def __init__(self, model: FSRCNN, channels_last: bool = True) -> None:
        super().__init__()
        self.spec = model.spec
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        mf = self.memory_format
        convs = [model.feature[0], model.shrink[0], *model.mapping[0::2], model.expand[0]]
        prelus = [model.feature[1], model.shrink[1], *model.mapping[1::2], model.expand[1]]
        self.layers = [
            (c.weight.detach().clone().contiguous(memory_format=mf), c.bias.detach().clone(),
             c.padding, a.weight.detach().clone())
            for c, a in zip(convs, prelus, strict=True)
        ]
        weight, bias, pad = subpixel_deconv(model.deconv)
        self.up = (weight.contiguous(memory_format=mf), bias, pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        for weight, bias, padding, alpha in self.layers:
            x = F.prelu(F.conv2d(x, weight, bias, padding=padding), alpha)
        weight, bias, pad = self.up
        return F.pixel_shuffle(F.conv2d(x, weight, bias, padding=pad), self.spec.scale).contiguous()


class DeviceError(RuntimeError):
    """A device that was asked for but is not there."""


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` uses CUDA when present, else CPU; ``cpu``/``cuda`` force one."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was requested but CUDA is not available")
    return torch.device(device)


def save_model(model: FSRCNN, weights: Path, meta: ModelMeta) -> None:
    """Write ``<name>.pt`` (state_dict only, no pickled module) and ``<name>.json``."""
    weights = Path(weights)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = weights.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    tmp.replace(weights)
    metadata_path(weights).write_text(json.dumps(asdict(meta), indent=2, sort_keys=True) + "\n")


def load_model(
    weights: Path,
    scale: int | None = None,
    spec: ModelSpec | None = None,
    device: str | torch.device = "cpu",
) -> FSRCNN:
    """Load weights, refusing any whose architecture or scale differs from the request.

    :func:`check_weights` runs first, so a corrupt or foreign file gets the same
    clear :class:`WeightsError` here as in a torch-free Spark driver; so does a
    tensor holding NaN or infinity, which is refused naming the tensor.  The scale
    is the one the sidecar ``.json`` says.
    """
    weights = Path(weights)
    meta = check_weights(weights, scale)
    if spec is not None and (meta.d, meta.s, meta.m, meta.scale) != (
        spec.d, spec.s, spec.m, spec.scale,
    ):
        raise WeightsError(
            f"{weights.name} holds {meta.spec.arch} x{meta.scale}, "
            f"but {spec.arch} x{spec.scale} was requested"
        )
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = _model_of(state, meta, weights.name)
    dev = device if isinstance(device, torch.device) else pick_device(device)
    return model.to(dev).eval()


def _model_of(state: object, meta: ModelMeta, name: str) -> FSRCNN:
    """An FSRCNN holding ``state``, refused with a :class:`WeightsError` unless every tensor
    is there with its shape and every value is finite (NaN weights make a black image)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{name}: not a state_dict of tensors")
    for key, tensor in state.items():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise WeightsError(non_finite_message(name, key, bad))
    model = FSRCNN(meta.spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(
            f"{name}: tensors do not match {meta.spec.arch} x{meta.scale}: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    return model


def model_from_bytes(state_bytes: bytes, meta: ModelMeta, device: str | torch.device = "cpu") -> FSRCNN:
    """Rebuild a model from raw ``state_dict`` bytes (what Spark broadcasts to workers).

    Refused like :func:`load_model`: missing, extra or misshapen tensors, or any NaN or
    infinity, is a :class:`WeightsError` naming the tensor.  The scale is ``meta``'s.
    """
    import io

    state = torch.load(io.BytesIO(state_bytes), map_location="cpu", weights_only=True)
    model = _model_of(state, meta, f"weights for {meta.spec.arch} x{meta.scale}")
    dev = device if isinstance(device, torch.device) else pick_device(device)
    return model.to(dev).eval()


