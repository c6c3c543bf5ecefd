"""Encoders for OpenAI's `response_format`s, fed chunk by chunk as audio becomes final.

Every format is produced progressively, so one encoder serves a whole-file response and a streamed
one (a client cannot tell us whether it reads the body as it arrives):

- `pcm`: raw 16-bit little-endian mono at 24 kHz, as OpenAI sends it (Dia-1's 44.1 kHz is resampled
  with soxr's streaming resampler, so chunk joins are seamless).
- `wav`: 16-bit PCM at the model's rate behind a header whose sizes are 0xFFFFFFFF ("unknown"),
  which players reading a stream accept (fastdia.audio's stdout stream does the same).
- `mp3`, `aac` (ADTS): PyAV. libsndfile cannot write AAC, and its MP3 writer patches a Xing header at
  offset 0 on close, which a stream cannot take back: decoders then trust the placeholder and stop
  early. Without the Xing frame a decoder also returns the encoder's delay/padding (~1-2k samples).
- `opus`: Ogg Opus through libsndfile, which emits a page about every second. Opus runs only at
  8/12/16/24/48 kHz, so 44.1 kHz audio is resampled to 48 kHz.
- `flac`: buffered and written whole at the end, so its header carries the exact length.
"""

from __future__ import annotations

import io
from typing import Protocol

import numpy as np

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
PCM_RATE = 24000  # OpenAI's pcm
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)

MEDIA_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


class StreamEncoder(Protocol):
    """Turns float32 mono chunks into the bytes of one audio file, in order."""

    sample_rate: int  # of the encoded audio

    def push(self, audio: np.ndarray) -> bytes: ...

    def finish(self) -> bytes: ...


def stream_encoder(fmt: str, sample_rate: int) -> StreamEncoder:
    """An encoder of format `fmt` for mono audio at `sample_rate` Hz.

    Raises:
        ValueError: `fmt` is not one of FORMATS.
    """
    if fmt == "pcm":
        return _PcmEncoder(sample_rate, PCM_RATE)
    if fmt == "wav":
        return _WavEncoder(sample_rate)
    if fmt == "flac":
        return _FlacEncoder(sample_rate)
    if fmt == "opus":
        return _OpusEncoder(sample_rate)
    if fmt in ("mp3", "aac"):
        return _AvEncoder(fmt, sample_rate)
    raise ValueError(f"unknown audio format {fmt!r}; use one of {', '.join(FORMATS)}")


def encode(fmt: str, audio: np.ndarray, sample_rate: int) -> bytes:
    """The whole file of `audio` in format `fmt`."""
    enc = stream_encoder(fmt, sample_rate)
    return enc.push(audio) + enc.finish()


def pcm16(audio: np.ndarray) -> bytes:
    """float [-1, 1] -> 16-bit little-endian bytes, with libsndfile's rounding (as fastdia.audio)."""
    data = np.clip(np.asarray(audio, dtype=np.float64), -1.0, 1.0)
    return np.clip(np.floor(data * 32768.0), -32768, 32767).astype("<i2").tobytes()


class _Resampler:
    """soxr's stateful resampler: chunks resampled one by one join exactly as the whole would."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        import soxr

        self._stream = None if rate_in == rate_out else soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32",
                                                                               quality="HQ")

    def push(self, audio: np.ndarray, last: bool = False) -> np.ndarray:
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if self._stream is None:
            return audio
        return np.asarray(self._stream.resample_chunk(audio, last=last), dtype=np.float32)


class _PcmEncoder:
    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.sample_rate = rate_out
        self._resampler = _Resampler(rate_in, rate_out)

    def push(self, audio: np.ndarray) -> bytes:
        return pcm16(self._resampler.push(audio))

    def finish(self) -> bytes:
        return pcm16(self._resampler.push(np.zeros(0, np.float32), last=True))


class _WavEncoder:
    def __init__(self, sample_rate: int) -> None:
        from ..audio import _wav_header

        self.sample_rate = sample_rate
        self._header = _wav_header(sample_rate)

    def push(self, audio: np.ndarray) -> bytes:
        head, self._header = self._header, b""
        return head + pcm16(audio)

    def finish(self) -> bytes:
        head, self._header = self._header, b""
        return head


class _FlacEncoder:
    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._chunks: list[np.ndarray] = []

    def push(self, audio: np.ndarray) -> bytes:
        self._chunks.append(np.asarray(audio, dtype=np.float32))
        return b""

    def finish(self) -> bytes:
        import soundfile as sf

        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        out = io.BytesIO()
        sf.write(out, np.clip(audio, -1.0, 1.0), self.sample_rate, format="FLAC", subtype="PCM_16")
        return out.getvalue()


class _Sink:
    """A file object for libsndfile that hands on what was appended since the last `take`.

    libsndfile seeks to learn the position and may rewrite bytes already written; a rewrite of
    bytes already sent cannot be honoured, so the encoders used here are ones that only append.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._sent = 0

    def write(self, data) -> int:
        data = bytes(data)
        self._buf[self._pos:self._pos + len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset if whence == 0 else self._pos + offset if whence == 1 else len(self._buf) + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        return b""

    def take(self) -> bytes:
        out = bytes(self._buf[self._sent:])
        self._sent = len(self._buf)
        return out


class _OpusEncoder:
    def __init__(self, sample_rate: int) -> None:
        import soundfile as sf

        self.sample_rate = sample_rate if sample_rate in OPUS_RATES else 48000
        self._resampler = _Resampler(sample_rate, self.sample_rate)
        self._sink = _Sink()
        self._file = sf.SoundFile(self._sink, "w", self.sample_rate, 1, "OPUS", format="OGG")

    def push(self, audio: np.ndarray) -> bytes:
        self._write(self._resampler.push(audio))
        return self._sink.take()

    def finish(self) -> bytes:
        self._write(self._resampler.push(np.zeros(0, np.float32), last=True))
        self._file.close()
        return self._sink.take()

    def _write(self, audio: np.ndarray) -> None:
        if len(audio):
            self._file.write(np.clip(audio, -1.0, 1.0))


class _AvSink(io.RawIOBase):
    """A non-seekable output, so FFmpeg's muxers write only forwards."""

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:
        self._buf += bytes(data)
        return len(data)

    def take(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


class _AvEncoder:
    _SETUP = {  # format -> (container, codec, muxer options)
        "mp3": ("mp3", "libmp3lame", {"write_xing": "0"}),
        "aac": ("adts", "aac", {}),
    }

    def __init__(self, fmt: str, sample_rate: int) -> None:
        import av

        container, codec, options = self._SETUP[fmt]
        self.sample_rate = sample_rate
        self._sink = _AvSink()
        self._container = av.open(self._sink, mode="w", format=container, options=options)
        self._stream = self._container.add_stream(codec, rate=sample_rate, layout="mono")
        self._closed = False

    def push(self, audio: np.ndarray) -> bytes:
        import av

        data = np.clip(np.ascontiguousarray(audio, dtype=np.float32), -1.0, 1.0)
        if len(data):
            frame = av.AudioFrame.from_ndarray(data[None, :], format="flt", layout="mono")
            frame.sample_rate = self.sample_rate
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        if not self._closed:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            self._closed = True
        return self._sink.take()
