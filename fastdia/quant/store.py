"""Quantized models from tensors and to/from disk: the state-dict transform `fastdia convert`
saves, building a model straight into its quantized form (never a float copy of the whole
model), and loading a converted checkpoint without any float weight.

The formats themselves are in fastdia.quant.formats, the modules in fastdia.quant.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping

import torch
from torch import nn

from .formats import quantize_int4, quantize_int8
from .modules import (
    DEFAULT_GROUP_SIZE,
    MODES,
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    RowSplitLinear,
    _set,
    check_mode,
    linear_names,
    make_module,
    plan,
    query_rows,
)

# --------------------------------------------------------------------------------------------
# State-dict transform (convert) and rebuilding modules from it (load)

QUANT_KEY = "fastdia_quantization"
# 2: int4 as qweight/tscale/rscale/offsets (fastdia's kernel format), offsets float16.
# 3: int4 offsets int8 + oscale per row, and cross-attention queries in int4 too. Int4 checkpoints
# of an older format must be converted again; int8 and float ones of any format are unchanged.
FORMAT_VERSION = 3
_INT4_FORMATS = (FORMAT_VERSION,)
_OTHER_FORMATS = (1, 2, FORMAT_VERSION)
_INT4_PARTS = ("qweight", "tscale", "rscale", "offsets", "oscale")
_QUANT_PARTS = ("scales",) + _INT4_PARTS


def _quantized_parts(prefix: str, fmt: str, tensor: torch.Tensor, group_size: int,
                     split: int) -> Iterator[tuple[str, torch.Tensor]]:
    if fmt in ("int8", "int8-embedding"):
        q, s = quantize_int8(tensor)
        yield f"{prefix}.qweight", q
        yield f"{prefix}.scales", s
    elif fmt == "int4":
        for part, value in zip(_INT4_PARTS, quantize_int4(tensor, group_size)):
            yield f"{prefix}.{part}", value
    else:  # "int4-query": the row blocks of a RowSplitLinear
        yield from _quantized_parts(f"{prefix}.first", "int4", tensor[:split], group_size, split)
        yield from _quantized_parts(f"{prefix}.rest", "int8", tensor[split:], group_size, split)


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
            yield from _quantized_parts(module, fmt, tensor, group_size, split)
        elif fmt == "bf16":
            yield name, tensor.to(torch.bfloat16)
        else:
            yield name, tensor


def _row_blocks(parts: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]] | None:
    """The `first.`/`rest.` parts of a split module (`RowSplitLinear`) as two part dicts, else None."""
    if not any(key.startswith(("first.", "rest.")) for key in parts):
        return None
    return [{k.split(".", 1)[1]: v for k, v in parts.items() if k.startswith(which + ".")}
            for which in ("first", "rest")]


def module_from_stored(parts: Mapping[str, torch.Tensor], group_size: int, embedding: bool = False,
                       dtype: torch.dtype = torch.float32) -> nn.Module:
    """Rebuild one quantized module from its stored tensors (int8: `qweight`, `scales`; int4:
    the parts of `_INT4_PARTS`; a split one: the same prefixed `first.` and `rest.`)."""
    blocks = _row_blocks(parts)
    if blocks is not None:
        return RowSplitLinear(*(module_from_stored(b, group_size) for b in blocks))
    q = parts["qweight"]
    if embedding:
        return Int8Embedding(q, parts["scales"], dtype=dtype)
    if "tscale" in parts:
        return Int4Linear.from_stored(*(parts[p] for p in _INT4_PARTS), group_size)
    return Int8Linear.from_stored(q, parts["scales"])


# --------------------------------------------------------------------------------------------
# Building a model straight into its quantized form (no float copy of the whole model)


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    setattr(owner, attr, nn.Parameter(tensor, requires_grad=False))


def _check_complete(model: nn.Module, where: str) -> None:
    from ..errors import CheckpointError

    missing = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if missing:
        raise CheckpointError(f"{where}: missing tensor {missing[0]!r}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


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
    from ..checkpoints.dia1_layouts import keeps_fp32
    from ..models.dia1 import DiaModel

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
            _assign(model, name, tensor.float() if keeps_fp32(name) else tensor.to(dtype))
        del tensor
    _check_complete(model, "quantized build")
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
    readable = _INT4_FORMATS if isinstance(marker, dict) and marker.get("mode") == "int4" else _OTHER_FORMATS
    if not isinstance(marker, dict) or marker.get("format") not in readable \
            or marker.get("mode") not in MODES + ("float",):
        raise CheckpointError(f"{config_path}: unsupported fastdia checkpoint marker {marker!r}; "
                              f"convert it again with this version of fastdia")
    return marker


_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I8": torch.int8,
              "U8": torch.uint8, "I32": torch.int32, "I64": torch.int64}


def _read_safetensors(path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) from a safetensors file, each read into its own aligned CPU tensor.

    Plain reads instead of safetensors' memory map: mapped file pages count in the process's
    RSS on top of the tensors made from them (measured: int8 1.6B 4.2 GB peak with the map,
    about the model's size with reads), and the kernels need 64-byte aligned data anyway.
    """
    import json
    import struct

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                         key=lambda kv: kv[1]["data_offsets"][0])
        for name, info in entries:
            dtype = _ST_DTYPES[info["dtype"]]
            start, end = info["data_offsets"]
            tensor = torch.empty(info["shape"], dtype=dtype)
            raw = tensor.view(-1).view(torch.uint8) if tensor.numel() else tensor.view(torch.uint8)
            if end - start != raw.numel():
                raise ValueError(f"tensor {name!r}: {end - start} bytes for {raw.numel()}")
            f.seek(base + start)
            if f.readinto(memoryview(raw.numpy())) != raw.numel():
                raise ValueError(f"tensor {name!r} is truncated")
            yield name, tensor


def _complete(parts: Mapping[str, torch.Tensor]) -> bool:
    blocks = _row_blocks(parts)
    if blocks is not None:
        return all(_complete(b) for b in blocks)
    return {"qweight", "scales"} <= parts.keys() or set(_INT4_PARTS) <= parts.keys()


@torch.no_grad()
def load_quantized_dir(directory, cfg, marker: Mapping, dtype: torch.dtype) -> nn.Module:
    """Build a DiaModel from a checkpoint saved by `save_converted`, without any float weight."""
    from ..checkpoints.dia1_layouts import keeps_fp32
    from ..errors import CheckpointError
    from ..models.dia1 import DiaModel

    group_size = int(marker.get("group_size", DEFAULT_GROUP_SIZE))
    path = directory / "model.safetensors"
    with torch.device("meta"):
        model = DiaModel(cfg)
    linear = set(linear_names(model))
    expected = dict(model.state_dict())
    pending: dict[str, dict[str, torch.Tensor]] = {}
    try:
        tensors = _read_safetensors(path)
        first = next(tensors, None)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if first is not None:
        import itertools

        tensors = itertools.chain([first], tensors)
        for name, tensor in tensors:
            module, _, part = name.rpartition(".")
            if module in linear and part in _QUANT_PARTS:
                pending.setdefault(module, {})[part] = tensor
                continue
            owner, _, block = module.rpartition(".")
            if owner in linear and block in ("first", "rest") and part in _QUANT_PARTS:
                pending.setdefault(owner, {})[f"{block}.{part}"] = tensor
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
            _assign(model, name, tensor.float() if keeps_fp32(name) else tensor.to(dtype))
    for module in list(pending):
        parts = pending.pop(module)  # freed as soon as its module exists (tiling copies)
        if not _complete(parts):
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
    _check_complete(model, str(path))
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

    from ..models.dia1 import DiaModel

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
