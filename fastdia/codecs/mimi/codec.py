"""The Mimi codec facade (`Mimi`: numpy in/out, loading, device and dtype) and its stateful
streaming decoder (`MimiStream`); the math is in `model.py` (its quantizer in `quantizer.py`).

Checkpoints are transformers' layout (`config.json` + `model.safetensors`, the flat names that
`MimiModel.save_pretrained` and the `kyutai/mimi` hub repo use) and load strictly: every tensor
the model holds must be present with its shape, and nothing else may be.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ...backends.cpu.codec_ops import accelerate_codec
from ...backends.device import resolve_device, resolve_dtype
from ...hub import build_on_meta, read_safetensors_files, shape_problems
from ...errors import AudioError, CheckpointError
from .model import DEFAULT_MODEL, MimiConfig, MimiConvTranspose1d, MimiModel

Tensors = dict[str, torch.Tensor]

PRESETS: dict[str, MimiConfig] = {
    # A few hundred KB of random weights with the release's rates (24 kHz, hop 1920, 2048-entry
    # codebooks), so tests and offline runs get audio of the right length.
    "mimi-tiny-random": MimiConfig(
        hidden_size=32,
        num_filters=4,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        num_quantizers=8,
        codebook_dim=16,
        vector_quantization_hidden_dimension=16,
        upsample_groups=32,
    ),
    # The released architecture (32 codebooks) with random weights: what dia2-2b-random decodes
    # through in benchmarks, at the real codec's cost, without a download.
    "mimi-random": MimiConfig(),
}
PRESET_SEED = 0  # fixed so every run builds the same random codec


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def choose_files(filenames: Sequence[str]) -> list[str]:
    """What to download from a hub repo: the config and the safetensors weights."""
    return ["config.json", "*.safetensors"]


def read_checkpoint_dir(directory: Path) -> tuple[MimiConfig, Tensors]:
    """Read `config.json` and every `*.safetensors` of a transformers-layout directory.

    Args:
        directory: the folder.

    Returns:
        (config, raw tensors). Raises CheckpointError when a file is missing or unreadable.
    """

    config_path = directory / "config.json"
    try:
        data = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no config.json in Mimi codec directory {directory}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read codec config {config_path}: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"codec config {config_path} is not a JSON object")
    config = MimiConfig.from_dict(data)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no Mimi weights in {directory}: expected model.safetensors next to config.json")
    return config, read_safetensors_files(files)


def expected_shapes(config: MimiConfig) -> dict[str, torch.Size]:
    """Names and shapes of every tensor (parameters and saved buffers) of a `MimiModel`."""
    with torch.device("meta"):
        net = MimiModel(config)
    return {k: v.shape for k, v in net.state_dict().items()}


def check_state_dict(state: Mapping[str, torch.Tensor], config: MimiConfig, source: str = "checkpoint") -> None:
    """Raise CheckpointError naming every missing, unexpected or mis-shaped tensor."""
    problems = shape_problems(expected_shapes(config), {k: v.shape for k, v in state.items()})
    if problems:
        raise CheckpointError(
            f"Mimi checkpoint {source} does not match its config (hidden_size={config.hidden_size}, "
            f"num_quantizers={config.num_quantizers}): " + " | ".join(problems)
        )


def build_model(
    config: MimiConfig, state: Mapping[str, torch.Tensor], device: torch.device, dtype: torch.dtype,
    source: str = "checkpoint",
) -> MimiModel:
    """Strictly load `state` into a new `MimiModel` on `device` in `dtype` (eval mode, no grads)."""
    check_state_dict(state, config, source)
    return build_on_meta(lambda: MimiModel(config), state, device, dtype)


def random_state_dict(config: MimiConfig, seed: int = PRESET_SEED) -> Tensors:
    """Deterministic random weights with sane scales, drawn on the CPU in sorted-name order.

    Transformers' own init leaves the codebooks at zero (embed_sum = 0), which would make every
    code decode to the same latent; here each codebook entry is a distinct random vector.
    """
    from .model import MimiConvTranspose1d

    with torch.device("meta"):
        net = MimiModel(config)
    # A transposed conv's output sample sees (in / groups) channels x (kernel / stride) taps.
    transposed_fan_in = {
        f"{name}.conv.weight": m.conv.in_channels // m.conv.groups * 2
        for name, m in net.named_modules()
        if isinstance(m, MimiConvTranspose1d)
    }
    last_conv = f"decoder.layers.{len(net.decoder.layers) - 1}.conv.weight"
    gen = torch.Generator().manual_seed(seed)
    out: Tensors = {}
    for name, value in sorted(net.state_dict().items()):
        shape = value.shape
        if name.endswith(("initialized", "cluster_usage")):
            t = torch.ones(shape)
        elif name.endswith("embed_sum"):
            t = torch.randn(shape, generator=gen)
        elif name.endswith("layer_scale.scale"):
            t = torch.full(shape, 0.1)
        elif "layernorm" in name:
            t = torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
        elif name.endswith(".bias"):
            t = torch.randn(shape, generator=gen) * 0.02
        else:
            fan_in = transposed_fan_in.get(name) or int(np.prod(shape[1:]))
            t = torch.randn(shape, generator=gen) / fan_in**0.5
            if name == last_conv:
                t = t * 0.05  # the SEANet decoder has no tanh: keep the waveform mostly in [-1, 1]
        out[name] = t
    return out


def load_model(model: str | Path, device: torch.device, dtype: torch.dtype) -> MimiModel:
    """Build a `MimiModel` from a preset, a local directory or a hub id."""
    from ...hub import resolve_dir

    name = str(model)
    if name in PRESETS:
        config = PRESETS[name]
        return build_model(config, random_state_dict(config), device, dtype, source=name)
    directory = resolve_dir(name, choose_files, what="codec")
    config, state = read_checkpoint_dir(directory)
    return build_model(config, state, device, dtype, source=str(directory))


def save_transformers_layout(model: Any, config: MimiConfig, directory: str | Path) -> Path:
    """Write `config.json` + `model.safetensors` as transformers' `MimiModel` names them.

    Args:
        model: a state dict, a `MimiModel` or a `Mimi`.
        config: the codec config.
        directory: created if needed.

    Returns:
        The directory.
    """
    from safetensors.torch import save_file

    if isinstance(model, Mimi):
        model = model.model
    if isinstance(model, torch.nn.Module):
        model = model.state_dict()
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config.to_transformers_dict(), indent=2) + "\n")
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


# --------------------------------------------------------------------------------------------
# Facade
# --------------------------------------------------------------------------------------------


def accelerate(model: MimiModel) -> int:
    """Route a float32 CPU Mimi's convolutions (its streaming transposed ones too) and its
    transformer's projections through fastdia's CPU paths (fastdia.backends.cpu.codec_ops)."""
    return accelerate_codec(model, streamed_type=MimiConvTranspose1d, linears=True)


class Mimi:
    """The Mimi codec with numpy in/out. Build it with `Mimi.from_pretrained`.

    Attributes:
        config: the `MimiConfig`.
        sample_rate: waveform rate (24000).
        frame_rate: code frames per second (12.5).
        hop_length: samples per code frame (1920).
        n_codebooks: codes per frame (32 for the release).
        device, dtype: where and in which precision it computes.
        model: the underlying `MimiModel`.
    """

    def __init__(self, model: MimiModel, device: torch.device, dtype: torch.dtype) -> None:
        self.model = model.eval().requires_grad_(False)
        if device.type == "cpu" and dtype == torch.float32:
            accelerate(self.model)
        self.config: MimiConfig = model.config
        self.device, self.dtype = device, dtype
        self.sample_rate: int = self.config.sampling_rate
        self.frame_rate: float = float(self.config.frame_rate)
        self.hop_length: int = self.config.hop_length
        self.n_codebooks: int = self.config.num_quantizers
        self._codec_id: str | None = None

    def __repr__(self) -> str:
        return (
            f"Mimi(sample_rate={self.sample_rate}, hop_length={self.hop_length}, "
            f"n_codebooks={self.n_codebooks}, device={self.device}, dtype={self.dtype})"
        )

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path = DEFAULT_MODEL,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
    ) -> "Mimi":
        """Load a Mimi codec.

        Args:
            model: a hub id ("kyutai/mimi"), a local directory (config.json + model.safetensors
                as transformers writes them) or the preset "mimi-tiny-random".
            device: "auto" (cuda if available), "cpu", "cuda", ...
            dtype: "auto" (bf16 on CUDA, fp32 on CPU) or a dtype name / torch dtype.

        Returns:
            The codec.

        Raises:
            CheckpointError: missing, unexpected or mis-shaped tensors, or a bad config.
            ModelNotFoundError: `model` is not local and the hub cannot provide it.
        """
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        return cls(load_model(model, dev, dt), dev, dt)

    @property
    def codec_id(self) -> str:
        """A stable id of these weights ("mimi-<16 hex>"): a hash of the codebooks, which give the
        codes their meaning, rounded to bfloat16 so fp32 and bf16 loads of one checkpoint agree."""
        if self._codec_id is None:
            h = hashlib.sha256()
            for codebook in self.model.quantizer.codebooks():
                # Round the stored statistics first, then divide in fp32: a bf16 load holds just
                # those rounded values, so both loads hash the same bytes.
                total = codebook.embed_sum.detach().to(torch.bfloat16).float()
                usage = codebook.cluster_usage.detach().to(torch.bfloat16).float()
                w = (total / usage.clamp(min=1e-5)[:, None]).to(torch.bfloat16).float()
                h.update(w.cpu().numpy().tobytes())
            self._codec_id = "mimi-" + h.hexdigest()[:16]
        return self._codec_id

    # -- torch level ------------------------------------------------------------------------

    @torch.inference_mode()
    def decode_tensor(self, codes: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """Decode (B, n_codebooks, T) codes into (B, channels, T * hop_length) audio.

        Args:
            codes: integer codes in 0..codebook_size-1 (checked by `decode`, not here).
            state: a streaming state dict (see `MimiStream`), or None for a one-shot decode.

        Returns:
            Audio in the codec dtype on the codec device.
        """
        return self.model.decode(codes.to(self.device, torch.long), state)

    @torch.inference_mode()
    def encode_tensor(self, wave: torch.Tensor) -> torch.Tensor:
        """Encode (B, channels, N) audio at `sample_rate` into (B, n_codebooks, ceil(N / hop)) codes."""
        return self.model.encode(wave.to(self.device, self.dtype))

    # -- numpy level ------------------------------------------------------------------------

    def decode(self, codes: Any) -> np.ndarray:
        """Decode codes into a waveform.

        Args:
            codes: int array/tensor [T, n_codebooks] (time-major, Dia's layout) or [B, T, n_codebooks].

        Returns:
            np.float32 [T * hop_length] (or [B, T * hop_length]) for mono codecs.
        """
        arr = _as_int(codes, "codes")
        single = arr.ndim == 2
        batch = arr[None] if single else arr
        if batch.ndim != 3:
            raise AudioError(f"codes must have shape [T, {self.n_codebooks}] or [B, T, {self.n_codebooks}]; "
                             f"got {list(arr.shape)}")
        self._check_codes(batch)
        if batch.shape[1] == 0:
            empty = np.zeros((batch.shape[0], 0), np.float32)
            return empty[0] if single else empty
        wave = self.decode_tensor(torch.from_numpy(batch).transpose(1, 2))  # (B, C, N)
        out = _channels_last(wave)
        return out[0] if single else out

    def _check_codes(self, batch: np.ndarray) -> None:
        if batch.shape[-1] != self.n_codebooks:
            raise AudioError(f"codes must have {self.n_codebooks} codebooks in the last axis; got {list(batch.shape)}")
        if batch.size and (batch.min() < 0 or batch.max() >= self.config.codebook_size):
            # Unlike DAC, no silent replacement: an out-of-range id here is a pad/BOS leak (pitfall 19).
            raise AudioError(f"Mimi codes must be in 0..{self.config.codebook_size - 1}; "
                             f"got values {int(batch.min())}..{int(batch.max())}")

    def encode(self, wave: Any, sample_rate: int) -> np.ndarray:
        """Encode a waveform into codes.

        Args:
            wave: float array/tensor [N] or [N, channels]; averaged to mono and resampled to
                `sample_rate` of the codec (soxr).
            sample_rate: rate of `wave` in Hz.

        Returns:
            np.int64 [T, n_codebooks] with T = ceil(N' / hop_length), N' the resampled length:
            the encoder zero-pads the last partial frame, as transformers does.
        """
        from ...audio import resample, to_mono

        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise AudioError(f"sample_rate must be a positive integer number of Hz; got {sample_rate!r}")
        if isinstance(wave, torch.Tensor):
            wave = wave.detach().float().cpu().numpy()
        arr = np.asarray(wave)
        if arr.dtype.kind != "f":
            raise AudioError(f"wave must be a float waveform in [-1, 1]; got dtype {arr.dtype}")
        mono = resample(to_mono(arr), int(sample_rate), self.sample_rate)
        if mono.shape[0] == 0:
            raise AudioError("wave is empty; nothing to encode")
        if not np.isfinite(mono).all():
            raise AudioError("wave contains NaN or infinite samples")
        x = torch.from_numpy(np.ascontiguousarray(mono))[None, None]  # (1, 1, N)
        if self.config.audio_channels != 1:
            x = x.expand(-1, self.config.audio_channels, -1)
        codes = self.encode_tensor(x)[0]  # (n_q, T)
        return np.ascontiguousarray(codes.T.cpu().numpy().astype(np.int64))

    def stream(self) -> "MimiStream":
        """A stateful streaming decoder (see `MimiStream`)."""
        return MimiStream(self)


class MimiStream:
    """Decode codes that arrive a few frames at a time; every push returns the audio of exactly
    the frames pushed.

    Mimi's decoder is causal, so a frame's audio never waits for later frames. The stream keeps
    what one-shot decoding would have seen so far: each causal conv's last inputs (starting as
    the zeros a one-shot pass pads with), each transposed conv's overhanging outputs, and the
    decoder transformer's keys/values for its sliding window plus the position count for RoPE.
    Joined output equals `Mimi.decode` of all codes to float rounding (~1e-6) for any split.

    Args:
        codec: the Mimi.
    """

    def __init__(self, codec: Mimi) -> None:
        self.codec = codec
        self.state: dict = {}
        self.frames = 0  # frames pushed so far
        self._finished = False

    def push(self, codes: Any) -> np.ndarray:
        """Decode the next frames.

        Args:
            codes: int [n, n_codebooks] (n may be 0).

        Returns:
            np.float32 [n * hop_length] (or [n * hop_length, channels] for a stereo codec).
        """
        if self._finished:
            raise AudioError("this Mimi stream is finished; start a new one with mimi.stream()")
        arr = _as_int(codes, "codes")
        if arr.ndim != 2:
            raise AudioError(f"codes must have shape [n, {self.codec.n_codebooks}]; got {list(arr.shape)}")
        self.codec._check_codes(arr[None])
        if arr.shape[0] == 0:
            return np.zeros(0, np.float32)
        wave = self.codec.decode_tensor(torch.from_numpy(arr).T[None], self.state)
        self.frames += arr.shape[0]
        return _channels_last(wave)[0]

    def finish(self) -> np.ndarray:
        """End the stream. Nothing is held back (the decoder is causal), so this returns no audio;
        it drops the state and makes later pushes an error."""
        self._finished = True
        self.state = {}
        return np.zeros(0, np.float32)


def _channels_last(wave: torch.Tensor) -> np.ndarray:
    """(B, C, N) torch -> np.float32 (B, N) for mono, (B, N, C) otherwise."""
    out = wave.float().cpu().numpy()
    out = out[:, 0] if out.shape[1] == 1 else out.transpose(0, 2, 1)
    return np.ascontiguousarray(out, dtype=np.float32)


def _as_int(codes: Any, name: str) -> np.ndarray:
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().numpy()
    try:
        arr = np.asarray(codes)
    except (TypeError, ValueError) as exc:
        raise AudioError(f"{name} must be an integer array; {exc}") from None
    if arr.dtype.kind not in "iu":
        raise AudioError(f"{name} must hold integer codes; got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


__all__ = ["Mimi", "MimiStream", "MimiConfig", "MimiModel", "PRESETS", "save_transformers_layout"]
