"""Build a ready Dia2Model from a preset, a local directory or a hub id, strictly.

A Dia2 directory holds `config.json` (reference layout, fastdia.dia2.config) and one
`model.safetensors` (F32, reference parameter names, spec 3.8). The expected names and shapes come
from the config alone (the model built on the meta device); they are checked against the
safetensors header before any tensor is read, and any missing, unexpected or mis-shaped tensor is
named in a CheckpointError (the reference loads non-strictly and would silently keep random
weights, pitfall 16). The model is then built on meta and the tensors attached with `assign=True`.
Our parameter names are the checkpoint keys, so there is no renaming.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, FastDiaError
from ..hub import build_on_meta, resolve_dir, shape_problems
from ..quant.modules import DEFAULT_GROUP_SIZE, check_mode
from .config import DEFAULT_CODEC, DIA2_PRESET_SEED, DIA2_PRESETS, PRESET_CODECS, Dia2Config, load_dia2_config
from .model import Dia2Model

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
        quantize: None, "int8" or "int4": weight-only quantization (fastdia.dia2.quantized), built
            tensor by tensor (never a float copy of the whole model). A folder written by
            `fastdia convert --quantize` loads quantized whatever this says.
        group_size: int4 group size (default 32).
        optimize: on CPU, swap the remaining float projections for fastdia's GEMV modules
            (fastdia.backends.cpu.dia2_linears); False keeps plain torch (the reference's arithmetic).
    """
    from . import quantized as quant_dia2
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
            from ..backends.cpu.dia2_linears import accelerate_dia2, dtype_sources
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
    from .quantized import stored_dia2_quantization

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

    from .quantized import FAMILY, FORMAT_VERSION, QUANT_KEY, _check_group, quantize_dia2_state, stored_dia2_quantization

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
        raw["assets"]["mimi"] = PRESET_CODECS[name]
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
        from .text import builtin_tokenizer

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


def asset(loaded: LoadedDia2, rel: str | None) -> str | None:
    """An `assets` entry of a folder's config.json: relative to the folder where it exists there."""
    if not rel:
        return None
    path = (loaded.directory / rel) if not Path(rel).is_absolute() else Path(rel)
    return str(path) if path.exists() else rel


def codec_source(loaded: LoadedDia2, codec: str | None = None) -> str:
    """The Mimi codec a loaded Dia2 pairs with: `codec` if given, a preset's own random one, the
    folder's `assets.mimi`, else kyutai/mimi."""
    if codec:
        return codec
    if loaded.directory is None:
        return PRESET_CODECS.get(loaded.source, "mimi-tiny-random")
    return asset(loaded, loaded.config.assets.mimi) or DEFAULT_CODEC


def tokenizer_folder(loaded: LoadedDia2) -> Path | None:
    """Where a folder's tokenizer files are (its `assets.tokenizer`, else the folder); None for presets."""
    if loaded.directory is None:
        return None
    folder = Path(asset(loaded, loaded.config.assets.tokenizer) or loaded.directory)
    return folder.parent if folder.is_file() else folder


def tokenizer_files(loaded: LoadedDia2) -> list[Path]:
    """The tokenizer files a folder has (none for presets, whose builtin tokenizer is used)."""
    folder = tokenizer_folder(loaded)
    return [] if folder is None else [folder / f for f in _TOKENIZER_FILES if (folder / f).is_file()]


def load_tokenizer(loaded: LoadedDia2):
    """A preset's builtin tokenizer, or the folder's tokenizer.json (a Dia2Tokenizer)."""
    from .text import Dia2Tokenizer, builtin_tokenizer

    folder = tokenizer_folder(loaded)
    if folder is None:
        return builtin_tokenizer()
    if not (folder / "tokenizer.json").exists():
        raise FastDiaError(f"no tokenizer.json in {folder}; a Dia2 checkpoint folder needs its tokenizer files")
    return Dia2Tokenizer.from_file(folder / "tokenizer.json")
