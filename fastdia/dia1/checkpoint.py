"""Build a ready DiaModel from a preset, a local directory or a hub id.

Modules are created on the meta device (no memory, no init), then the converted tensors are
attached with `assign=True`, so loading costs one pass over the weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..backends.cpu.memory import limit_heap_fragmentation, release_free_heap
from .config import PRESET_SEED, PRESETS, DiaConfig, load_config
from ..errors import CheckpointError, FastDiaError
from .model import DiaModel
from .layouts import keeps_fp32, load_dir_state
from ..hub import resolve_dir
from ..quant.modules import DEFAULT_GROUP_SIZE, GROUP_SIZES


@dataclass(frozen=True)
class LoadedModel:
    model: DiaModel
    config: DiaConfig
    layout: str  # "nari", "transformers", "mixed" or "preset"
    source: str  # what was asked for
    directory: Path | None


def _choose_files(files) -> list[str]:
    """From a hub repository's files, the config and one set of weights (prefer safetensors)."""
    names = list(files)
    if "config.json" not in names:
        raise CheckpointError("the repository has no config.json; is it a Dia model?")
    safetensors = [f for f in names if f.endswith(".safetensors") and "/" not in f]
    if safetensors:
        return ["config.json", *safetensors]
    if "dia-v0_1.pth" in names:
        return ["config.json", "dia-v0_1.pth"]
    pth = [f for f in names if f.endswith(".pth") and "/" not in f]
    if pth:
        return ["config.json", pth[0]]
    raise CheckpointError("the repository has no model.safetensors or .pth weights")


def iter_random_state(
    cfg: DiaConfig, seed: int = PRESET_SEED, dtype: torch.dtype = torch.float32
) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of `random_state`, one at a time (so a quantized preset never holds them all)."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in DiaModel(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    for name in sorted(shapes):
        shape = shapes[name]
        if keeps_fp32(name):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            yield name, t.float()
            continue
        fan_in = shape[1] if len(shape) == 2 and "embedding" not in name else 1
        std = fan_in ** -0.5
        t = torch.randn(shape, generator=gen).mul_(std)
        _temper_attention(cfg, name, t)
        yield name, t if dtype == torch.float32 else t.to(dtype)
        del t  # before the next one exists: a consumer that dropped it holds one float tensor


def _temper_attention(cfg: DiaConfig, name: str, w: torch.Tensor) -> None:
    """Scale random query/key rows by head_dim**-0.25 each, in place.

    Dia's attention has no 1/sqrt(head_dim) (spec 1.4): trained weights absorb it. Plain
    fan-in-scaled random q and k would give scores of std sqrt(head_dim) (~11 at full size), an
    argmax-like softmax whose choices flip on 1e-3 weight changes, a chaotic model on which no
    precision or quantization comparison means anything. This makes scores O(1), as trained.
    """
    e, d = cfg.encoder, cfg.decoder
    if name.endswith("attn.qkv.weight"):
        enc = name.startswith("encoder.")
        n_head, n_kv, hd = (e.n_head, e.n_kv_head, e.head_dim) if enc else (d.n_head, d.n_kv_head, d.head_dim)
        w[: (n_head + n_kv) * hd].mul_(hd ** -0.25)
    elif name.endswith("cross_attn.q.weight"):
        w.mul_(d.cross_head_dim ** -0.25)
    elif name.endswith("cross_attn.kv.weight"):
        w[: d.cross_n_kv_head * d.cross_head_dim].mul_(d.cross_head_dim ** -0.25)


def random_state(cfg: DiaConfig, seed: int = PRESET_SEED, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights in our layout, reproducible from `seed` on any machine (CPU generator).

    Scaled so activations stay O(1) and logits have real spread: a preset's greedy output then
    varies with the text instead of sitting on near-ties.
    """
    return dict(iter_random_state(cfg, seed, dtype))


def parameter_count(cfg: DiaConfig) -> int:
    """Parameters of a DiaModel with `cfg` (built on the meta device: free)."""
    with torch.device("meta"):
        return sum(p.numel() for p in DiaModel(cfg).parameters())


def source_parameters(source: str | Path) -> int | None:
    """Parameter count of a preset or a local model directory, without loading weights; else None."""
    name = str(source)
    if name in PRESETS:
        return parameter_count(PRESETS[name])
    path = Path(source)
    if (path / "config.json").is_file():
        try:
            return parameter_count(load_config(path / "config.json"))
        except CheckpointError:
            return None
    return None


def source_quantization(source: str | Path) -> str | None:
    """"int8"/"int4" for a local checkpoint written by `fastdia convert --quantize`, else None.

    Callers resolving dtype "auto" pass it on, so a converted quantized checkpoint gets the same
    dtype as quantizing at load time.
    """
    from .quantized import stored_quantization

    config = Path(str(source)) / "config.json"
    if str(source) in PRESETS or not config.is_file():
        return None
    marker = stored_quantization(config)
    return marker["mode"] if marker and marker["mode"] != "float" else None


def build_model(cfg: DiaConfig, state: dict[str, torch.Tensor], device: torch.device) -> DiaModel:
    with torch.device("meta"):
        model = DiaModel(cfg)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # our own conversion is strict already; this guards our layout
        raise CheckpointError(f"internal layout mismatch: {exc}") from None
    return model.to(device).eval().requires_grad_(False)


def load_model(
    source: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    quantize: str | None = None,
    group_size: int | None = None,
    optimize: bool = True,
) -> LoadedModel:
    """Resolve `source` (preset, directory, hub id) and return the model on `device` in `dtype`.

    Args:
        quantize: None, "int8" or "int4": build the model with weight-only quantized projections
            (fastdia.quant.modules) directly, one tensor at a time, never holding a float copy of the
            whole model where the source allows it (presets; checkpoints saved by
            `fastdia convert` are quantized already and load as they are).
        group_size: int4 group size (default fastdia.quant.modules.DEFAULT_GROUP_SIZE).
        optimize: on CPU, put the remaining float projections into oneDNN's packed layout
            (fastdia.backends.cpu.packed), the fast path for 2-row decode matmuls.
    """
    from ..quant import modules as quant
    from . import quantized as quant_store

    if device.type == "cpu":
        limit_heap_fragmentation()
    quantize = quant.check_mode(quantize)
    group = group_size or quant.DEFAULT_GROUP_SIZE
    name = str(source)
    if name in PRESETS:
        cfg = PRESETS[name]
        if quantize is not None:
            model = quant_store.build_quantized(cfg, iter_random_state(cfg, dtype=dtype), quantize, group, dtype)
        else:
            state = random_state(cfg, dtype=dtype)
            model = build_model(cfg, state, device)
            del state  # the model holds the only references now, so packing frees as it goes
        loaded = LoadedModel(model, cfg, "preset", name, None)
    else:
        directory = resolve_dir(source, _choose_files, what="model")
        cfg = load_config(directory / "config.json")
        stored = quant_store.stored_quantization(directory / "config.json")
        if stored is not None:
            model = quant_store.load_quantized_dir(directory, cfg, stored, dtype)
            layout = "fastdia-" + stored["mode"]
            if quantize is not None and stored["mode"] == "float":
                quant.quantize_model(model, quantize, group)
        else:
            state, layout = load_dir_state(directory, cfg, dtype)
            if quantize is not None:
                model = quant_store.build_quantized(cfg, _drain(state), quantize, group, dtype)
            else:
                model = build_model(cfg, state, device)
            del state
        loaded = LoadedModel(model, cfg, layout, name, directory)
    model = loaded.model.to(device).eval().requires_grad_(False)
    if optimize and device.type == "cpu":
        from ..backends.cpu.packed import pack_linears, weights_only_bf16

        pack_linears(model)
        if dtype == torch.bfloat16 and quantize is None:
            weights_only_bf16(model)
    if device.type == "cpu":
        release_free_heap()
    return loaded


def _drain(state: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield and forget the entries of `state`, so each float tensor can be freed once used."""
    for name in sorted(state):
        yield name, state.pop(name)


def convert_dia1(source: str | Path, out_dir: str | Path, mode: str | None, group_size: int | None,
                 dtype: torch.dtype) -> dict:
    """`fastdia.loader.convert` for a Dia-1 source (preset, directory or hub id): its tensors in our
    fused layout (int8/int4 as `mode` says) written to `out_dir`. Returns the summary."""
    from .quantized import save_converted, stored_quantization

    group = group_size or DEFAULT_GROUP_SIZE
    if group not in GROUP_SIZES:
        raise FastDiaError(f"int4 group size must be one of {GROUP_SIZES}, got {group}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not (out / "config.json").exists():
            raise FastDiaError(f"{out} exists and is not empty; choose a new directory")
    t0 = time.perf_counter()
    name = str(source)
    if name in PRESETS:
        cfg = PRESETS[name]
        tensors = iter_random_state(cfg, dtype=dtype)
    else:
        directory = resolve_dir(source, _choose_files, what="model")
        cfg = load_config(directory / "config.json")
        if stored_quantization(directory / "config.json") is not None:
            raise FastDiaError(f"{directory} was written by fastdia convert already; convert the original")
        state, _ = load_dir_state(directory, cfg, dtype)
        tensors = _drain(state)
    with torch.no_grad():
        save_converted(tensors, cfg, out, mode, group)
    size = sum(f.stat().st_size for f in out.iterdir())
    return {"out": str(out), "quantize": mode or "none", "group_size": group if mode == "int4" else None,
            "bytes": size, "seconds": time.perf_counter() - t0}
