"""The DAC codec facade (`DAC`: numpy in/out, validation, batching, device and dtype) and its
streaming decoder (`DACStream`); the math is in `model.py`, checkpoint layouts in `weights.py`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...backends.cpu.codec_ops import accelerate_codec
from ...backends.device import resolve_device, resolve_dtype
from ...audio import ramp_chunk
from ...errors import AudioError
from . import weights as dac_weights
from .model import DEFAULT_MODEL, PRESETS, DACConfig, DACModel, Snake1d, preset

# --------------------------------------------------------------------------------------------
# Facade
# --------------------------------------------------------------------------------------------


def accelerate(model: DACModel) -> int:
    """Route a float32 CPU DAC's convolutions and Snakes through fastdia's CPU paths
    (fastdia.backends.cpu.codec_ops); returns how many modules were routed."""
    return accelerate_codec(model, Snake1d)


class DAC:
    """The DAC codec with numpy in/out. Build it with `DAC.from_pretrained`.

    Attributes:
        config: the `DACConfig`.
        sample_rate: waveform rate (44100 for the released model).
        hop_length: samples per code frame (512).
        device, dtype: where and in which precision it computes.
        model: the underlying `DACModel` (torch module, eval mode, no grads).
    """

    def __init__(self, model: DACModel, device: torch.device, dtype: torch.dtype) -> None:
        self.model = model.eval().requires_grad_(False)
        if device.type == "cpu" and dtype == torch.float32:
            accelerate(self.model)
        self.config: DACConfig = model.config
        self.device = device
        self.dtype = dtype
        self.sample_rate: int = self.config.sample_rate
        self.hop_length: int = self.config.hop_length

    def __repr__(self) -> str:
        return (
            f"DAC(sample_rate={self.sample_rate}, hop_length={self.hop_length}, "
            f"device={self.device}, dtype={self.dtype})"
        )

    @property
    def codec_id(self) -> str:
        """A stable id of these weights ("dac-<16 hex>"): saved voices record it, because codes
        made by one codec mean nothing to another. It hashes the codebooks (what gives codes
        their meaning), so two loads of the same checkpoint agree and different weights do not."""
        if getattr(self, "_codec_id", None) is None:
            import hashlib

            h = hashlib.sha256()
            for q in self.model.quantizer.quantizers:
                # Rounded to bfloat16 first: a codec loaded in bfloat16 (on CUDA) and the same
                # checkpoint in float32 (on CPU) must give the same id.
                w = q.codebook.weight.detach().to(torch.bfloat16).float()
                h.update(w.cpu().numpy().tobytes())
            self._codec_id = "dac-" + h.hexdigest()[:16]
        return self._codec_id

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path = DEFAULT_MODEL,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
    ) -> "DAC":
        """Load a DAC codec.

        Args:
            model: a hub id ("descript/dac_44khz"), a local directory (transformers layout:
                config.json + model.safetensors, or a descript .pth), a path to a descript .pth
                file, or a preset: "tiny-random" (random weights from a fixed seed) or
                "dac-44khz" (an alias of "descript/dac_44khz").
            device: "auto" (cuda if available), "cpu", "cuda", ...
            dtype: "auto" (bf16 on CUDA, fp32 on CPU), "float32", "bfloat16", "float16" or a
                torch dtype.

        Returns:
            The codec, ready for `encode`/`decode`.

        Raises:
            CheckpointError: the checkpoint is broken (missing/unexpected/mis-shaped tensors).
            ModelNotFoundError: `model` cannot be found locally or on the hub.
        """
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        net = dac_weights.load_model(model, dev, dt)
        return cls(net, dev, dt)

    # -- torch level ------------------------------------------------------------------------

    @torch.inference_mode()
    def decode_tensor(self, codes: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Decode a batch of codes.

        Args:
            codes: (B, n_codebooks, T) integer codes; values outside 0..codebook_size-1
                are replaced by 0.
            lengths: optional (B,) number of valid frames per item; positions past it are
                ignored, so each item's output equals decoding it alone.

        Returns:
            (B, 1, T * hop_length) waveform in the codec dtype on the codec device.
        """
        codes = codes.to(self.device, torch.long)
        # Out-of-range codes become 0 like the reference (spec 5.6); torch.where keeps it on
        # the device with no host sync, so streaming/graph callers pay nothing.
        bad = (codes < 0) | (codes >= self.config.codebook_size)
        codes = torch.where(bad, torch.zeros_like(codes), codes)
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=self.device, dtype=torch.long)
        wave, _ = self.model.decode(codes, lengths)
        return wave

    # The decoder's receptive field is about +-10 frames (`context_frames`: kernel-7 convs at the
    # frame rate and dilated residual units after the first upsampling); 16 frames of context on
    # each side of a window make its centre identical to decoding everything at once.
    CHUNK_FRAMES = 512
    CHUNK_MARGIN = 16

    @property
    def context_frames(self) -> int:
        """Frames of context each side of a window needs for its centre to equal a one-shot decode."""
        return receptive_frames(self.config)

    def stream(self, chunk_frames: int = 43, max_chunk_frames: int | None = None) -> "DACStream":
        """A streaming decoder: push codes as they come, get the audio that is final (see DACStream)."""
        return DACStream(self, chunk_frames, max_chunk_frames)

    @torch.inference_mode()
    def decode_chunked(
        self,
        codes: torch.Tensor,
        lengths: torch.Tensor | None = None,
        chunk: int | None = None,
        margin: int | None = None,
    ) -> torch.Tensor:
        """`decode_tensor` in overlapping windows of `chunk` frames, so memory stays bounded
        (a one-shot 30 s decode needs ~0.5 GB per activation tensor); same result.

        Args:
            codes: (B, n_codebooks, T); lengths: optional (B,) valid frames per item.
            chunk, margin: window and context sizes in frames (defaults CHUNK_FRAMES, CHUNK_MARGIN).

        Returns:
            (B, 1, T * hop_length).
        """
        chunk = chunk or self.CHUNK_FRAMES
        margin = self.CHUNK_MARGIN if margin is None else margin
        t = codes.shape[-1]
        if t <= chunk + 2 * margin:
            return self.decode_tensor(codes, lengths)
        hop = self.hop_length
        if lengths is not None:
            lengths = torch.as_tensor(lengths, dtype=torch.long)
        pieces = []
        for a in range(0, t, chunk):
            b = min(a + chunk, t)
            s, e = max(0, a - margin), min(t, b + margin)
            window_lengths = None if lengths is None else (lengths - s).clamp(0, e - s)
            wave = self.decode_tensor(codes[..., s:e], window_lengths)
            pieces.append(wave[..., (a - s) * hop:(b - s) * hop])
        return torch.cat(pieces, dim=-1)

    @torch.inference_mode()
    def encode_tensor(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Encode a batch of waveforms at `sample_rate`.

        Args:
            wave: (B, 1, N) with N a multiple of hop_length.
            lengths: optional (B,) valid samples per item (multiples of hop_length).

        Returns:
            (B, n_codebooks, N / hop_length) int64 codes.
        """
        wave = wave.to(self.device, self.dtype)
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=self.device, dtype=torch.long)
        return self.model.encode(wave, lengths)

    # -- numpy level ------------------------------------------------------------------------

    def decode(self, codes: Any) -> Any:
        """Decode codes into a waveform.

        Args:
            codes: int array/tensor [T, n_codebooks] (Dia's layout), a list of such arrays
                (decoded as one padded batch), or an array [B, T, n_codebooks]. Values outside
                0..codebook_size-1 are replaced by 0, as the reference does.

        Returns:
            np.float32 [T * hop_length] for one item, a list of those for a list, or
            np.float32 [B, T * hop_length] for a 3-D array.
        """
        if isinstance(codes, (list, tuple)):
            items = [self._check_codes(c, f"codes[{i}]") for i, c in enumerate(codes)]
            return self._decode_items(items)
        arr = _as_numpy_int(codes, "codes")
        if arr.ndim == 3:
            return np.stack(self._decode_items([self._check_codes(a, f"codes[{i}]") for i, a in enumerate(arr)]))
        return self._decode_items([self._check_codes(arr, "codes")])[0]

    def _check_codes(self, codes: Any, name: str) -> np.ndarray:
        arr = _as_numpy_int(codes, name)
        n_q = self.config.n_codebooks
        if arr.ndim != 2 or arr.shape[1] != n_q:
            raise AudioError(f"{name} must have shape [T, {n_q}] (frames x codebooks); got {list(arr.shape)}")
        arr = arr.astype(np.int64, copy=True)
        arr[(arr < 0) | (arr >= self.config.codebook_size)] = 0
        return arr

    def _decode_items(self, items: list[np.ndarray]) -> list[np.ndarray]:
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(items)
        live = [i for i, a in enumerate(items) if a.shape[0] > 0]
        if not live:
            return out
        frames = [items[i].shape[0] for i in live]
        t_max = max(frames)
        batch = np.zeros((len(live), t_max, self.config.n_codebooks), np.int64)
        for row, i in enumerate(live):
            batch[row, : frames[row]] = items[i]
        codes = torch.from_numpy(batch).transpose(1, 2)  # (B, n_q, T)
        # Masks are only needed when the items differ in length.
        lengths = None if len(set(frames)) == 1 else torch.tensor(frames)
        wave = self.decode_chunked(codes, lengths)[:, 0].float().cpu().numpy()  # (B, N)
        for row, i in enumerate(live):
            out[i] = np.ascontiguousarray(wave[row, : self._samples_for(frames[row])])
        return out

    def _samples_for(self, frames: int) -> int:
        """Decoder output length for `frames` frames (frames * hop for even strides)."""
        n = frames
        for s in self.config.decoder_rates:
            n = (n - 1) * s - 2 * math.ceil(s / 2) + 2 * s
        return n

    def encode(self, wave: Any, sample_rate: int) -> Any:
        """Encode a waveform into codes.

        Args:
            wave: float array/tensor [N] or [N, channels] (soundfile's layout), or a list of
                them (encoded as one padded batch). Channels are averaged to mono, the audio is
                resampled to `sample_rate` of the codec and right-padded with zeros to a
                multiple of hop_length.
            sample_rate: rate of `wave` in Hz.

        Returns:
            np.int64 [T, n_codebooks] with T = ceil(N' / hop_length) (N' = resampled length);
            a list of those for a list.
        """
        from ...audio import resample, to_mono

        if isinstance(wave, (list, tuple)):
            waves, single = list(wave), False
        else:
            waves, single = [wave], True
        if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise AudioError(f"sample_rate must be a positive integer number of Hz; got {sample_rate!r}")
        prepared = []
        for i, w in enumerate(waves):
            name = "wave" if single else f"wave[{i}]"
            mono = to_mono(_as_numpy_float(w, name))
            if mono.shape[0] == 0:
                raise AudioError(f"{name} is empty; nothing to encode")
            prepared.append(resample(mono, int(sample_rate), self.sample_rate))
        hop = self.hop_length
        frames = [max(1, -(-len(w) // hop)) for w in prepared]
        batch = np.zeros((len(prepared), 1, max(frames) * hop), np.float32)
        for row, w in enumerate(prepared):
            batch[row, 0, : len(w)] = w
        lengths = None if len(set(frames)) == 1 else torch.tensor(frames) * hop
        codes = self.encode_tensor(torch.from_numpy(batch), lengths).cpu().numpy()  # (B, n_q, T)
        result = [np.ascontiguousarray(codes[row, :, : frames[row]].T.astype(np.int64)) for row in range(len(prepared))]
        return result[0] if single else result


def receptive_frames(config: DACConfig) -> int:
    """How many frames either side of a frame can change its audio, rounded up (+1 for safety).

    Walks the decoder: the kernel-7 conv at the frame rate (3 frames), then per upsampling block
    the transposed conv (one input frame of its rate) and the residual units' dilated kernel-7
    convs (3 * (1 + 3 + 9) samples of its output rate), then the final kernel-7 conv.
    """
    frames, rate = 3.0, 1  # reach in frames; samples per frame at the current stage
    for stride in config.decoder_rates:
        frames += 1.0 / rate
        rate *= stride
        frames += 3 * (1 + 3 + 9) / rate
    frames += 3 / rate
    return math.ceil(frames) + 1


class DACStream:
    """Decode codes that arrive a few frames at a time into audio that is final as it is returned.

    DAC is not causal: a frame's audio depends on `context` frames either side. Each window of
    `chunk_frames` new frames is decoded once `context` more frames exist after it, together with
    `context` frames before it, and only its centre is kept, so the joined output equals
    `DAC.decode` of all the codes (to float rounding, ~1e-6). `finish()` decodes the tail.

    Args:
        codec: the DAC.
        chunk_frames: frames of audio per returned piece (512 samples each; 43 is ~0.5 s).
        max_chunk_frames: if larger, later pieces grow (see `ramp_chunk`) up to this many frames:
            fewer, longer windows, so less context decoded twice and fewer calls.
    """

    def __init__(self, codec: DAC, chunk_frames: int = 43, max_chunk_frames: int | None = None) -> None:
        for name, value in (("chunk", chunk_frames), ("largest chunk", max_chunk_frames)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise AudioError(f"the stream {name} must be at least one frame, got {value!r}")
        self.codec, self.first_chunk = codec, chunk_frames
        self.max_chunk = max(chunk_frames, max_chunk_frames or chunk_frames)
        self.context = codec.context_frames
        n_q = codec.config.n_codebooks
        self._codes = np.zeros((0, n_q), np.int64)  # the unfinished tail: left context + pending frames
        self._offset = 0  # absolute index of self._codes[0]
        self._done = 0  # absolute frames whose audio was returned
        self.frames = 0  # frames pushed so far

    def push(self, codes: Any) -> list[np.ndarray]:
        """Add frames `[n, n_codebooks]`; returns the audio pieces (np.float32) now final, maybe none."""
        return decode_windows(self.codec, self.plan_push(codes))

    def finish(self) -> list[np.ndarray]:
        """The rest of the audio (the last window decoded up to the true end)."""
        return decode_windows(self.codec, self.plan_finish())

    def plan_push(self, codes: Any) -> list["Window"]:
        """`push` without the decoding: the windows to decode (`decode_windows`), in order. A
        scheduler gathers the windows of many streams and decodes them together."""
        arr = self.codec._check_codes(codes, "codes")
        if arr.shape[0]:
            self._codes = np.concatenate([self._codes, arr])
            self.frames += arr.shape[0]
        out = []
        while self.frames - self.context >= self._done + self.chunk:
            out.append(self._window(self._done + self.chunk, final=False))
        return out

    @property
    def chunk(self) -> int:
        """Frames of the next piece."""
        return ramp_chunk(self._done, self.first_chunk, self.max_chunk)

    def plan_finish(self) -> list["Window"]:
        """`finish` without the decoding."""
        out = []
        while self._done < self.frames:
            out.append(self._window(min(self._done + self.chunk, self.frames), final=True))
        return out

    def _window(self, end: int, final: bool) -> "Window":
        a, ctx, hop = self._done, self.context, self.codec.hop_length
        lo = max(0, a - ctx)
        hi = self.frames if final else min(self.frames, end + ctx)
        window = self._codes[lo - self._offset: hi - self._offset].copy()
        self._done = end
        keep = max(0, end - ctx) - self._offset  # what later windows still need as left context
        if keep > 0:
            self._codes, self._offset = self._codes[keep:], self._offset + keep
        return Window(window, (a - lo) * hop, (end - lo) * hop)


@dataclass(frozen=True, eq=False)
class Window:
    """Codes `(n, n_codebooks)` to decode, and the samples of the result that are final."""

    codes: np.ndarray
    start: int
    stop: int


def decode_windows(codec: DAC, windows: list[Window], batch: int = 1) -> list[np.ndarray]:
    """Decode stream windows (of one stream or many), `batch` at a time; audio pieces in order.

    Windows of equal length decode together in batches of exactly `batch` (the last one filled up
    with copies), so a window's audio never depends on which others shared its batch: a batch's
    shape decides the convolution kernels, and so the rounding. With batch 1 each window decodes
    alone. On CPU that is also the fastest (measured on a 2-core EPYC with the full-size DAC: 0.93 s
    for one 0.5 s window alone, 1.21 s each in twos, 1.58 s each in fours); on a GPU batches win.
    """
    out: list[np.ndarray | None] = [None] * len(windows)
    by_length: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        by_length.setdefault(w.codes.shape[0], []).append(i)
    for idx in by_length.values():
        for k in range(0, len(idx), batch):
            part = idx[k: k + batch]
            codes = np.stack([windows[i].codes for i in part] + [windows[part[0]].codes] * (batch - len(part)))
            wave = codec.decode_tensor(torch.from_numpy(codes).transpose(1, 2))[:, 0].float().cpu().numpy()
            for j, i in enumerate(part):
                out[i] = np.ascontiguousarray(wave[j, windows[i].start: windows[i].stop])
    return out


def _as_numpy_int(codes: Any, name: str) -> np.ndarray:
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().numpy()
    try:
        arr = np.asarray(codes)
    except (TypeError, ValueError) as exc:
        raise AudioError(f"{name} must be an integer array; {exc}") from None
    if arr.dtype.kind not in "iu":
        raise AudioError(f"{name} must hold integer codes; got dtype {arr.dtype}")
    return arr


def _as_numpy_float(wave: Any, name: str) -> np.ndarray:
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().float().cpu().numpy()
    try:
        arr = np.asarray(wave)
    except (TypeError, ValueError) as exc:
        raise AudioError(f"{name} must be a float array; {exc}") from None
    if arr.dtype.kind != "f":
        raise AudioError(
            f"{name} must be a float waveform in [-1, 1]; got dtype {arr.dtype} "
            "(divide int16 PCM by 32768)"
        )
    if arr.ndim not in (1, 2):
        raise AudioError(f"{name} must have shape [N] or [N, channels]; got {list(arr.shape)}")
    if arr.ndim == 2 and arr.shape[1] > 16:
        # A [channels, N] array (torchaudio's layout) would otherwise be read as N channels.
        raise AudioError(
            f"{name} has shape {list(arr.shape)}, read as {arr.shape[1]} channels; pass [N] or "
            "[N, channels] (soundfile's layout), e.g. transpose a [channels, N] array"
        )
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise AudioError(f"{name} contains NaN or infinite samples")
    return arr


__all__ = ["DAC", "DACStream", "Window", "decode_windows", "receptive_frames", "DACConfig", "DACModel", "PRESETS", "preset"]
