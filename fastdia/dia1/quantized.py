"""Quantized models from tensors and to/from disk: the state-dict transform `fastdia convert`
saves, building a model straight into its quantized form (never a float copy of the whole
model), and loading a converted checkpoint without any float weight.

The formats themselves are in fastdia.quant.formats, the modules in fastdia.quant.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping

import torch
from torch import nn

from ..quant.modules import (
    DEFAULT_GROUP_SIZE,
    MODES,
    _set,
    check_mode,
    linear_names,
    make_module,
    plan,
    query_rows,
)
from ..quant.store import (
    FORMAT_VERSION,
    INT4_FORMATS,
    OTHER_FORMATS,
    QUANT_KEY,
    assign,
    check_complete,
    collect_part,
    complete_parts,
    module_from_stored,
    quantized_parts,
    read_safetensors,
)

# --------------------------------------------------------------------------------------------
# State-dict transform (convert) and rebuilding modules from it (load)


def quantize_state_dict(
    tensors: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor],
    linear: set[str],
    mode: str,
    group_size: int,
    cfg,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Our float state dict -> the stored quantized one, tensor by tensor.

    A linear `X.weight` (X in `linear`) becomes `X.qweight` + `X.scales` (int8) or
    `X.qweight` + `X.tscale` + `X.rscale` + `X.offsets` + `X.oscale` (int4), the same under
    `X.first.` and `X.rest.` for a split one ("int4-query", see `plan`), or stays `X.weight` in
    bfloat16; everything else passes through unchanged.
    """
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    split = query_rows(cfg)
    for name, tensor in items:
        module = name.removesuffix(".weight")
        if module not in linear or not name.endswith(".weight"):
            yield name, tensor
            continue
        fmt = plan(module, tensor.shape[1], mode, group_size)
        if fmt in ("int8", "int8-embedding", "int4", "int4-query"):
            yield from quantized_parts(module, fmt, tensor, group_size, split)
        elif fmt == "bf16":
            yield name, tensor.to(torch.bfloat16)
        else:
            yield name, tensor


# --------------------------------------------------------------------------------------------
# Building a model straight into its quantized form (no float copy of the whole model)


@torch.no_grad()
def build_quantized(cfg, tensors: Iterable[tuple[str, torch.Tensor]], mode: str, group_size: int,
                    dtype: torch.dtype) -> nn.Module:
    """A DiaModel whose projections are quantized as each float tensor arrives.

    Args:
        cfg: the DiaConfig.
        tensors: (name, float tensor) in our layout, e.g. `fastdia.loading.iter_random_state`;
            each is dropped once used, so the peak holds one float tensor, not the model.
        mode: "int8" or "int4".
        group_size: int4 group size.
        dtype: dtype of the tensors that stay float (norm gains stay float32).
    """
    from ..backends.cpu.memory import release_free_heap
    from .layouts import keeps_fp32
    from .model import DiaModel

    with torch.device("meta"):
        model = DiaModel(cfg)
    linear = set(linear_names(model))
    for name, tensor in tensors:
        module = name.removesuffix(".weight")
        fmt = plan(module, tensor.shape[1], mode, group_size) if module in linear and name.endswith(".weight") \
            else None
        if fmt is not None:
            _set(model, module, make_module(fmt, tensor, group_size, dtype=dtype, split=query_rows(cfg)))
            del tensor
            release_free_heap()  # the float weight and the quantizer's blocks: keep the peak low
            continue
        else:
            assign(model, name, tensor.float() if keeps_fp32(name) else tensor.to(dtype))
        del tensor
    check_complete(model, "quantized build")
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------
# Quantized checkpoints (`fastdia convert`)


def stored_quantization(config_path) -> dict | None:
    """The layout marker of a config.json written by `fastdia convert` (None for other checkpoints).

    Returns {"format", "mode", "group_size"} with mode "float", "int8" or "int4".
    """
    import json

    from ..errors import CheckpointError

    try:
        raw = json.loads(open(config_path).read())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("fastdia_layout") != "fused":
        return None
    marker = raw.get(QUANT_KEY) or {"format": FORMAT_VERSION, "mode": "float"}
    readable = INT4_FORMATS if isinstance(marker, dict) and marker.get("mode") == "int4" else OTHER_FORMATS
    if not isinstance(marker, dict) or marker.get("format") not in readable \
            or marker.get("mode") not in MODES + ("float",):
        raise CheckpointError(f"{config_path}: unsupported fastdia checkpoint marker {marker!r}; "
                              f"convert it again with this version of fastdia")
    return marker


@torch.no_grad()
def load_quantized_dir(directory, cfg, marker: Mapping, dtype: torch.dtype) -> nn.Module:
    """Build a DiaModel from a checkpoint saved by `save_converted`, without any float weight."""
    from .layouts import keeps_fp32
    from ..errors import CheckpointError
    from .model import DiaModel

    group_size = int(marker.get("group_size", DEFAULT_GROUP_SIZE))
    path = directory / "model.safetensors"
    with torch.device("meta"):
        model = DiaModel(cfg)
    linear = set(linear_names(model))
    expected = dict(model.state_dict())
    pending: dict[str, dict[str, torch.Tensor]] = {}
    try:
        tensors = read_safetensors(path)
        first = next(tensors, None)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if first is not None:
        import itertools

        tensors = itertools.chain([first], tensors)
        for name, tensor in tensors:
            if collect_part(name, tensor, linear, pending):
                continue
            if name not in expected:
                raise CheckpointError(f"{path}: unexpected tensor {name!r}")
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise CheckpointError(f"{path}: tensor {name!r} has shape {list(tensor.shape)}, "
                                      f"expected {list(expected[name].shape)}")
            owner = name.removesuffix(".weight")
            if owner in linear and tensor.dtype == torch.bfloat16 and dtype != tensor.dtype \
                    and not isinstance(model.get_submodule(owner), nn.Embedding):
                # Stored in bfloat16 on purpose (see `plan`): keep it so, compute in the model dtype.
                _set(model, name.removesuffix(".weight"), make_module("bf16", tensor, group_size))
                continue
            assign(model, name, tensor.float() if keeps_fp32(name) else tensor.to(dtype))
    for module in list(pending):
        parts = pending.pop(module)  # freed as soon as its module exists (tiling copies)
        if not complete_parts(parts):
            raise CheckpointError(f"{path}: incomplete quantized tensor set for {module!r}")
        embedding = isinstance(model.get_submodule(module), nn.Embedding)
        if embedding and "scales" not in parts:
            raise CheckpointError(f"{path}: incomplete quantized tensor set for {module!r}")
        new = module_from_stored(parts, group_size, embedding=embedding, dtype=dtype)
        got = (new.num_embeddings, new.embedding_dim) if embedding else (new.out_features, new.in_features)
        want = expected[module + ".weight"].shape
        if got != tuple(want):
            raise CheckpointError(f"{path}: {module!r} holds a {got[0]}x{got[1]} weight, "
                                  f"expected {want[0]}x{want[1]}")
        _set(model, module, new)
    check_complete(model, str(path))
    return model.eval().requires_grad_(False)


def save_converted(state: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]], cfg, out_dir,
                   mode: str | None, group_size: int = DEFAULT_GROUP_SIZE) -> dict:
    """Write `state` (our float layout) to `out_dir` as config.json + model.safetensors.

    With `mode` the linear weights are stored quantized (`quantize_state_dict`) and config.json
    carries a `fastdia_quantization` marker; without, the float tensors are stored in our fused
    layout. Returns the marker (or {}).
    """
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from .model import DiaModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mode = check_mode(mode)
    if mode is None:
        tensors = dict(state.items() if isinstance(state, Mapping) else state)
        marker = {}
    else:
        with torch.device("meta"):
            linear = set(linear_names(DiaModel(cfg)))
        tensors = dict(quantize_state_dict(state, linear, mode, group_size, cfg))
        marker = {"format": FORMAT_VERSION, "mode": mode, "group_size": group_size}
    raw = cfg.to_transformers_dict()
    raw["fastdia_layout"] = "fused"
    if marker:
        raw[QUANT_KEY] = marker
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt", "fastdia": json.dumps(marker or {"mode": "float"})})
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    return marker
