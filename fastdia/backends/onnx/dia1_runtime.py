"""onnxruntime step functions for Dia-1: exported graphs behind the interface the generator uses.

`OrtDiaModel` looks like a `DiaModel` to `Dia1Generator` (`config`, `encoder(text, mask)`,
`decoder.cross_state(...)`, `decoder(tokens, positions, cache, cross, ...)`), so sampling, CFG,
the EOS countdown, prompts, streaming and long scripts run through the one generation loop;
only the step functions differ. The generator's static KV cache (torch tensors, fastdia's
layout) is handed to onnxruntime as zero-copy numpy views and the graph's new K/V are written
into it by index, as `Decoder.forward` does.

Static exports fix rows, text length, cache length and one frame per call: the driver pads the
text, calls the decoder once per position for a prefill and once per group of `rows` CFG rows
for a batch, and asks the generator for a cache of exactly `cache_len` slots.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch

from ...errors import CheckpointError, GenerationError
from ...dia1.config import DecoderConfig, DiaConfig, EncoderConfig
from ...dia1.model import CrossState
from .manifest import read_manifest
from .common import ort_session, pad_rows, row_groups


@dataclasses.dataclass
class EncodedText:
    """The encoder graph's outputs: per-layer cross K/V `(B, Hc, S, Dc)` and the mask they go with."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    mask: torch.Tensor  # (B, S) bool


class OrtEncoder:
    def __init__(self, session, n_layer: int, static: dict | None) -> None:
        self.session, self.n_layer, self.static = session, n_layer, static

    def __call__(self, text: torch.Tensor, mask: torch.Tensor) -> EncodedText:
        b, s = text.shape
        text, mask = text.cpu().numpy(), mask.cpu().numpy()
        if self.static:
            limit = self.static["text_len"]
            if s > limit:
                raise GenerationError(f"the script is {s} bytes; this static export takes at most {limit}")
            text = np.pad(text, ((0, 0), (0, limit - s)))
            mask = np.pad(mask, ((0, 0), (0, limit - s)))
        pieces = []
        for rows in row_groups(b, self.static):
            n = rows.stop - rows.start
            feeds = {"text": text[rows], "text_mask": mask[rows]}
            if self.static:
                feeds = {k: pad_rows(v, self.static["rows"]) for k, v in feeds.items()}
            pieces.append([o[:n] for o in self.session.run(None, feeds)])
        outs = [torch.from_numpy(np.concatenate(p) if len(pieces) > 1 else p[0])
                for p in zip(*pieces)]
        n = self.n_layer
        return EncodedText(outs[:n], outs[n:], torch.from_numpy(mask))


class OrtDecoder:
    """Callable with `Decoder.forward`'s signature, plus `cross_state`."""

    def __init__(self, session, n_layer: int, static: dict | None) -> None:
        self.session, self.n_layer, self.static = session, n_layer, static
        # A static graph needs a cache of exactly its length (the generator reads this).
        self.cache_len = static["cache_len"] if static else None
        n = n_layer
        self._kv_names = [f"{p}_{i}" for p in ("cross_k", "cross_v", "cache_k", "cache_v") for i in range(n)]

    def cross_state(self, encoded: EncodedText, text_mask: torch.Tensor, dtype=None) -> CrossState:
        return CrossState(encoded.k, encoded.v, encoded.mask[:, None, None, :])

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache, cross: CrossState,
                 kv_len: int | None = None, compute_logits: bool = True) -> torch.Tensor | None:
        total = cache.k[0].shape[2]
        if self.static and total != self.static["cache_len"]:
            raise GenerationError(f"this static export needs a cache of {self.static['cache_len']} slots, got {total}")
        if int(positions.max()) >= total:
            raise GenerationError(f"positions must lie in 0..{total - 1}")
        mask = cross.allowed[:, 0, 0, :]
        if self.static:  # one frame per call
            logits = [self._run(tokens[:, j:j + 1], positions[:, j:j + 1], cache, cross, mask)
                      for j in range(tokens.shape[1])]
            return torch.cat(logits, dim=1) if compute_logits else None
        logits = self._run(tokens, positions, cache, cross, mask)
        return logits if compute_logits else None

    def _run(self, tokens, positions, cache, cross, mask) -> torch.Tensor:
        b = tokens.shape[0]
        n = self.n_layer
        out = []
        for rows in row_groups(b, self.static):
            count = rows.stop - rows.start
            arrays = [tokens[rows], positions[rows], mask[rows]]
            arrays += [t[rows] for t in (*cross.k, *cross.v, *cache.k, *cache.v)]
            feeds = {name: t.numpy() for name, t in zip(["tokens", "positions", "text_mask", *self._kv_names], arrays)}
            if self.static and count != self.static["rows"]:
                feeds = {k: pad_rows(v, self.static["rows"]) for k, v in feeds.items()}
            logits, *kv = self.session.run(None, feeds)
            # Write the new frames' K/V at their positions: cache[row, :, pos] = new (row-local).
            idx = torch.arange(count)[:, None]
            pos = positions[rows]
            for i in range(n):
                cache.k[i][rows][idx, :, pos] = torch.from_numpy(kv[i][:count]).transpose(1, 2)
                cache.v[i][rows][idx, :, pos] = torch.from_numpy(kv[n + i][:count]).transpose(1, 2)
            out.append(torch.from_numpy(logits[:count]))
        return torch.cat(out) if len(out) > 1 else out[0]


class OrtDiaModel:
    """A `DiaModel` look-alike backed by onnxruntime sessions (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike, threads: int | None = None) -> None:
        folder = Path(folder).expanduser()
        info = read_manifest(folder)
        if info is None:
            raise CheckpointError(f"{folder} is not a fastdia ONNX export (no fastdia_onnx block in config.json)")
        if info.get("family") == "dia2":
            raise CheckpointError(f"{folder} is a Dia2 ONNX export; load it with Dia2.from_pretrained or fastdia.load")
        self.folder, self.info = folder, info
        self.config = config_from_json(info["model_config"])
        static = info.get("static_shapes") if info.get("static") else None
        self.static = static
        n = self.config.decoder.n_layer
        graphs = info["graphs"]
        self.encoder = OrtEncoder(ort_session(folder / graphs["encoder"]["file"], threads), n, static)
        self.decoder = OrtDecoder(ort_session(folder / graphs["decoder"]["file"], threads), n, static)

    def parameters(self):
        return iter(())

    def eval(self):
        return self


def has_codec(info: dict) -> bool:
    return "codec" in info.get("graphs", {})


def ort_codec(folder: str | os.PathLike, info: dict, threads: int | None = None):
    """The exported DAC decoder as a `fastdia.codecs.dac.codec.DAC` (decode, stream); encoding a voice
    needs the torch codec (pass codec= to from_pretrained)."""
    from ...codecs.dac.codec import DAC
    from ...codecs.dac.model import DACConfig
    from ...errors import AudioError

    c = info["codec"]
    session = ort_session(Path(folder) / info["graphs"]["codec"]["file"], threads)
    static = info.get("static_shapes") if info.get("static") else None

    class OrtDAC(DAC):
        def __init__(self) -> None:
            self.model = None
            self.config = DACConfig(**c["config"])
            self.device, self.dtype = torch.device("cpu"), torch.float32
            self.sample_rate, self.hop_length = self.config.sample_rate, self.config.hop_length
            self._codec_id = c["codec_id"]

        def decode_tensor(self, codes, lengths=None):
            codes = codes.to(torch.long).cpu().numpy()
            b, _, t = codes.shape
            lens = np.full((b,), t, np.int64) if lengths is None else np.asarray(lengths, np.int64)
            if not static:
                return torch.from_numpy(session.run(None, {"codes": codes, "lengths": lens})[0])
            frames = static["codec_frames"]
            if t > frames:
                return self.decode_chunked(codes=torch.from_numpy(codes), lengths=torch.from_numpy(lens))
            padded = np.pad(codes, ((0, 0), (0, 0), (0, frames - t)))
            waves = [session.run(None, {"codes": padded[i:i + 1], "lengths": lens[i:i + 1]})[0] for i in range(b)]
            return torch.from_numpy(np.concatenate(waves)[..., : t * self.hop_length])

        def decode_chunked(self, codes, lengths=None, chunk=None, margin=None):
            if static:  # windows that fit the static graph
                margin = self.CHUNK_MARGIN if margin is None else margin
                chunk = min(chunk or self.CHUNK_FRAMES, static["codec_frames"] - 2 * margin)
            return super().decode_chunked(codes, lengths, chunk, margin)

        def encode_tensor(self, wave, lengths=None):
            raise AudioError("this ONNX export has no codec encoder; give codes [P, 9] as the audio prompt, or "
                             "load with codec=<DAC source> to encode waveforms")

    return OrtDAC()


def export_cache_dir(model: str | os.PathLike, quantize: str | None) -> Path:
    """Where `backend="onnxruntime"` keeps the export of a model that is not an export itself."""
    import re

    root = Path(os.environ.get("FASTDIA_ONNX_CACHE", Path.home() / ".cache" / "fastdia" / "onnx"))
    name = re.sub(r"[^A-Za-z0-9._-]+", "--", str(Path(model).expanduser().resolve()) if Path(model).exists()
                  else str(model)).strip("-")
    return root / (name + (f"-{quantize}" if quantize else ""))


def config_from_json(raw: dict) -> DiaConfig:
    raw = dict(raw)
    raw["encoder"] = EncoderConfig(**raw["encoder"])
    raw["decoder"] = DecoderConfig(**raw["decoder"])
    raw["delay_pattern"] = tuple(raw["delay_pattern"])
    return DiaConfig(**raw)
