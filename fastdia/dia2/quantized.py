"""Weight-only int8 / int4 for Dia2: which projection gets which format, the module swap, and
converted (quantized) Dia2 checkpoints. The Dia2 model file (fastdia.dia2.model) never learns
about any of it; the modules and formats are Dia-1's (fastdia.quant.modules / formats / store).

The plan (`plan_dia2`), per part of the model:

* int8, per output channel, in both modes: attention keys, values and outputs of the decoder,
  the depformer's per-group `depformer_in` and `out_proj`, the decoder's text projections and the
  31 per-stage depformer heads `logits[s]`: like Dia-1, keys/values (read back from the cache by
  every later step), outputs and heads carry their error into everything downstream, so they
  keep 8 bits when "int4" is asked for.
* int4 in "int4" mode (int8 otherwise): the MLPs of both transformers (74% of the decoder's
  bytes, and the depformer's shared MLP is re-read by all 31 stages), the decoder's query
  projection and the query rows of the depformer's fused `in_proj` (a `RowSplitLinear`, as
  Dia-1's fused QKV).
* float: the decoder heads `action_head` (2 rows) and `cb0_head` (0.4% of the int8 bytes a step
  reads), kept at full precision since codebook 0 and the action steer everything after them;
  the activation and KV-cache dtype of the model is read from `cb0_head` too.
* int8 per row: every embedding table (decoder audio and text, the 31 depformer tables: 0.9 G
  values on the 2B model, 3.6 GB in float32, of which a step reads 64 rows). Memory, not speed.

Norm gains and activations stay float32; the CPU kernels quantize each activation row to int16
internally and compute rows independently, so a script's numbers do not depend on its batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, FastDiaError
from ..quant.modules import DEFAULT_GROUP_SIZE, GROUP_SIZES, _set, check_mode, linear_names, make_module
from ..quant.store import (
    FORMAT_VERSION,
    QUANT_KEY,
    assign,
    check_complete,
    collect_part,
    complete_parts,
    module_from_stored,
    quantized_parts,
    read_safetensors,
)

FAMILY = "dia2"


def _is_norm(name: str) -> bool:
    return name.endswith("norm.weight")


def query_split(name: str, cfg) -> int | None:
    """Rows of a fused depformer `in_proj` that are queries (the first of its [q; k; v] blocks)."""
    if ".self_attention.in_proj." in name:
        return cfg.depformer.n_head * cfg.depformer.head_dim
    return None


def plan_dia2(name: str, in_features: int, mode: str | None, group_size: int = DEFAULT_GROUP_SIZE) -> str | None:
    """The format of the Dia2Model module `name` (a Linear or an Embedding) under `mode`.

    Returns "int8", "int4", "int4-query" (query rows int4, keys and values int8),
    "int8-embedding" or None (keep it float). See the module docstring for why.
    """
    mode = check_mode(mode)
    if mode is None:
        return None
    if ".audio_embeds." in name or name.endswith("text_embed.embedding"):
        return "int8-embedding"
    if name in ("transformer.action_head", "transformer.cb0_head"):
        return None
    int4_ok = in_features % group_size == 0 and in_features % 64 == 0
    if mode == "int4" and int4_ok:
        if ".mlp." in name or name.endswith(".attn.q_proj"):
            return "int4"
        if ".self_attention.in_proj." in name:
            return "int4-query"
    return "int8"


def _module_for(fmt: str, name: str, weight: torch.Tensor, group_size: int, dtype: torch.dtype, cfg) -> nn.Module:
    return make_module(fmt, weight, group_size, dtype=dtype, split=query_split(name, cfg))


@torch.no_grad()
def quantize_dia2(model: nn.Module, mode: str | None, group_size: int = DEFAULT_GROUP_SIZE) -> nn.Module:
    """Swap a float Dia2Model's projections and tables for int8/int4 modules, in place, one at a
    time (each float weight is released once its replacement exists). Returns `model`."""
    mode = check_mode(mode)
    if mode is None:
        return model
    _check_group(group_size)
    for name in linear_names(model):
        module = model.get_submodule(name)
        weight = module.dense_weight() if hasattr(module, "dense_weight") else module.weight
        fmt = plan_dia2(name, weight.shape[1], mode, group_size)
        if fmt is None:
            continue
        dtype = torch.float32 if fmt == "int8-embedding" else weight.dtype
        _set(model, name, _module_for(fmt, name, weight, group_size, dtype, model.config))
        del weight
    return model


def _check_group(group_size: int) -> None:
    if group_size not in GROUP_SIZES:
        raise FastDiaError(f"int4 group size must be one of {GROUP_SIZES}, got {group_size}")


@torch.no_grad()
def build_quantized_dia2(cfg, tensors: Iterable[tuple[str, torch.Tensor]], mode: str, group_size: int,
                         dtype: torch.dtype = torch.float32) -> nn.Module:
    """A Dia2Model built straight into its quantized form from (name, float tensor) pairs in
    checkpoint layout (e.g. `checkpoint.iter_random_state`): each tensor is quantized as it
    arrives and dropped, so the peak holds the quantized model plus one float tensor."""
    from ..backends.cpu.memory import release_free_heap
    from .model import Dia2Model

    _check_group(group_size)
    with torch.device("meta"):
        model = Dia2Model(cfg)
    names = set(linear_names(model))
    for name, tensor in tensors:
        module = name.removesuffix(".weight")
        fmt = plan_dia2(module, tensor.shape[1], mode, group_size) \
            if module in names and name.endswith(".weight") else None
        if fmt is not None:
            out_dtype = torch.float32 if fmt == "int8-embedding" else dtype
            _set(model, module, _module_for(fmt, module, tensor, group_size, out_dtype, cfg))
            del tensor
            release_free_heap()
            continue
        assign(model, name, tensor.float() if _is_norm(name) else tensor.to(dtype))
        del tensor
    check_complete(model, "quantized Dia2 build")
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------
# Converted checkpoints (`fastdia convert` of a Dia2 model)


def stored_dia2_quantization(config_path: Path) -> dict | None:
    """The marker `convert_dia2` writes into config.json ({"format", "mode", "group_size",
    "family"}), or None for a checkpoint it did not write."""
    try:
        raw = json.loads(Path(config_path).read_text())
    except (OSError, ValueError):
        return None
    marker = raw.get(QUANT_KEY) if isinstance(raw, dict) else None
    if marker is None:
        return None
    if not isinstance(marker, dict) or marker.get("family") != FAMILY or marker.get("format") != FORMAT_VERSION \
            or marker.get("mode") not in ("int8", "int4", "float"):
        raise CheckpointError(f"{config_path}: unsupported fastdia checkpoint marker {marker!r}; "
                              "convert the original again with this version of fastdia")
    return marker


def quantize_dia2_state(tensors: Iterable[tuple[str, torch.Tensor]], cfg, mode: str,
                        group_size: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Checkpoint-layout float tensors -> the stored quantized ones: a module X planned int8
    becomes `X.qweight` + `X.scales`, int4 `X.qweight/tscale/rscale/offsets/oscale`, a split
    one the same under `X.first.` / `X.rest.`; the rest pass through (norms float32)."""
    from .model import Dia2Model

    with torch.device("meta"):
        names = set(linear_names(Dia2Model(cfg)))
    for name, tensor in tensors:
        module = name.removesuffix(".weight")
        fmt = plan_dia2(module, tensor.shape[1], mode, group_size) \
            if module in names and name.endswith(".weight") else None
        if fmt is None:
            yield name, tensor
        else:
            yield from quantized_parts(module, fmt, tensor, group_size, query_split(module, cfg) or 0)


@torch.no_grad()
def load_quantized_dia2_dir(directory: Path, cfg, marker: Mapping, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A Dia2Model from a folder `convert_dia2` wrote, with no float copy of any quantized weight."""
    from .model import Dia2Model

    group_size = int(marker.get("group_size") or DEFAULT_GROUP_SIZE)
    path = Path(directory) / "model.safetensors"
    with torch.device("meta"):
        model = Dia2Model(cfg)
    names = set(linear_names(model))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    pending: dict[str, dict[str, torch.Tensor]] = {}
    try:
        for name, tensor in read_safetensors(path):
            if collect_part(name, tensor, names, pending):
                continue
            if name not in expected:
                raise CheckpointError(f"{path}: unexpected tensor {name!r}")
            if tuple(tensor.shape) != expected[name]:
                raise CheckpointError(f"{path}: tensor {name!r} has shape {list(tensor.shape)}, "
                                      f"expected {list(expected[name])}")
            assign(model, name, tensor.float() if _is_norm(name) else tensor.to(dtype))
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    for module in list(pending):
        parts = pending.pop(module)
        embedding = isinstance(model.get_submodule(module), nn.Embedding)
        if not complete_parts(parts) or (embedding and "scales" not in parts):
            raise CheckpointError(f"{path}: incomplete quantized tensor set for {module!r}")
        new = module_from_stored(parts, group_size, embedding=embedding, dtype=torch.float32 if embedding else dtype)
        got = (new.num_embeddings, new.embedding_dim) if embedding else (new.out_features, new.in_features)
        if got != expected[module + ".weight"]:
            raise CheckpointError(f"{path}: {module!r} holds a {got[0]}x{got[1]} weight, "
                                  f"expected {list(expected[module + '.weight'])}")
        _set(model, module, new)
    check_complete(model, str(path))
    return model.eval().requires_grad_(False)


