"""DAC 44.1 kHz codec (descript "44khz 8kbps"): config and pure-math modules (spec 5).

  * `DACConfig`: a frozen config parsed from either the transformers `config.json` or the
    original descript metadata kwargs; named presets.
  * Pure math modules (`Snake1d`, `ResidualUnit`, `EncoderBlock`, `DecoderBlock`, `Encoder`,
    `Decoder`, `VectorQuantizer`, `ResidualVectorQuantizer`, `DACModel`). Their parameter names
    follow transformers' `DacModel` so that its safetensors load without renaming; the original
    descript names are mapped in `weights.py`. The user-facing `DAC` is in `codec.py`.

Batching. Every conv pads its input with zeros, so an item decoded alone sees zeros past its end.
In a padded batch the positions past an item's end hold garbage (padding codes, biases), which
the convs would mix into the item's last outputs. To make a padded batch equal one-at-a-time
decoding, every module that mixes time zeroes its input past each item's valid length (`mask`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CheckpointError
from ...nn.layers import Embedding

DEFAULT_MODEL = "descript/dac_44khz"


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DACConfig:
    """Shape of a DAC codec.

    `latent_dim` defaults to encoder_dim * 2**len(encoder_rates), which is what transformers
    always uses (its `hidden_size`); the descript code lets it be set explicitly.
    """

    encoder_dim: int = 64
    encoder_rates: tuple[int, ...] = (2, 4, 8, 8)
    decoder_dim: int = 1536
    decoder_rates: tuple[int, ...] = (8, 8, 4, 2)
    n_codebooks: int = 9
    codebook_size: int = 1024
    codebook_dim: int = 8
    sample_rate: int = 44100
    latent_dim: int | None = None

    def __post_init__(self) -> None:
        # Lists from JSON become tuples so the config stays hashable and immutable.
        object.__setattr__(self, "encoder_rates", tuple(int(r) for r in self.encoder_rates))
        object.__setattr__(self, "decoder_rates", tuple(int(r) for r in self.decoder_rates))
        if self.latent_dim is None:
            object.__setattr__(self, "latent_dim", self.encoder_dim * 2 ** len(self.encoder_rates))
        problems = []
        if not self.encoder_rates or not self.decoder_rates:
            problems.append("encoder_rates and decoder_rates must not be empty")
        if any(r < 1 for r in (*self.encoder_rates, *self.decoder_rates)):
            problems.append("rates must be positive")
        if self.decoder_dim % 2 ** len(self.decoder_rates):
            problems.append(f"decoder_dim {self.decoder_dim} must be divisible by 2**{len(self.decoder_rates)}")
        if min(self.encoder_dim, self.n_codebooks, self.codebook_size, self.codebook_dim, self.sample_rate) < 1:
            problems.append("dimensions, codebook counts and sample_rate must be positive")
        if problems:
            raise CheckpointError("invalid DAC config: " + "; ".join(problems))

    @property
    def hop_length(self) -> int:
        """Waveform samples per code frame (512 for the 44.1 kHz model)."""
        return math.prod(self.encoder_rates)

    @property
    def upsampling(self) -> int:
        """Samples the decoder makes per frame (equal to hop_length for every released model)."""
        return math.prod(self.decoder_rates)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DACConfig":
        """Parse a transformers `DacConfig` dict or the descript metadata kwargs.

        Args:
            data: either transformers fields (encoder_hidden_size, downsampling_ratios, ...) or
                descript kwargs (encoder_dim, encoder_rates, ...).

        Returns:
            The config. Raises CheckpointError if neither layout is recognised.
        """
        try:
            if "encoder_hidden_size" in data or data.get("model_type") == "dac":
                down = tuple(data.get("downsampling_ratios", (2, 4, 8, 8)))
                # transformers derives upsampling_ratios = reversed downsampling_ratios and
                # hidden_size from the encoder; a saved value, when present, is the same number.
                up = tuple(data.get("upsampling_ratios") or down[::-1])
                return cls(
                    encoder_dim=int(data.get("encoder_hidden_size", 64)),
                    encoder_rates=down,
                    decoder_dim=int(data.get("decoder_hidden_size", 1536)),
                    decoder_rates=up,
                    n_codebooks=int(data.get("n_codebooks", 9)),
                    codebook_size=int(data.get("codebook_size", 1024)),
                    codebook_dim=int(data.get("codebook_dim", 8)),
                    # transformers' DacConfig defaults to 16 kHz; a file without the field is odd.
                    sample_rate=int(data.get("sampling_rate", 16000)),
                    latent_dim=int(data["hidden_size"]) if data.get("hidden_size") else None,
                )
            if "encoder_dim" in data or "encoder_rates" in data:
                return cls(
                    encoder_dim=int(data.get("encoder_dim", 64)),
                    encoder_rates=tuple(data.get("encoder_rates", (2, 4, 8, 8))),
                    decoder_dim=int(data.get("decoder_dim", 1536)),
                    decoder_rates=tuple(data.get("decoder_rates", (8, 8, 4, 2))),
                    n_codebooks=int(data.get("n_codebooks", 9)),
                    codebook_size=int(data.get("codebook_size", 1024)),
                    codebook_dim=int(data.get("codebook_dim", 8)),
                    sample_rate=int(data.get("sample_rate", 44100)),
                    latent_dim=int(data["latent_dim"]) if data.get("latent_dim") else None,
                )
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid DAC config values: {exc}") from None
        raise CheckpointError(
            "not a DAC config: expected transformers fields (encoder_hidden_size, downsampling_ratios, ...) "
            f"or descript kwargs (encoder_dim, encoder_rates, ...); got keys {sorted(data)[:12]}"
        )

    def to_transformers_dict(self) -> dict[str, Any]:
        """The transformers `DacConfig` fields (what `config.json` holds)."""
        return {
            "model_type": "dac",
            "architectures": ["DacModel"],
            "encoder_hidden_size": self.encoder_dim,
            "downsampling_ratios": list(self.encoder_rates),
            "decoder_hidden_size": self.decoder_dim,
            "upsampling_ratios": list(self.decoder_rates),
            "n_codebooks": self.n_codebooks,
            "codebook_size": self.codebook_size,
            "codebook_dim": self.codebook_dim,
            "quantizer_dropout": 0.0,
            "commitment_loss_weight": 0.25,
            "codebook_loss_weight": 1.0,
            "sampling_rate": self.sample_rate,
            "hidden_size": self.latent_dim,
            "hop_length": self.hop_length,
        }

    def to_descript_kwargs(self) -> dict[str, Any]:
        """The kwargs that descript's `DAC.__init__` takes (stored in a .pth's metadata)."""
        return {
            "encoder_dim": self.encoder_dim,
            "encoder_rates": list(self.encoder_rates),
            "latent_dim": self.latent_dim,
            "decoder_dim": self.decoder_dim,
            "decoder_rates": list(self.decoder_rates),
            "n_codebooks": self.n_codebooks,
            "codebook_size": self.codebook_size,
            "codebook_dim": self.codebook_dim,
            "quantizer_dropout": 0.0,
            "sample_rate": self.sample_rate,
        }


PRESETS: dict[str, DACConfig] = {
    # The released 44.1 kHz codec that Dia uses (spec 5.1).
    "dac-44khz": DACConfig(),
    # A few hundred KB, random weights, but the same hop (512) and 9 x 1024 codebooks as the real
    # one, so Dia's tiny preset can produce audio of the right length offline.
    "tiny-random": DACConfig(encoder_dim=4, decoder_dim=16, codebook_dim=8),
    # The released architecture with random weights: what benchmarks time (decode cost, time to
    # first audio) without a download.
    "dac-44khz-random": DACConfig(),
}

# Seed of the random weights of weight-less presets; fixed so every run makes the same codec.
PRESET_SEED = 0


def preset(name: str) -> DACConfig:
    """Return the named preset config ("dac-44khz", "tiny-random")."""
    try:
        return PRESETS[name]
    except KeyError:
        raise CheckpointError(f"unknown DAC preset {name!r}; presets are {', '.join(PRESETS)}") from None


# --------------------------------------------------------------------------------------------
# Modules (pure math)
# --------------------------------------------------------------------------------------------

Mask = torch.Tensor | None  # (B, 1, T) in the activation dtype, 1 where the item has data


def _apply_mask(x: torch.Tensor, mask: Mask) -> torch.Tensor:
    return x if mask is None else x * mask


def _make_mask(lengths: torch.Tensor | None, length: int, dtype: torch.dtype) -> Mask:
    if lengths is None:
        return None
    positions = torch.arange(length, device=lengths.device)
    return (positions[None, :] < lengths[:, None]).to(dtype)[:, None, :]  # (B, 1, T)


def _conv_out_len(lengths: torch.Tensor | None, conv: nn.Conv1d) -> torch.Tensor | None:
    if lengths is None:
        return None
    (k,), (s,), (p,), (d,) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    return torch.div(lengths + 2 * p - d * (k - 1) - 1, s, rounding_mode="floor") + 1


def _conv_t_out_len(lengths: torch.Tensor | None, conv: nn.ConvTranspose1d) -> torch.Tensor | None:
    if lengths is None:
        return None
    (k,), (s,), (p,) = conv.kernel_size, conv.stride, conv.padding
    return (lengths - 1) * s - 2 * p + k


class Snake1d(nn.Module):
    """x + sin(alpha x)^2 / alpha, with a learnt alpha per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C, T)
        # The 1e-9 keeps alpha=0 finite; it matches the reference so outputs agree bit for bit.
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class ResidualUnit(nn.Module):
    """x + Conv1x1(Snake(ConvK7_dilated(Snake(x)))); lengths are preserved."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.snake1 = Snake1d(channels)
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=7, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, mask: Mask = None) -> torch.Tensor:  # (B, C, T)
        x = _apply_mask(x, mask)  # conv1 mixes 19 to 55 neighbours; the 1x1 conv2 mixes none
        y = self.conv2(self.snake2(self.conv1(self.snake1(x))))
        return x + y


class EncoderBlock(nn.Module):
    """Three residual units at `dim // 2` channels, then a strided conv to `dim` channels."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        self.res_unit1 = ResidualUnit(dim // 2, 1)
        self.res_unit2 = ResidualUnit(dim // 2, 3)
        self.res_unit3 = ResidualUnit(dim // 2, 9)
        self.snake1 = Snake1d(dim // 2)
        self.conv1 = nn.Conv1d(dim // 2, dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2))

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # (B, C/2, L) -> (B, C, L/s)
        mask = _make_mask(lengths, x.shape[-1], x.dtype)
        x = self.res_unit3(self.res_unit2(self.res_unit1(x, mask), mask), mask)
        x = self.conv1(_apply_mask(self.snake1(x), mask))
        return x, _conv_out_len(lengths, self.conv1)


class DecoderBlock(nn.Module):
    """Snake, a transposed conv that upsamples by `stride`, then three residual units."""

    def __init__(self, in_dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.snake1 = Snake1d(in_dim)
        self.conv_t1 = nn.ConvTranspose1d(
            in_dim, out_dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)
        )
        self.res_unit1 = ResidualUnit(out_dim, 1)
        self.res_unit2 = ResidualUnit(out_dim, 3)
        self.res_unit3 = ResidualUnit(out_dim, 9)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # (B, Ci, L) -> (B, Co, L*s)
        mask = _make_mask(lengths, x.shape[-1], x.dtype)
        x = self.conv_t1(_apply_mask(self.snake1(x), mask))
        lengths = _conv_t_out_len(lengths, self.conv_t1)
        mask = _make_mask(lengths, x.shape[-1], x.dtype)
        x = self.res_unit3(self.res_unit2(self.res_unit1(x, mask), mask), mask)
        return x, lengths


class Encoder(nn.Module):
    """Waveform (B, 1, N) -> latent (B, latent_dim, N / hop)."""

    def __init__(self, config: DACConfig) -> None:
        super().__init__()
        dim = config.encoder_dim
        self.conv1 = nn.Conv1d(1, dim, kernel_size=7, padding=3)
        blocks = []
        for stride in config.encoder_rates:
            dim *= 2
            blocks.append(EncoderBlock(dim, stride))
        self.block = nn.ModuleList(blocks)
        self.snake1 = Snake1d(dim)
        self.conv2 = nn.Conv1d(dim, config.latent_dim, kernel_size=3, padding=1)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.conv1(_apply_mask(x, _make_mask(lengths, x.shape[-1], x.dtype)))
        for block in self.block:
            x, lengths = block(x, lengths)
        x = self.conv2(_apply_mask(self.snake1(x), _make_mask(lengths, x.shape[-1], x.dtype)))
        return x, lengths  # (B, latent_dim, T)


class Decoder(nn.Module):
    """Latent (B, latent_dim, T) -> waveform (B, 1, T * hop) in [-1, 1]."""

    def __init__(self, config: DACConfig) -> None:
        super().__init__()
        dim = config.decoder_dim
        self.conv1 = nn.Conv1d(config.latent_dim, dim, kernel_size=7, padding=3)
        blocks = []
        for stride in config.decoder_rates:
            blocks.append(DecoderBlock(dim, dim // 2, stride))
            dim //= 2
        self.block = nn.ModuleList(blocks)
        self.snake1 = Snake1d(dim)
        self.conv2 = nn.Conv1d(dim, 1, kernel_size=7, padding=3)

    def forward(
        self, z: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.conv1(_apply_mask(z, _make_mask(lengths, z.shape[-1], z.dtype)))
        for block in self.block:
            x, lengths = block(x, lengths)
        x = self.conv2(_apply_mask(self.snake1(x), _make_mask(lengths, x.shape[-1], x.dtype)))
        return torch.tanh(x), lengths  # (B, 1, N)


class VectorQuantizer(nn.Module):
    """One RVQ stage: factorised (low-dim) codes looked up by cosine similarity."""

    def __init__(self, config: DACConfig) -> None:
        super().__init__()
        self.in_proj = nn.Conv1d(config.latent_dim, config.codebook_dim, kernel_size=1)
        self.out_proj = nn.Conv1d(config.codebook_dim, config.latent_dim, kernel_size=1)
        self.codebook = Embedding(config.codebook_size, config.codebook_dim)  # no meta init (see it)

    def encode(self, residual: torch.Tensor) -> torch.Tensor:  # (B, D, T) -> codes (B, T)
        z_e = F.normalize(self.in_proj(residual), dim=1)  # (B, d, T)
        codebook = F.normalize(self.codebook.weight, dim=1)  # (N, d)
        # For unit vectors the nearest code (L2) is the one of highest cosine similarity;
        # argmax of the dot product avoids the |a|^2 + |b|^2 terms that only add rounding.
        similarity = torch.einsum("bdt,nd->btn", z_e, codebook)  # (B, T, N)
        return similarity.argmax(dim=-1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # codes (B, T) -> (B, D, T)
        z_q = self.codebook(codes).transpose(1, 2)  # raw (un-normalised) rows, (B, d, T)
        return self.out_proj(z_q)


class ResidualVectorQuantizer(nn.Module):
    """`n_codebooks` stages, each quantising what the previous ones left over."""

    def __init__(self, config: DACConfig) -> None:
        super().__init__()
        self.quantizers = nn.ModuleList(VectorQuantizer(config) for _ in range(config.n_codebooks))

    def encode(self, z: torch.Tensor) -> torch.Tensor:  # (B, D, T) -> codes (B, n_q, T)
        residual = z
        codes = []
        for quantizer in self.quantizers:
            idx = quantizer.encode(residual)
            residual = residual - quantizer.decode(idx)
            codes.append(idx)
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # (B, n_q, T) -> (B, D, T)
        z = self.quantizers[0].decode(codes[:, 0])
        for i in range(1, codes.shape[1]):
            z = z + self.quantizers[i].decode(codes[:, i])
        return z


class DACModel(nn.Module):
    """Encoder + RVQ + decoder. Parameter names equal transformers' `DacModel`."""

    def __init__(self, config: DACConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantizer = ResidualVectorQuantizer(config)

    def encode(
        self, wave: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:  # (B, 1, N) -> (B, n_q, N / hop)
        z, _ = self.encoder(wave, lengths)
        return self.quantizer.encode(z)

    def decode(
        self, codes: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # (B, n_q, T) -> (B, 1, T * hop)
        return self.decoder(self.quantizer.decode(codes), lengths)
