"""Build a ready Dia2Model from a preset, a local directory or a hub id, strictly.

A Dia2 directory holds `config.json` (reference layout, fastdia.config_dia2) and one
`model.safetensors` (F32, reference parameter names, spec 3.8). The expected names and shapes come
from the config alone (the model built on the meta device); they are checked against the
safetensors header before any tensor is read, and any missing, unexpected or mis-shaped tensor is
named in a CheckpointError (the reference loads non-strictly and would silently keep random
weights, pitfall 16). The model is then built on meta and the tensors attached with `assign=True`.
Our parameter names are the checkpoint keys, so there is no renaming.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config_dia2 import DIA2_PRESET_SEED, DIA2_PRESETS, Dia2Config, load_dia2_config
from ..errors import CheckpointError
from ..models.dia2 import Dia2Model
from .hub import resolve_dir
from .strict import build_on_meta, shape_problems

WEIGHTS_FILE = "model.safetensors"
HUB_IDS = ("nari-labs/Dia2-1B", "nari-labs/Dia2-2B")
_TOKENIZER_FILES = (
    "added_tokens.json", "merges.txt", "special_tokens_map.json",
    "tokenizer.json", "tokenizer_config.json", "vocab.json",
)
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


@dataclass(frozen=True)
class LoadedDia2:
    model: Dia2Model
    config: Dia2Config
    source: str  # what was asked for
    directory: Path | None  # None for presets


def expected_shapes(cfg: Dia2Config) -> dict[str, tuple[int, ...]]:
    """Every checkpoint key of a model with `cfg` and its shape (meta build: free)."""
    with torch.device("meta"):
        model = Dia2Model(cfg)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def parameter_count(cfg: Dia2Config) -> int:
    return sum(_numel(s) for s in expected_shapes(cfg).values())


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for x in shape:
        n *= x
    return n


def read_safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) from a safetensors header, without reading any tensor data."""
    try:
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise ValueError("file shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", raw_len)
            if n > 100_000_000:
                raise ValueError(f"implausible header length {n}")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise CheckpointError(f"no {path.name} in {path.parent}") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: malformed safetensors header")
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            out[name] = (str(entry["dtype"]), tuple(int(x) for x in entry["shape"]))
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: malformed header entry for {name!r}") from None
    return out


def check_header(cfg: Dia2Config, header: dict[str, tuple[str, tuple[int, ...]]], where: str) -> None:
    """Raise a CheckpointError naming every missing, unexpected or mis-shaped tensor."""
    expected = expected_shapes(cfg)
    problems = shape_problems(expected, {k: shape for k, (_, shape) in header.items()})
    not_float = [f"{k} ({header[k][0]})" for k in sorted(set(expected) & set(header)) if header[k][0] not in _FLOAT_DTYPES]
    if not_float:
        problems.append(f"non-float tensor(s): {_some(not_float)}")
    if problems:
        raise CheckpointError(f"{where} does not match its config.json: " + "; ".join(problems))


def _some(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _is_norm(name: str) -> bool:
    return name.endswith("norm.weight")


def load_dir_state(directory: Path, cfg: Dia2Config, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The checked tensors of `directory/model.safetensors`; norm gains stay float32."""
    path = directory / WEIGHTS_FILE
    check_header(cfg, read_safetensors_header(path), str(path))
    from safetensors import safe_open

    state = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                t = f.get_tensor(name)
                state[name] = t.float() if _is_norm(name) else t.to(dtype)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path}: cannot read tensors ({type(exc).__name__}: {exc})") from None
    return state


def iter_random_state(
    cfg: Dia2Config, seed: int = DIA2_PRESET_SEED, dtype: torch.dtype = torch.float32
) -> Iterator[tuple[str, torch.Tensor]]:
    """Seeded random weights, reproducible on any machine (CPU generator), one tensor at a time.

    Same recipe as the golden-fixture model: embeddings N(0, 1), linear `[out, in]` weights
    N(0, 1/in), RMSNorm gains U(0.5, 1.5), QK-norm gains U(0.4, 0.9). With attention scale 1.0
    the small QK-norm gains keep the scores O(1), so greedy picks vary and both actions occur.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, shape in sorted(expected_shapes(cfg).items()):
        if name.endswith(("q_norm.weight", "k_norm.weight")):
            t = 0.4 + 0.5 * torch.rand(shape, generator=gen)
            yield name, t
        elif _is_norm(name):
            yield name, 0.5 + torch.rand(shape, generator=gen)
        elif name.endswith("text_embed.embedding.weight") or ".audio_embeds." in name:
            yield name, torch.randn(shape, generator=gen).to(dtype)
        else:
            yield name, torch.randn(shape, generator=gen).mul_(shape[1] ** -0.5).to(dtype)


def random_state(cfg: Dia2Config, seed: int = DIA2_PRESET_SEED, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return dict(iter_random_state(cfg, seed, dtype))


def build_model(cfg: Dia2Config, state: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> Dia2Model:
    """Build on meta, attach `state` (strict, assign). `state` must hold exactly the checkpoint keys."""
    # check_header ran already for files; build_on_meta still guards presets and callers.
    return build_on_meta(lambda: Dia2Model(cfg), state, device)


def _choose_files(files: Sequence[str]) -> list[str]:
    """From a Dia2 hub repository's files: config, weights and tokenizer files."""
    names = set(files)
    if "config.json" not in names:
        raise CheckpointError("the repository has no config.json; is it a Dia2 model?")
    if WEIGHTS_FILE not in names:
        raise CheckpointError(f"the repository has no {WEIGHTS_FILE}")
    return ["config.json", WEIGHTS_FILE, *(f for f in _TOKENIZER_FILES if f in names)]


def load_dia2(
    source: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = DIA2_PRESET_SEED,
    quantize: str | None = None,
    group_size: int | None = None,
    optimize: bool = True,
) -> LoadedDia2:
    """Resolve `source` (a Dia2 preset name, a local directory, or a hub id such as
    `nari-labs/Dia2-2B`) and return the model on `device` with weights in `dtype`
    (RMSNorm gains stay float32; logits are always float32).

    Args:
        quantize: None, "int8" or "int4": weight-only quantization (fastdia.quant.dia2), built
            tensor by tensor (never a float copy of the whole model). A folder written by
            `fastdia convert --quantize` loads quantized whatever this says.
        group_size: int4 group size (default 32).
        optimize: on CPU, swap the remaining float projections for fastdia's GEMV modules
            (fastdia.backends.cpu.dia2); False keeps plain torch (the reference's arithmetic).
    """
    from ..quant import dia2 as quant_dia2
    from ..quant.modules import DEFAULT_GROUP_SIZE, check_mode

    device = torch.device(device)
    quantize = check_mode(quantize)
    group = group_size or DEFAULT_GROUP_SIZE
    if quantize is not None and device.type != "cpu":
        from ..errors import FastDiaError

        raise FastDiaError("Dia2 weight quantization runs on CPU only; use dtype='bfloat16' on CUDA")
    if device.type == "cpu":
        from ..backends.cpu.memory import limit_heap_fragmentation

        limit_heap_fragmentation()
    name = str(source)
    directory = None
    if name in DIA2_PRESETS:
        cfg = DIA2_PRESETS[name]
        if quantize is not None:
            model = quant_dia2.build_quantized_dia2(cfg, iter_random_state(cfg, seed, dtype), quantize, group, dtype)
        else:
            model = build_model(cfg, random_state(cfg, seed, dtype), device)
    else:
        directory = resolve_dir(source, _choose_files, what="Dia2 model")
        cfg = load_dia2_config(directory / "config.json")
        stored = quant_dia2.stored_dia2_quantization(directory / "config.json")
        if stored is not None and stored["mode"] != "float":
            model = quant_dia2.load_quantized_dia2_dir(directory, cfg, stored, dtype)
        else:
            state = load_dir_state(directory, cfg, dtype)
            if quantize is not None:
                model = quant_dia2.build_quantized_dia2(cfg, ((k, state.pop(k)) for k in sorted(state)), quantize,
                                                        group, dtype)
            else:
                model = build_model(cfg, state, device)
            del state
    if device.type == "cpu":
        from ..backends.cpu.memory import release_free_heap

        if optimize:
            from ..backends.cpu.dia2 import accelerate_dia2, dtype_sources
            from ..backends.cpu.packed import weights_only_bf16

            accelerate_dia2(model)
            from ..quant.modules import Int4Linear, Int8Linear

            quantized = any(isinstance(m, (Int8Linear, Int4Linear)) for m in model.modules())
            if dtype == torch.bfloat16 and not quantized:  # bfloat16 weights, the fused float32 step
                weights_only_bf16(model, float32_modules=dtype_sources())
        release_free_heap()
    return LoadedDia2(model, cfg, name, directory)


def source_quantization(source: str | Path) -> str | None:
    """"int8"/"int4" for a local folder written by `fastdia convert --quantize`, else None."""
    from ..quant.dia2 import stored_dia2_quantization

    config = Path(str(source)) / "config.json"
    if str(source) in DIA2_PRESETS or not config.is_file():
        return None
    marker = stored_dia2_quantization(config)
    return marker["mode"] if marker and marker["mode"] != "float" else None


def source_parameters(source: str | Path) -> int | None:
    """Parameter count of a preset or a local Dia2 folder (from its config alone), else None."""
    name = str(source)
    if name in DIA2_PRESETS:
        return parameter_count(DIA2_PRESETS[name])
    config = Path(name) / "config.json"
    if config.is_file():
        try:
            return parameter_count(load_dia2_config(config))
        except CheckpointError:
            return None
    return None
