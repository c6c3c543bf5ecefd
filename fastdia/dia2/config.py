"""Typed, frozen configs for the Dia2 family (streaming dialogue TTS), parsed from config.json.

Dia2 ships one config layout (spec dia2 2): top-level blocks `data` (token channels and ids),
`model` (`decoder`, `depformer`, `linear` + RoPE / norm scalars), `runtime` (required, may be
empty) and an optional `assets` block. Every shape is read from the file: nothing here assumes
the 2B values (the 1B config is not public). Presets are named configs that need no file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

ACTIVATIONS = ("silu", "swish", "swiglu", "gelu", "geglu", "relu", "linear")


@dataclass(frozen=True)
class Dia2DataConfig:
    """Token channels and ids (`data` block). C = channels - 2 audio codebooks."""

    channels: int
    text_vocab_size: int
    audio_vocab_size: int
    action_vocab_size: int
    text_pad_token_id: int
    text_new_word_token_id: int
    text_zero_token_id: int
    audio_pad_token_id: int
    audio_bos_token_id: int
    delay_pattern: tuple[int, ...]
    action_pad_token_id: int = 0  # not read by the reference runtime (index 0 = pad hard-coded)
    action_new_word_token_id: int = 1  # idem (index 1 = new word)
    first_word_min_start: int = 0  # training-time only
    max_pad: int = 0  # training-time only; the runtime hard-codes max_padding = 6
    second_stream_ahead: int = 0
    tokenizer_path: str | None = None

    @property
    def n_codebooks(self) -> int:
        return self.channels - 2

    @property
    def max_delay(self) -> int:
        return max(self.delay_pattern)

    @property
    def codebook_size(self) -> int:
        """Real codec ids are below min(pad, bos) (2048): the depformer logits are cut there."""
        return min(self.audio_pad_token_id, self.audio_bos_token_id)


@dataclass(frozen=True)
class Dia2DecoderConfig:
    """The causal step decoder (`model.decoder` + `model.linear`)."""

    n_layer: int
    d_model: int
    d_ff: int
    n_head: int
    n_kv_head: int
    head_dim: int
    low_rank_dim: int | None = None
    mlp_activations: tuple[str, str] = ("silu", "linear")

    @property
    def text_embed_dim(self) -> int:
        """r: width of the text embedding table (low-rank factorisation when set)."""
        return self.low_rank_dim or self.d_model


@dataclass(frozen=True)
class Dia2DepformerConfig:
    """The per-frame depth transformer (`model.depformer`)."""

    n_layer: int
    d_model: int
    d_ff: int
    n_head: int
    n_kv_head: int
    head_dim: int
    apply_rope: bool = True
    text_embedding: bool = True  # the reference default when the field is absent
    mlp_activations: tuple[str, str] = ("silu", "linear")


@dataclass(frozen=True)
class Dia2RuntimeConfig:
    """`runtime` block: depformer weight groups per stage and the step budget."""

    weights_schedule: tuple[int, ...]
    max_context_steps: int = 1500

    @property
    def weight_groups(self) -> tuple[int, ...]:
        """Sorted distinct group ids (checkpoint keys `...{g}` use their decimal strings)."""
        return tuple(sorted(set(self.weights_schedule)))


@dataclass(frozen=True)
class Dia2AssetsConfig:
    tokenizer: str | None = None
    mimi: str | None = None


@dataclass(frozen=True)
class Dia2Config:
    data: Dia2DataConfig
    decoder: Dia2DecoderConfig
    depformer: Dia2DepformerConfig
    runtime: Dia2RuntimeConfig
    assets: Dia2AssetsConfig = field(default_factory=Dia2AssetsConfig)
    norm_eps: float = 1e-5
    rope_min_timescale: float = 1.0
    rope_max_timescale: float = 10000.0

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def n_codebooks(self) -> int:
        return self.data.n_codebooks

    @property
    def n_stages(self) -> int:
        """Depformer stages per frame: codebooks 1..C-1."""
        return self.data.n_codebooks - 1

    def to_dict(self) -> dict:
        """The reference config.json layout for this config (round-trips through `parse_dia2_config`)."""
        d, dec, dep, rt = self.data, self.decoder, self.depformer, self.runtime
        return {
            "data": {
                "channels": d.channels,
                "text_vocab_size": d.text_vocab_size,
                "audio_vocab_size": d.audio_vocab_size,
                "action_vocab_size": d.action_vocab_size,
                "text_pad_token_id": d.text_pad_token_id,
                "text_new_word_token_id": d.text_new_word_token_id,
                "text_zero_token_id": d.text_zero_token_id,
                "audio_pad_token_id": d.audio_pad_token_id,
                "audio_bos_token_id": d.audio_bos_token_id,
                "action_pad_token_id": d.action_pad_token_id,
                "action_new_word_token_id": d.action_new_word_token_id,
                "delay_pattern": list(d.delay_pattern),
                "first_word_min_start": d.first_word_min_start,
                "max_pad": d.max_pad,
                "second_stream_ahead": d.second_stream_ahead,
                "tokenizer_path": d.tokenizer_path,
            },
            "model": {
                "decoder": {
                    "n_layer": dec.n_layer, "n_embd": dec.d_model, "n_hidden": dec.d_ff,
                    "gqa_query_heads": dec.n_head, "kv_heads": dec.n_kv_head,
                    "gqa_head_dim": dec.head_dim, "low_rank_dim": dec.low_rank_dim,
                },
                "depformer": {
                    "n_layer": dep.n_layer, "n_embd": dep.d_model, "n_hidden": dep.d_ff,
                    "gqa_query_heads": dep.n_head, "kv_heads": dep.n_kv_head,
                    "gqa_head_dim": dep.head_dim, "apply_rope": dep.apply_rope,
                    "text_embedding": dep.text_embedding, "mlp_activations": list(dep.mlp_activations),
                },
                "linear": {"mlp_activations": list(dec.mlp_activations)},
                "dropout": 0.0,
                "rope_min_timescale": self.rope_min_timescale,
                "rope_max_timescale": self.rope_max_timescale,
                "normalization_layer_epsilon": self.norm_eps,
            },
            "runtime": {"weights_schedule": list(rt.weights_schedule), "max_context_steps": rt.max_context_steps},
            "assets": {"tokenizer": self.assets.tokenizer, "mimi": self.assets.mimi},
        }


def _validate(cfg: Dia2Config) -> None:
    d, dec, dep, rt = cfg.data, cfg.decoder, cfg.depformer, cfg.runtime

    def fail(msg: str) -> None:
        raise CheckpointError(f"config: {msg}")

    if d.channels < 3:
        fail(f"data.channels is {d.channels}; Dia2 needs 2 text channels plus at least 1 codebook")
    c = d.n_codebooks
    if len(d.delay_pattern) != c:
        fail(f"data.delay_pattern has {len(d.delay_pattern)} entries but channels - 2 = {c} codebooks")
    if any(x < 0 for x in d.delay_pattern):
        fail("data.delay_pattern has a negative delay")
    for name in ("text_pad_token_id", "text_new_word_token_id", "text_zero_token_id"):
        if not 0 <= getattr(d, name) < d.text_vocab_size:
            fail(f"data.{name} = {getattr(d, name)} is outside the text vocabulary ({d.text_vocab_size})")
    for name in ("audio_pad_token_id", "audio_bos_token_id"):
        if not 0 <= getattr(d, name) < d.audio_vocab_size:
            fail(f"data.{name} = {getattr(d, name)} is outside the audio vocabulary ({d.audio_vocab_size})")
    if d.action_vocab_size < 2:
        fail("data.action_vocab_size must be at least 2 (pad, new word)")
    for where, sub in (("decoder", dec), ("depformer", dep)):
        for name in ("n_layer", "d_model", "d_ff", "n_head", "n_kv_head", "head_dim"):
            if getattr(sub, name) <= 0:
                fail(f"model.{where}: {name} must be positive, got {getattr(sub, name)}")
        if sub.n_head % sub.n_kv_head:
            fail(f"model.{where} has {sub.n_head} query heads, not a multiple of {sub.n_kv_head} KV heads")
        if sub.head_dim % 2:
            fail(f"model.{where}.gqa_head_dim {sub.head_dim} must be even (rotary embedding)")
        if len(sub.mlp_activations) != 2 or any(a not in ACTIVATIONS for a in sub.mlp_activations):
            fail(f"model.{where} MLP activations {list(sub.mlp_activations)}: need exactly two of {ACTIVATIONS}")
    if dec.low_rank_dim is not None and dec.low_rank_dim <= 0:
        fail(f"model.decoder.low_rank_dim must be positive or null, got {dec.low_rank_dim}")
    if dep.n_kv_head != dep.n_head:
        # The fused in_proj yields as many K/V heads as query heads (spec 3.6).
        fail(f"model.depformer: kv_heads ({dep.n_kv_head}) must equal gqa_query_heads ({dep.n_head})")
    if len(rt.weights_schedule) != c - 1:
        fail(f"runtime.weights_schedule has {len(rt.weights_schedule)} entries; expected channels - 3 = {c - 1}")
    if any(g < 0 for g in rt.weights_schedule):
        fail("runtime.weights_schedule has a negative group id")
    if rt.max_context_steps <= 0:
        fail("runtime.max_context_steps must be positive")
    if cfg.norm_eps <= 0 or cfg.rope_min_timescale <= 0 or cfg.rope_max_timescale <= 0:
        fail("normalization_layer_epsilon and the rope timescales must be positive")


# Parsing


def load_dia2_config(path: str | Path) -> Dia2Config:
    """Read a Dia2 config.json."""
    from ..hub import read_config_json

    return parse_dia2_config(read_config_json(path), where=str(path))


def is_dia2_config(raw: Any) -> bool:
    """True for the Dia2 layout: a `model` block with `decoder` and `depformer` sections."""
    model = raw.get("model") if isinstance(raw, Mapping) else None
    return isinstance(model, Mapping) and "depformer" in model and "decoder" in model


def parse_dia2_config(raw: Mapping[str, Any], where: str = "config") -> Dia2Config:
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{where}: expected a JSON object")
    for block in ("data", "model"):
        if not isinstance(raw.get(block), Mapping):
            raise CheckpointError(f"{where}: missing the {block!r} block; is this a Dia2 config?")
    if not isinstance(raw.get("runtime"), Mapping):
        # The reference refuses a config without it too (it may be empty).
        raise CheckpointError(f"{where}: missing the 'runtime' block (it may be empty, but must be present)")
    try:
        return _parse(raw)
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: {str(exc).removeprefix('config: ')}") from None
    except KeyError as exc:
        raise CheckpointError(f"{where}: missing field {exc.args[0]}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: bad value ({exc})") from None


def _int(block: Mapping[str, Any], key: str, where: str, default: Any = ...) -> int:
    if key not in block or block[key] is None:
        if default is ...:
            raise KeyError(f"{where}.{key!s}")
        return default
    value = block[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}.{key} must be an integer, got {value!r}")
    return value


def _activations(block: Mapping[str, Any], where: str) -> tuple[str, str]:
    acts = block.get("mlp_activations", ["silu", "linear"])
    if not isinstance(acts, (list, tuple)) or len(acts) != 2:
        raise ValueError(f"{where}.mlp_activations must list exactly two activations, got {acts!r}")
    acts = tuple(str(a).lower() for a in acts)
    for a in acts:
        if a not in ACTIVATIONS:
            raise ValueError(f"{where}.mlp_activations: unknown activation {a!r} (known: {', '.join(ACTIVATIONS)})")
    return acts  # type: ignore[return-value]


def _int_list(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise ValueError(f"{where} must be a list of integers, got {value!r}")
    return tuple(value)


def _parse(raw: Mapping[str, Any]) -> Dia2Config:
    d, m, rt = raw["data"], raw["model"], raw["runtime"]
    audio_vocab = _int(d, "audio_vocab_size", "data")
    data = Dia2DataConfig(
        channels=_int(d, "channels", "data"),
        text_vocab_size=_int(d, "text_vocab_size", "data"),
        audio_vocab_size=audio_vocab,
        action_vocab_size=_int(d, "action_vocab_size", "data"),
        text_pad_token_id=_int(d, "text_pad_token_id", "data"),
        text_new_word_token_id=_int(d, "text_new_word_token_id", "data"),
        text_zero_token_id=_int(d, "text_zero_token_id", "data", 7),
        audio_pad_token_id=_int(d, "audio_pad_token_id", "data", audio_vocab - 1),
        audio_bos_token_id=_int(d, "audio_bos_token_id", "data", audio_vocab - 2),
        action_pad_token_id=_int(d, "action_pad_token_id", "data", 0),
        action_new_word_token_id=_int(d, "action_new_word_token_id", "data", 1),
        delay_pattern=_int_list(d.get("delay_pattern", []), "data.delay_pattern"),
        first_word_min_start=_int(d, "first_word_min_start", "data", 0),
        max_pad=_int(d, "max_pad", "data", 0),
        second_stream_ahead=_int(d, "second_stream_ahead", "data", 0),
        tokenizer_path=d.get("tokenizer_path"),
    )
    for block in ("decoder", "depformer"):
        if not isinstance(m.get(block), Mapping):
            raise KeyError(f"model.{block}")
    dec, dep = m["decoder"], m["depformer"]
    linear = m.get("linear") or {}
    decoder = Dia2DecoderConfig(
        n_layer=_int(dec, "n_layer", "model.decoder"),
        d_model=_int(dec, "n_embd", "model.decoder"),
        d_ff=_int(dec, "n_hidden", "model.decoder"),
        n_head=_int(dec, "gqa_query_heads", "model.decoder"),
        n_kv_head=_int(dec, "kv_heads", "model.decoder"),
        head_dim=_int(dec, "gqa_head_dim", "model.decoder"),
        low_rank_dim=_int(dec, "low_rank_dim", "model.decoder", None),
        mlp_activations=_activations(linear, "model.linear"),
    )
    depformer = Dia2DepformerConfig(
        n_layer=_int(dep, "n_layer", "model.depformer"),
        d_model=_int(dep, "n_embd", "model.depformer"),
        d_ff=_int(dep, "n_hidden", "model.depformer"),
        n_head=_int(dep, "gqa_query_heads", "model.depformer"),
        n_kv_head=_int(dep, "kv_heads", "model.depformer"),
        head_dim=_int(dep, "gqa_head_dim", "model.depformer"),
        apply_rope=bool(dep.get("apply_rope", True)),
        text_embedding=bool(dep.get("text_embedding", True)),
        mlp_activations=_activations(dep, "model.depformer"),
    )
    stages = data.channels - 3
    schedule = rt.get("weights_schedule")
    runtime = Dia2RuntimeConfig(
        weights_schedule=tuple(range(stages)) if schedule is None
        else _int_list(schedule, "runtime.weights_schedule"),
        max_context_steps=_int(rt, "max_context_steps", "runtime", 1500),
    )
    assets_raw = raw.get("assets") or {}
    assets = Dia2AssetsConfig(tokenizer=assets_raw.get("tokenizer"), mimi=assets_raw.get("mimi"))
    return Dia2Config(
        data=data,
        decoder=decoder,
        depformer=depformer,
        runtime=runtime,
        assets=assets,
        norm_eps=float(m.get("normalization_layer_epsilon", 1e-5)),
        rope_min_timescale=float(m.get("rope_min_timescale", 1)),
        rope_max_timescale=float(m.get("rope_max_timescale", 10000)),
    )


# Presets

DIA2_PRESET_SEED = 1234


def _tiny() -> Dia2Config:
    """The shape of the golden-fixture model (shared/fixtures/dia2/model/config.json)."""
    return Dia2Config(
        data=Dia2DataConfig(
            channels=10, text_vocab_size=512, audio_vocab_size=2050, action_vocab_size=2,
            text_pad_token_id=3, text_new_word_token_id=2, text_zero_token_id=7,
            audio_pad_token_id=2049, audio_bos_token_id=2048,
            delay_pattern=(3, 5, 5, 5, 6, 6, 7, 7),
            first_word_min_start=3, max_pad=8, second_stream_ahead=2,
        ),
        decoder=Dia2DecoderConfig(n_layer=2, d_model=64, d_ff=128, n_head=4, n_kv_head=2, head_dim=16),
        depformer=Dia2DepformerConfig(
            n_layer=2, d_model=32, d_ff=64, n_head=2, n_kv_head=2, head_dim=16, text_embedding=False
        ),
        runtime=Dia2RuntimeConfig(weights_schedule=(0, 1, 1, 2, 2, 3, 3), max_context_steps=150),
        norm_eps=1e-5,
    )


def _two_b() -> Dia2Config:
    """The Dia2-2B shape of spec 2.4 (1,919,556,608 parameters).

    The exact 2B weights_schedule is not known (spec 10): 31 entries, first 0, last 4, five groups.
    This preset uses 0, 1, 2, 3 for the first stages and 4 for the rest, which has the right
    parameter count; a real checkpoint always brings its own schedule in config.json.
    """
    return Dia2Config(
        data=Dia2DataConfig(
            channels=34, text_vocab_size=49280, audio_vocab_size=2050, action_vocab_size=2,
            text_pad_token_id=3, text_new_word_token_id=2, text_zero_token_id=7,
            audio_pad_token_id=2049, audio_bos_token_id=2048,
            delay_pattern=(16,) + (18,) * 31,
            first_word_min_start=3, max_pad=8, second_stream_ahead=2,
        ),
        decoder=Dia2DecoderConfig(n_layer=28, d_model=2048, d_ff=6144, n_head=16, n_kv_head=8, head_dim=128),
        depformer=Dia2DepformerConfig(
            n_layer=4, d_model=1024, d_ff=3072, n_head=8, n_kv_head=8, head_dim=128, text_embedding=False
        ),
        runtime=Dia2RuntimeConfig(weights_schedule=(0, 1, 2, 3) + (4,) * 27, max_context_steps=1500),
        norm_eps=1e-6,
    )


DIA2_PRESETS: dict[str, Dia2Config] = {"dia2-tiny-random": _tiny(), "dia2-2b-random": _two_b()}
# Presets (and converted presets) carry random codecs of their own size, so everything runs offline.
PRESET_CODECS = {"dia2-tiny-random": "mimi-tiny-random", "dia2-2b-random": "mimi-random"}
DEFAULT_CODEC = "kyutai/mimi"


def dia2_preset(name: str) -> Dia2Config:
    try:
        return DIA2_PRESETS[name]
    except KeyError:
        raise CheckpointError(f"unknown Dia2 preset {name!r}; presets are {', '.join(DIA2_PRESETS)}") from None


def is_dia2(model: str | Path) -> bool:
    """Whether `model` (preset, directory or hub id) is a Dia2 checkpoint: presets by name,
    directories by their config.json layout (Dia2's has `data` and `runtime` blocks), hub ids by name."""
    import json

    name = str(model)
    if name in DIA2_PRESETS:
        return True
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        try:
            cfg = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(cfg, dict) and "data" in cfg and "runtime" in cfg
    return not path.exists() and "dia2" in name.lower()
