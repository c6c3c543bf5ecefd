"""Weight-only int8 / int4 for Dia2: which projection gets which format, the module swap, and
converted (quantized) Dia2 checkpoints. The Dia2 model file (fastdia.models.dia2) never learns
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
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, FastDiaError
from .modules import (
    DEFAULT_GROUP_SIZE,
    GROUP_SIZES,
    _set,
    check_mode,
    linear_names,
    make_module,
)
from .store import (
    _QUANT_PARTS,
    FORMAT_VERSION,
    QUANT_KEY,
    _assign,
    _check_complete,
    _complete,
    _quantized_parts,
    _read_safetensors,
    module_from_stored,
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
    checkpoint layout (e.g. `dia2_load.iter_random_state`): each tensor is quantized as it
    arrives and dropped, so the peak holds the quantized model plus one float tensor."""
    from ..backends.cpu.memory import release_free_heap
    from ..models.dia2 import Dia2Model

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
        _assign(model, name, tensor.float() if _is_norm(name) else tensor.to(dtype))
        del tensor
    _check_complete(model, "quantized Dia2 build")
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
    from ..models.dia2 import Dia2Model

    with torch.device("meta"):
        names = set(linear_names(Dia2Model(cfg)))
    for name, tensor in tensors:
        module = name.removesuffix(".weight")
        fmt = plan_dia2(module, tensor.shape[1], mode, group_size) \
            if module in names and name.endswith(".weight") else None
        if fmt is None:
            yield name, tensor
        else:
            yield from _quantized_parts(module, fmt, tensor, group_size, query_split(module, cfg) or 0)


@torch.no_grad()
def load_quantized_dia2_dir(directory: Path, cfg, marker: Mapping, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A Dia2Model from a folder `convert_dia2` wrote, with no float copy of any quantized weight."""
    from ..models.dia2 import Dia2Model

    group_size = int(marker.get("group_size") or DEFAULT_GROUP_SIZE)
    path = Path(directory) / "model.safetensors"
    with torch.device("meta"):
        model = Dia2Model(cfg)
    names = set(linear_names(model))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    pending: dict[str, dict[str, torch.Tensor]] = {}
    try:
        for name, tensor in _read_safetensors(path):
            module, _, part = name.rpartition(".")
            if module in names and part in _QUANT_PARTS:
                pending.setdefault(module, {})[part] = tensor
                continue
            owner, _, block = module.rpartition(".")
            if owner in names and block in ("first", "rest") and part in _QUANT_PARTS:
                pending.setdefault(owner, {})[f"{block}.{part}"] = tensor
                continue
            if name not in expected:
                raise CheckpointError(f"{path}: unexpected tensor {name!r}")
            if tuple(tensor.shape) != expected[name]:
                raise CheckpointError(f"{path}: tensor {name!r} has shape {list(tensor.shape)}, "
                                      f"expected {list(expected[name])}")
            _assign(model, name, tensor.float() if _is_norm(name) else tensor.to(dtype))
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    for module in list(pending):
        parts = pending.pop(module)
        embedding = isinstance(model.get_submodule(module), nn.Embedding)
        if not _complete(parts) or (embedding and "scales" not in parts):
            raise CheckpointError(f"{path}: incomplete quantized tensor set for {module!r}")
        new = module_from_stored(parts, group_size, embedding=embedding, dtype=torch.float32 if embedding else dtype)
        got = (new.num_embeddings, new.embedding_dim) if embedding else (new.out_features, new.in_features)
        if got != expected[module + ".weight"]:
            raise CheckpointError(f"{path}: {module!r} holds a {got[0]}x{got[1]} weight, "
                                  f"expected {list(expected[module + '.weight'])}")
        _set(model, module, new)
    _check_complete(model, str(path))
    return model.eval().requires_grad_(False)


_TOKENIZER_FILES = ("added_tokens.json", "merges.txt", "special_tokens_map.json", "tokenizer.json",
                    "tokenizer_config.json", "vocab.json")
# A converted random preset still pairs with its own random codec (everything stays offline).
_PRESET_CODECS = {"dia2-tiny-random": "mimi-tiny-random", "dia2-2b-random": "mimi-random"}


def convert_dia2(source: str | Path, out_dir: str | Path, quantize: str | None = None,
                 group_size: int | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """Write a Dia2 model (preset, directory or hub id) to `out_dir` for fast loads.

    The folder holds config.json (the reference layout plus a `fastdia_quantization` marker with
    `family: "dia2"`), model.safetensors (int8/int4 weights in fastdia's stored format, see
    `quantize_dia2_state`; float tensors in `dtype`) and the tokenizer files (a preset's built-in
    tokenizer is saved as tokenizer.json). `Dia2.from_pretrained(out_dir)` loads it quantized.

    Returns:
        A summary: output path, mode, group size (int4), bytes written, seconds.
    """
    import time

    from safetensors.torch import save_file

    from ..checkpoints.dia2_load import _choose_files, iter_random_state, load_dir_state
    from ..checkpoints.hub import resolve_dir
    from ..config_dia2 import DIA2_PRESETS, load_dia2_config

    mode = check_mode(quantize)
    group = group_size or DEFAULT_GROUP_SIZE
    _check_group(group)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / "config.json").exists():
        raise FastDiaError(f"{out} exists and is not empty; choose a new directory")
    t0 = time.perf_counter()
    name = str(source)
    if name in DIA2_PRESETS:
        cfg = DIA2_PRESETS[name]
        raw = cfg.to_dict()
        raw["assets"]["mimi"] = _PRESET_CODECS[name]
        tensors: Iterable[tuple[str, torch.Tensor]] = iter_random_state(cfg, dtype=dtype)
        directory = None
    else:
        directory = resolve_dir(source, _choose_files, what="Dia2 model")
        if stored_dia2_quantization(directory / "config.json") is not None:
            raise FastDiaError(f"{directory} was written by fastdia convert already; convert the original")
        cfg = load_dia2_config(directory / "config.json")
        raw = json.loads((directory / "config.json").read_text())
        state = load_dir_state(directory, cfg, dtype)
        tensors = ((k, state.pop(k)) for k in sorted(state))
    marker = {"family": FAMILY, "format": FORMAT_VERSION, "mode": mode or "float",
              "group_size": group if mode == "int4" else None, "source": name}
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        stored = dict(quantize_dia2_state(tensors, cfg, mode, group)) if mode else dict(tensors)
    save_file({k: v.contiguous() for k, v in stored.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt", "fastdia": json.dumps(marker)})
    del stored
    if directory is None:
        from ..text_dia2 import builtin_tokenizer

        builtin_tokenizer()._tok.save(str(out / "tokenizer.json"))
    else:
        _copy_assets(directory, out, raw)
    raw[QUANT_KEY] = marker
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return {"out": str(out), "quantize": mode or "none", "group_size": group if mode == "int4" else None,
            "bytes": size, "seconds": time.perf_counter() - t0}


def _copy_assets(directory: Path, out: Path, raw: dict) -> None:
    """Tokenizer files next to the weights; asset paths relative to the source made absolute."""
    for f in _TOKENIZER_FILES:
        if (directory / f).is_file():
            shutil.copy2(directory / f, out / f)
    assets = raw.get("assets") if isinstance(raw.get("assets"), dict) else None
    for key in ("tokenizer", "mimi"):
        value = assets.get(key) if assets else None
        if value and not Path(value).is_absolute() and (directory / value).exists():
            if key == "tokenizer" and (out / "tokenizer.json").exists() and (directory / value).is_dir():
                assets[key] = None  # copied above: read from the converted folder itself
            else:
                assets[key] = str((directory / value).resolve())
