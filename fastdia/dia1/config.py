"""Typed, frozen model configs for Dia-1, parsed from either config.json layout.

Two layouts exist in the wild (spec 2.1):
  * the original nested one of Dia-1.6B v0.1: {"model": {"encoder": {...}, "decoder": {...}}, "data": {...}}
  * the transformers one of Dia-1.6B-0626: {"encoder_config": {...}, "decoder_config": {...}, ...},
    with token ids either at the top level (older writers) or inside decoder_config (newer ones)
    and the RoPE base either as `rope_theta` or inside `rope_parameters`.
Both parse into the same `DiaConfig`. Presets are named configs that need no file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import CheckpointError
from ..hub import read_config_json


@dataclass(frozen=True)
class EncoderConfig:
    """The text encoder: bidirectional transformer over UTF-8 bytes."""

    n_layer: int = 12
    d_model: int = 1024
    d_ff: int = 4096
    n_head: int = 16
    n_kv_head: int = 16
    head_dim: int = 128
    vocab_size: int = 256
    max_positions: int = 1024


@dataclass(frozen=True)
class DecoderConfig:
    """The audio decoder: causal GQA self-attention, cross-attention to the text, 9 channels."""

    n_layer: int = 18
    d_model: int = 2048
    d_ff: int = 8192
    n_head: int = 16
    n_kv_head: int = 4
    head_dim: int = 128
    cross_n_head: int = 16
    cross_n_kv_head: int = 16
    cross_head_dim: int = 128
    vocab_size: int = 1028
    n_channels: int = 9
    max_positions: int = 3072


@dataclass(frozen=True)
class DiaConfig:
    """Everything the model and the generation loop need to know about a checkpoint.

    `cross_attn_rope` is True only for Dia-1.6B v0.1 weights (the nested config layout), which
    were trained with RoPE on cross-attention queries and keys (spec section 9).
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_min_timescale: float = 1.0
    eos_id: int = 1024
    pad_id: int = 1025
    bos_id: int = 1026
    delay_pattern: tuple[int, ...] = (0, 8, 9, 10, 11, 12, 13, 14, 15)
    cross_attn_rope: bool = False
    source_format: str = "transformers"  # "transformers" | "nari" | "preset"

    def __post_init__(self) -> None:
        if len(self.delay_pattern) != self.decoder.n_channels:
            raise CheckpointError(
                f"config: delay_pattern has {len(self.delay_pattern)} entries but the decoder has "
                f"{self.decoder.n_channels} channels"
            )
        for name, sub in (("encoder", self.encoder), ("decoder", self.decoder)):
            if sub.n_head % sub.n_kv_head:
                raise CheckpointError(
                    f"config: {name} has {sub.n_head} query heads, not a multiple of {sub.n_kv_head} KV heads"
                )
        if self.decoder.cross_n_head % self.decoder.cross_n_kv_head:
            raise CheckpointError("config: cross-attention query heads must be a multiple of its KV heads")

    @property
    def max_delay(self) -> int:
        return max(self.delay_pattern)

    @property
    def n_channels(self) -> int:
        return self.decoder.n_channels

    def to_dict(self) -> dict:
        """A plain dict (the transformers layout is what `save` writes; this is for display)."""
        return dataclasses.asdict(self)

    def to_transformers_dict(self) -> dict:
        """The transformers-style config.json for this config (what Dia-1.6B-0626 ships)."""
        e, d = self.encoder, self.decoder
        rope = {"rope_theta": self.rope_theta, "rope_type": "default"}
        return {
            "architectures": ["DiaForConditionalGeneration"],
            "model_type": "dia",
            "is_encoder_decoder": True,
            "norm_eps": self.norm_eps,
            "delay_pattern": list(self.delay_pattern),
            "encoder_config": {
                "model_type": "dia_encoder",
                "num_hidden_layers": e.n_layer,
                "hidden_size": e.d_model,
                "intermediate_size": e.d_ff,
                "num_attention_heads": e.n_head,
                "num_key_value_heads": e.n_kv_head,
                "head_dim": e.head_dim,
                "vocab_size": e.vocab_size,
                "max_position_embeddings": e.max_positions,
                "norm_eps": self.norm_eps,
                "hidden_act": "silu",
                "rope_parameters": dict(rope),
            },
            "decoder_config": {
                "model_type": "dia_decoder",
                "num_hidden_layers": d.n_layer,
                "hidden_size": d.d_model,
                "intermediate_size": d.d_ff,
                "num_attention_heads": d.n_head,
                "num_key_value_heads": d.n_kv_head,
                "head_dim": d.head_dim,
                "cross_num_attention_heads": d.cross_n_head,
                "cross_num_key_value_heads": d.cross_n_kv_head,
                "cross_head_dim": d.cross_head_dim,
                "cross_hidden_size": e.d_model,
                "vocab_size": d.vocab_size,
                "num_channels": d.n_channels,
                "max_position_embeddings": d.max_positions,
                "norm_eps": self.norm_eps,
                "hidden_act": "silu",
                "rope_parameters": dict(rope),
                "bos_token_id": self.bos_id,
                "eos_token_id": self.eos_id,
                "pad_token_id": self.pad_id,
            },
        }


# --------------------------------------------------------------------------------------------
# Parsing


def load_config(path: str | Path) -> DiaConfig:
    """Read a config.json in either layout."""
    return parse_config(read_config_json(path), where=str(path))


def parse_config(raw: Mapping[str, Any], where: str = "config") -> DiaConfig:
    """Parse a config dict in either the nested (nari v0.1) or the transformers layout."""
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{where}: expected a JSON object")
    try:
        if "model" in raw and isinstance(raw["model"], Mapping) and "encoder" in raw["model"]:
            return _parse_nari(raw)
        if "encoder_config" in raw or "decoder_config" in raw:
            return _parse_transformers(raw)
    except KeyError as exc:
        raise CheckpointError(f"{where}: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: bad value ({exc})") from None
    raise CheckpointError(
        f"{where}: not a Dia config (expected 'encoder_config'/'decoder_config' or a nested 'model' section)"
    )


def _parse_nari(raw: Mapping[str, Any]) -> DiaConfig:
    m, data = raw["model"], raw.get("data", {})
    enc, dec = m["encoder"], m["decoder"]
    encoder = EncoderConfig(
        n_layer=int(enc["n_layer"]),
        d_model=int(enc["n_embd"]),
        d_ff=int(enc["n_hidden"]),
        n_head=int(enc["n_head"]),
        n_kv_head=int(enc.get("n_kv_head", enc["n_head"])),
        head_dim=int(enc["head_dim"]),
        vocab_size=int(m.get("src_vocab_size", 256)),
        max_positions=int(data.get("text_length", 1024)),
    )
    decoder = DecoderConfig(
        n_layer=int(dec["n_layer"]),
        d_model=int(dec["n_embd"]),
        d_ff=int(dec["n_hidden"]),
        n_head=int(dec["gqa_query_heads"]),
        n_kv_head=int(dec["kv_heads"]),
        head_dim=int(dec["gqa_head_dim"]),
        cross_n_head=int(dec["cross_query_heads"]),
        # The original cross-attention is plain MHA: as many KV heads as query heads.
        cross_n_kv_head=int(dec["cross_query_heads"]),
        cross_head_dim=int(dec["cross_head_dim"]),
        vocab_size=int(m.get("tgt_vocab_size", 1028)),
        n_channels=int(data.get("channels", 9)),
        max_positions=int(data.get("audio_length", 3072)),
    )
    return DiaConfig(
        encoder=encoder,
        decoder=decoder,
        norm_eps=float(m.get("normalization_layer_epsilon", 1e-5)),
        rope_theta=float(m.get("rope_max_timescale", 10000.0)),
        rope_min_timescale=float(m.get("rope_min_timescale", 1.0)),
        eos_id=int(data.get("audio_eos_value", 1024)),
        pad_id=int(data.get("audio_pad_value", 1025)),
        bos_id=int(data.get("audio_bos_value", 1026)),
        delay_pattern=tuple(int(x) for x in data.get("delay_pattern", (0, 8, 9, 10, 11, 12, 13, 14, 15))),
        # v0.1 weights were trained with RoPE in cross-attention (spec 9).
        cross_attn_rope=True,
        source_format="nari",
    )


def _rope_theta(sub: Mapping[str, Any], default: float = 10000.0) -> float:
    params = sub.get("rope_parameters")
    if isinstance(params, Mapping) and params.get("rope_theta") is not None:
        return float(params["rope_theta"])
    if sub.get("rope_theta") is not None:
        return float(sub["rope_theta"])
    return default


def _token_id(raw: Mapping[str, Any], dec: Mapping[str, Any], key: str, default: int) -> int:
    # Older writers put the ids at the top level, newer ones inside decoder_config.
    for source in (raw, dec):
        value = source.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return default


def _parse_transformers(raw: Mapping[str, Any]) -> DiaConfig:
    enc = raw.get("encoder_config") or {}
    dec = raw.get("decoder_config") or {}
    e_def, d_def = EncoderConfig(), DecoderConfig()
    encoder = EncoderConfig(
        n_layer=int(enc.get("num_hidden_layers", e_def.n_layer)),
        d_model=int(enc.get("hidden_size", e_def.d_model)),
        d_ff=int(enc.get("intermediate_size", e_def.d_ff)),
        n_head=int(enc.get("num_attention_heads", e_def.n_head)),
        n_kv_head=int(enc.get("num_key_value_heads", e_def.n_kv_head)),
        head_dim=int(enc.get("head_dim", e_def.head_dim)),
        vocab_size=int(enc.get("vocab_size", e_def.vocab_size)),
        max_positions=int(enc.get("max_position_embeddings", e_def.max_positions)),
    )
    cross_hidden = int(dec.get("cross_hidden_size", encoder.d_model))
    if cross_hidden != encoder.d_model:
        raise CheckpointError(
            f"config: decoder cross_hidden_size {cross_hidden} differs from encoder hidden_size {encoder.d_model}"
        )
    decoder = DecoderConfig(
        n_layer=int(dec.get("num_hidden_layers", d_def.n_layer)),
        d_model=int(dec.get("hidden_size", d_def.d_model)),
        d_ff=int(dec.get("intermediate_size", d_def.d_ff)),
        n_head=int(dec.get("num_attention_heads", d_def.n_head)),
        n_kv_head=int(dec.get("num_key_value_heads", d_def.n_kv_head)),
        head_dim=int(dec.get("head_dim", d_def.head_dim)),
        cross_n_head=int(dec.get("cross_num_attention_heads", d_def.cross_n_head)),
        cross_n_kv_head=int(dec.get("cross_num_key_value_heads", d_def.cross_n_kv_head)),
        cross_head_dim=int(dec.get("cross_head_dim", d_def.cross_head_dim)),
        vocab_size=int(dec.get("vocab_size", d_def.vocab_size)),
        n_channels=int(dec.get("num_channels", d_def.n_channels)),
        max_positions=int(dec.get("max_position_embeddings", d_def.max_positions)),
    )
    enc_theta, dec_theta = _rope_theta(enc), _rope_theta(dec)
    if enc_theta != dec_theta:
        raise CheckpointError(f"config: encoder and decoder RoPE bases differ ({enc_theta} vs {dec_theta})")
    eps = raw.get("norm_eps", dec.get("norm_eps", 1e-5))
    return DiaConfig(
        encoder=encoder,
        decoder=decoder,
        norm_eps=float(eps),
        rope_theta=dec_theta,
        eos_id=_token_id(raw, dec, "eos_token_id", 1024),
        pad_id=_token_id(raw, dec, "pad_token_id", 1025),
        bos_id=_token_id(raw, dec, "bos_token_id", 1026),
        delay_pattern=tuple(int(x) for x in raw.get("delay_pattern") or (0, 8, 9, 10, 11, 12, 13, 14, 15)),
        cross_attn_rope=False,
        source_format="transformers",
    )


# --------------------------------------------------------------------------------------------
# Presets: named configs that need no file. Their weights are random, built from a fixed seed.

PRESET_SEED = 1234

PRESETS: dict[str, DiaConfig] = {
    # A few-MB model with the real vocabulary, channels and delay pattern, for tests and trials.
    "tiny-random": DiaConfig(
        encoder=EncoderConfig(n_layer=2, d_model=64, d_ff=128, n_head=4, n_kv_head=4, head_dim=16),
        decoder=DecoderConfig(
            n_layer=2, d_model=128, d_ff=256, n_head=4, n_kv_head=2, head_dim=32,
            cross_n_head=4, cross_n_kv_head=4, cross_head_dim=32,
        ),
        source_format="preset",
    ),
    # The full Dia-1.6B architecture with random weights, for benchmarks.
    "dia-1.6b-random": DiaConfig(source_format="preset"),
}


def preset(name: str) -> DiaConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise CheckpointError(f"unknown preset {name!r}; presets are {', '.join(PRESETS)}") from None
