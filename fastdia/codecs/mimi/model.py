"""Mimi 24 kHz codec (Kyutai; the codec of Dia2, spec section 7): config and pure-math modules.

  * `MimiConfig`: a frozen config parsed from a transformers `MimiConfig` config.json, with the
    released `kyutai/mimi` values as defaults.
  * Modules: causal SEANet encoder/decoder, the encoder/decoder transformers (RoPE, sliding-window
    causal attention, layer scale), the stride-2 down/upsampling convs and the split residual
    vector quantizer (quantizer.py). Parameter and buffer names equal the keys that transformers' `MimiModel`
    writes with `save_pretrained` (the flat hub layout: `encoder.layers.*`, `encoder_transformer.*`,
    `downsample.*`, `upsample.*`, `decoder_transformer.*`, `decoder.layers.*`, `quantizer.*`), so
    `model.safetensors` loads strictly without renaming.

Streaming. Every time-mixing module takes an optional `state` dict. With `state=None` it computes
a one-shot pass exactly as transformers does (causal left padding, the extra right padding that
completes a strided conv's last window, transposed-conv trimming). With a dict it treats its input
as the continuation of everything it has seen before: convs prepend the samples they kept, the
transposed convs add the overlap they carried, attention reads its KV cache. The dict is keyed by
module, so one `state` holds the whole decoder's memory (see `MimiStream` in `codec.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CheckpointError
from .quantizer import MimiSplitResidualVectorQuantizer

DEFAULT_MODEL = "kyutai/mimi"

State = dict | None  # module -> what it carries from one streamed chunk to the next

# transformers' ACT2FN names for the MLP activation; "gelu" is the exact (erf) form.
_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MimiConfig:
    """Shape of a Mimi codec; field names and defaults follow transformers' `MimiConfig`.

    `frame_rate` is derived (sampling_rate / (prod(upsampling_ratios) * 2)) unless a checkpoint
    states it, and `head_dim` defaults to hidden_size // num_attention_heads, as in transformers.
    """

    sampling_rate: int = 24000
    frame_rate: float | None = None
    audio_channels: int = 1
    hidden_size: int = 512
    num_filters: int = 64
    num_residual_layers: int = 1
    upsampling_ratios: tuple[int, ...] = (8, 6, 5, 4)
    kernel_size: int = 7
    last_kernel_size: int = 3
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    use_causal_conv: bool = True
    pad_mode: str = "constant"
    compress: int = 2
    trim_right_ratio: float = 1.0
    use_conv_shortcut: bool = False
    codebook_size: int = 2048
    codebook_dim: int = 256
    num_quantizers: int = 32
    num_semantic_quantizers: int = 1
    vector_quantization_hidden_dimension: int = 256
    upsample_groups: int = 512
    num_hidden_layers: int = 8
    intermediate_size: int = 2048
    num_attention_heads: int = 8
    num_key_value_heads: int = 8
    head_dim: int | None = None
    hidden_act: str = "gelu"
    max_position_embeddings: int = 8000
    rope_theta: float = 10000.0
    sliding_window: int = 250
    layer_scale_initial_scale: float = 0.01
    norm_eps: float = 1e-5
    attention_bias: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "upsampling_ratios", tuple(int(r) for r in self.upsampling_ratios))
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // max(1, self.num_attention_heads))
        if self.frame_rate is None:
            # transformers' frame_size always counts a stride-2 downsample after the SEANet.
            object.__setattr__(self, "frame_rate", self.sampling_rate / (math.prod(self.upsampling_ratios) * 2))
        problems = []
        if not self.upsampling_ratios or min(self.upsampling_ratios) < 1:
            problems.append("upsampling_ratios must be positive and not empty")
        if not 0 < self.num_semantic_quantizers < self.num_quantizers:
            problems.append("need 0 < num_semantic_quantizers < num_quantizers")
        if self.num_attention_heads < 1 or self.num_attention_heads % max(1, self.num_key_value_heads):
            problems.append("num_attention_heads must be a multiple of num_key_value_heads")
        if self.hidden_size % max(1, self.upsample_groups):
            problems.append(f"hidden_size {self.hidden_size} is not divisible by upsample_groups {self.upsample_groups}")
        if self.hidden_act not in _ACTIVATIONS:
            problems.append(f"hidden_act {self.hidden_act!r} is not one of {sorted(_ACTIVATIONS)}")
        if self.pad_mode not in ("constant", "replicate", "reflect"):
            problems.append(f"pad_mode {self.pad_mode!r} is not constant, replicate or reflect")
        if self.codebook_dim != self.vector_quantization_hidden_dimension:
            problems.append("codebook_dim must equal vector_quantization_hidden_dimension")
        if problems:
            raise CheckpointError("invalid Mimi config: " + "; ".join(problems))

    @property
    def encodec_frame_rate(self) -> int:
        """Frames per second out of the SEANet encoder (25 for the release)."""
        return math.ceil(self.sampling_rate / math.prod(self.upsampling_ratios))

    @property
    def latent_stride(self) -> int:
        """Stride of the down/upsampling conv between SEANet rate and code rate (2)."""
        return int(self.encodec_frame_rate / self.frame_rate)

    @property
    def has_resample(self) -> bool:
        """Whether there is a downsample/upsample conv (transformers compares the two rates)."""
        return self.frame_rate != self.encodec_frame_rate

    @property
    def hop_length(self) -> int:
        """Waveform samples per code frame (1920 for the release)."""
        return math.prod(self.upsampling_ratios) * (self.latent_stride if self.has_resample else 1)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MimiConfig":
        """Parse a transformers `MimiConfig` dict (config.json).

        Args:
            data: the JSON object. Unknown keys are ignored; `rope_theta` is read from
                `rope_parameters` (transformers 5) or the top level (older files).

        Returns:
            The config. Raises CheckpointError for another model type or bad values.
        """
        if data.get("model_type") not in (None, "mimi"):
            raise CheckpointError(f"not a Mimi config: model_type is {data.get('model_type')!r}")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known and v is not None}
        if data.get("codebook_dim", 0) is None:  # transformers' meaning of null: the latent width
            kwargs["codebook_dim"] = int(data.get("hidden_size", cls.hidden_size))
        rope = data.get("rope_parameters") or {}
        if rope.get("rope_type", "default") != "default":
            raise CheckpointError(f"Mimi rope_type {rope.get('rope_type')!r} is not supported (only 'default')")
        if rope.get("rope_theta") is not None:
            kwargs["rope_theta"] = rope["rope_theta"]
        # Older configs store the frame rate as "frame_rate", transformers 5 as "_frame_rate".
        if data.get("_frame_rate") is not None and "frame_rate" not in kwargs:
            kwargs["frame_rate"] = data["_frame_rate"]
        if isinstance(kwargs.get("residual_kernel_size"), list):
            raise CheckpointError("Mimi configs with a list of residual_kernel_size are not supported")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid Mimi config values: {exc}") from None

    def to_transformers_dict(self) -> dict[str, Any]:
        """The transformers `MimiConfig` fields (what `config.json` holds)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("rope_theta", "frame_rate")}
        out["upsampling_ratios"] = list(self.upsampling_ratios)
        out["rope_parameters"] = {"rope_theta": self.rope_theta, "rope_type": "default"}
        out.update(model_type="mimi", architectures=["MimiModel"])
        return out


# --------------------------------------------------------------------------------------------
# Convolutions
# --------------------------------------------------------------------------------------------


def _pad(x: torch.Tensor, left: int, right: int, mode: str) -> torch.Tensor:
    if mode != "reflect":
        return F.pad(x, (left, right), mode=mode)
    # Reflection needs more samples than the pad; like transformers, zero-extend short inputs first.
    extra = max(0, max(left, right) - x.shape[-1] + 1)
    x = F.pad(x, (0, extra))
    y = F.pad(x, (left, right), mode="reflect")
    return y[..., : y.shape[-1] - extra]


class MimiConv1d(nn.Module):
    """Conv1d with causal (all left) or centred padding; holds the torch conv as `.conv`."""

    def __init__(
        self,
        config: MimiConfig,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        bias: bool = True,
        pad_mode: str | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride, dilation=dilation, bias=bias)
        self.causal = config.use_causal_conv
        self.pad_mode = pad_mode or config.pad_mode
        self.stride = stride
        self.padding_total = (kernel_size - 1) * dilation + 1 - stride

    def forward(self, x: torch.Tensor, state: State = None) -> torch.Tensor:  # (B, Ci, L) -> (B, Co, L/s)
        if state is not None:
            return self.conv(self._stream_input(x, state))
        # Right zeros so the last window is complete: the encoder covers every input sample.
        extra = (-x.shape[-1]) % self.stride
        if self.causal:
            left, right = self.padding_total, extra
        else:
            right = self.padding_total // 2
            left, right = self.padding_total - right, right + extra
        return self.conv(_pad(x, left, right, self.pad_mode))

    def _stream_input(self, x: torch.Tensor, state: dict) -> torch.Tensor:
        if not self.causal or self.stride != 1:
            raise NotImplementedError("streaming needs causal stride-1 convs (the Mimi decoder has only those)")
        past = state.get(self)
        if past is None:
            # The very first chunk sees the same left padding as a one-shot pass.
            if self.pad_mode == "replicate":
                past = x[..., :1].expand(-1, -1, self.padding_total)
            else:  # constant; reflect never streams (the decoder is causal with zero padding)
                past = x.new_zeros(x.shape[0], x.shape[1], self.padding_total)
        joined = torch.cat([past, x], dim=-1)  # (B, Ci, P + L)
        state[self] = joined[..., joined.shape[-1] - self.padding_total:]
        return joined


class MimiConvTranspose1d(nn.Module):
    """ConvTranspose1d whose `kernel - stride` overhanging outputs are trimmed (all on the right
    when causal with trim_right_ratio 1, so L inputs give exactly L * stride outputs)."""

    def __init__(
        self,
        config: MimiConfig,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride, groups=groups, bias=bias)
        overhang = kernel_size - stride
        if config.use_causal_conv:
            self.padding_right = math.ceil(overhang * config.trim_right_ratio)
        else:
            if config.trim_right_ratio != 1.0:
                raise CheckpointError("trim_right_ratio != 1 needs use_causal_conv")
            self.padding_right = overhang // 2
        self.padding_left = overhang - self.padding_right

    def unbiased(self, x: torch.Tensor) -> torch.Tensor:  # (B, Ci, L) -> (B, Co, (L - 1) s + k), untrimmed
        """The transposed conv without its bias (a backend may route this method)."""
        return F.conv_transpose1d(x, self.conv.weight, None, self.conv.stride[0], groups=self.conv.groups)

    def forward(self, x: torch.Tensor, state: State = None) -> torch.Tensor:  # (B, Ci, L) -> (B, Co, L*s)
        if state is None:
            y = self.conv(x)
            return y[..., self.padding_left: y.shape[-1] - self.padding_right]
        if self.padding_left:
            raise NotImplementedError("streaming needs all transposed-conv trimming on the right")
        stride = self.conv.stride[0]
        # Without the bias: the overhang is added into the next chunk, which adds its own bias.
        y = self.unbiased(x)
        carry = state.get(self)
        if carry is not None:
            y = torch.cat([y[..., : carry.shape[-1]] + carry, y[..., carry.shape[-1]:]], dim=-1)
        done = x.shape[-1] * stride  # outputs no later frame can touch
        state[self] = y[..., done:]
        out = y[..., :done]
        if self.conv.bias is not None:
            out = out + self.conv.bias[:, None]
        return out


class MimiResnetBlock(nn.Module):
    """x + Conv1(ELU(ConvK(ELU(x)))) with a `compress`-times narrower middle (SEANet)."""

    def __init__(self, config: MimiConfig, dim: int, dilations: tuple[int, int]) -> None:
        super().__init__()
        hidden = dim // config.compress
        self.block = nn.ModuleList([
            nn.ELU(),
            MimiConv1d(config, dim, hidden, config.residual_kernel_size, dilation=dilations[0]),
            nn.ELU(),
            MimiConv1d(config, hidden, dim, 1, dilation=dilations[1]),
        ])
        self.shortcut = MimiConv1d(config, dim, dim, 1) if config.use_conv_shortcut else nn.Identity()

    def forward(self, x: torch.Tensor, state: State = None) -> torch.Tensor:  # (B, C, L)
        y = x
        for layer in self.block:
            y = layer(y, state) if isinstance(layer, MimiConv1d) else layer(y)
        skip = self.shortcut(x, state) if isinstance(self.shortcut, MimiConv1d) else x
        return skip + y


class _Stack(nn.Module):
    """Runs `layers` in order, passing the streaming state to the ones that keep time."""

    def forward(self, x: torch.Tensor, state: State = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x) if isinstance(layer, nn.ELU) else layer(x, state)
        return x


class MimiEncoder(_Stack):
    """SEANet encoder: waveform (B, channels, N) -> (B, hidden, N / prod(ratios))."""

    def __init__(self, config: MimiConfig) -> None:
        super().__init__()
        nf = config.num_filters
        layers: list[nn.Module] = [MimiConv1d(config, config.audio_channels, nf, config.kernel_size)]
        scale = 1
        for ratio in reversed(config.upsampling_ratios):
            dim = scale * nf
            for j in range(config.num_residual_layers):
                layers.append(MimiResnetBlock(config, dim, (config.dilation_growth_rate**j, 1)))
            layers += [nn.ELU(), MimiConv1d(config, dim, dim * 2, ratio * 2, stride=ratio)]
            scale *= 2
        layers += [nn.ELU(), MimiConv1d(config, scale * nf, config.hidden_size, config.last_kernel_size)]
        self.layers = nn.ModuleList(layers)


class MimiDecoder(_Stack):
    """SEANet decoder: (B, hidden, T) -> waveform (B, channels, T * prod(ratios)); no final tanh."""

    def __init__(self, config: MimiConfig) -> None:
        super().__init__()
        nf = config.num_filters
        scale = 2 ** len(config.upsampling_ratios)
        layers: list[nn.Module] = [MimiConv1d(config, config.hidden_size, scale * nf, config.kernel_size)]
        for ratio in config.upsampling_ratios:
            dim = scale * nf
            layers += [nn.ELU(), MimiConvTranspose1d(config, dim, dim // 2, ratio * 2, ratio)]
            for j in range(config.num_residual_layers):
                layers.append(MimiResnetBlock(config, dim // 2, (config.dilation_growth_rate**j, 1)))
            scale //= 2
        layers += [nn.ELU(), MimiConv1d(config, nf, config.audio_channels, config.last_kernel_size)]
        self.layers = nn.ModuleList(layers)


# --------------------------------------------------------------------------------------------
# Transformer
# --------------------------------------------------------------------------------------------


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class MimiLayerScale(nn.Module):
    """A learnt per-channel gain on each residual branch."""

    def __init__(self, config: MimiConfig) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((config.hidden_size,), config.layer_scale_initial_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class MimiAttention(nn.Module):
    """Causal multi-head attention over the last `sliding_window` positions (itself included)."""

    def __init__(self, config: MimiConfig) -> None:
        super().__init__()
        h, kv, d, bias = config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.attention_bias
        self.n_heads, self.n_kv, self.head_dim = h, kv, d
        self.window = config.sliding_window
        self.q_proj = nn.Linear(config.hidden_size, h * d, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, kv * d, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, kv * d, bias=bias)
        self.o_proj = nn.Linear(h * d, config.hidden_size, bias=bias)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int, state: State = None
    ) -> torch.Tensor:  # (B, L, D) -> (B, L, D); `start` = absolute position of x[:, 0]
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, L, d)
        k = self.k_proj(x).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        past = 0
        if state is not None:
            if self in state:
                k_old, v_old = state[self]
                past = k_old.shape[2]
                k, v = torch.cat([k_old, k], dim=2), torch.cat([v_old, v], dim=2)
            # Queries from now on reach back at most window - 1 positions.
            keep = max(0, k.shape[2] - (self.window - 1))
            state[self] = (k[:, :, keep:], v[:, :, keep:])
        if self.n_kv != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        q_pos = torch.arange(start, start + n, device=x.device)[:, None]
        k_pos = torch.arange(start - past, start + n, device=x.device)[None, :]
        mask = (k_pos <= q_pos) & (k_pos > q_pos - self.window)  # (L, past + L)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # scale 1/sqrt(d), as transformers
        return self.o_proj(y.transpose(1, 2).reshape(b, n, -1))


class MimiMLP(nn.Module):
    """fc2(act(fc1(x))), no biases."""

    def __init__(self, config: MimiConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = _ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MimiTransformerLayer(nn.Module):
    """Pre-LayerNorm block: x + scale * attn(LN(x)), then x + scale * mlp(LN(x))."""

    def __init__(self, config: MimiConfig) -> None:
        super().__init__()
        self.self_attn = MimiAttention(config)
        self.mlp = MimiMLP(config)
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.self_attn_layer_scale = MimiLayerScale(config)
        self.mlp_layer_scale = MimiLayerScale(config)

    def forward(self, x, cos, sin, start: int, state: State = None) -> torch.Tensor:  # (B, L, D)
        x = x + self.self_attn_layer_scale(self.self_attn(self.input_layernorm(x), cos, sin, start, state))
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class MimiTransformer(nn.Module):
    """`num_hidden_layers` layers; RoPE positions count from the first step ever seen."""

    def __init__(self, config: MimiConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MimiTransformerLayer(config) for _ in range(config.num_hidden_layers))
        self.head_dim = config.head_dim
        self.rope_theta = config.rope_theta

    def forward(self, x: torch.Tensor, state: State = None) -> torch.Tensor:  # (B, C, L) -> (B, C, L)
        x = x.transpose(1, 2)  # (B, L, C)
        start = 0 if state is None else state.get(self, 0)
        if state is not None:
            state[self] = start + x.shape[1]
        # Computed on the fly (no table), so positions past max_position_embeddings still work.
        inv_freq = 1.0 / (self.rope_theta ** (torch.arange(0, self.head_dim, 2, device=x.device).float() / self.head_dim))
        freqs = torch.arange(start, start + x.shape[1], device=x.device).float()[:, None] * inv_freq  # (L, d/2)
        angles = torch.cat([freqs, freqs], dim=-1)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, start, state)
        return x.transpose(1, 2)


# --------------------------------------------------------------------------------------------
# Whole codec
# --------------------------------------------------------------------------------------------


class MimiModel(nn.Module):
    """Encoder + quantizer + decoder; state-dict keys equal transformers' saved `MimiModel`."""

    def __init__(self, config: MimiConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = MimiEncoder(config)
        self.encoder_transformer = MimiTransformer(config)
        self.downsample = self.upsample = None
        if config.has_resample:
            s = config.latent_stride
            self.downsample = MimiConv1d(
                config, config.hidden_size, config.hidden_size, 2 * s, stride=s, bias=False, pad_mode="replicate"
            )
            self.upsample = MimiConvTranspose1d(
                config, config.hidden_size, config.hidden_size, 2 * s, s, groups=config.upsample_groups, bias=False
            )
        self.decoder_transformer = MimiTransformer(config)
        self.decoder = MimiDecoder(config)
        self.quantizer = MimiSplitResidualVectorQuantizer(config)

    def encode(self, wave: torch.Tensor) -> torch.Tensor:  # (B, channels, N) -> (B, n_q, ceil(N / hop))
        z = self.encoder_transformer(self.encoder(wave))
        if self.downsample is not None:
            z = self.downsample(z)
        return self.quantizer.encode(z)

    def decode(self, codes: torch.Tensor, state: State = None) -> torch.Tensor:
        """(B, n_q, T) -> (B, channels, T * hop); with `state`, continues a streamed decode."""
        z = self.quantizer.decode(codes)
        if self.upsample is not None:
            z = self.upsample(z, state)
        return self.decoder(self.decoder_transformer(z, state), state)


__all__ = ["DEFAULT_MODEL", "MimiConfig", "MimiModel"]
