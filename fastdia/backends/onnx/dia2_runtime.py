"""onnxruntime step functions for Dia2: exported graphs behind the interface `Dia2Generator` uses.

`OrtDia2Model` looks like a `Dia2Model` to the generator (`config`, `new_decoder_cache`,
`new_depformer_cache`, `depformer.text_embed`) and brings its own step functions
(`step_functions()`: the decoder call and the depformer stage, with the signatures of
`Dia2Decoder.forward` and `Dia2Depformer.stage`), so the action state machine, CFG, sampling,
voice prefixes, streaming and the server's slot batches all run the one generation loop. The
caches are fastdia's own `Dia2KVCache` tensors, handed to onnxruntime as zero-copy numpy views;
each graph's new K/V are written into them by index, as the model's forward does.

Static exports take exactly `rows` rows and one step per decoder call, and hold `cache_len`
decoder slots: calls are split into row groups (the last padded with a copy of a real row) and
a generation that would step past the cache stops with an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ...codecs.mimi.codec import Mimi
from ...codecs.mimi.model import MimiConfig
from ...dia2.config import parse_dia2_config
from ...errors import AudioError, CheckpointError, GenerationError
from ...dia2.model import DecoderOutput, Dia2KVCache
from .manifest import read_manifest
from .common import ort_session, pad_rows, row_groups

# Streaming Mimi through the whole-sequence codec graph re-decodes this many past frames as
# context before the new ones: more than the decoder transformer's 10 s attention window (125
# frames at 12.5 Hz) plus its convolutions' reach, so the result equals a one-shot decode to float
# rounding while the cost per push stays bounded.
STREAM_CONTEXT = 160


def _np(t: torch.Tensor) -> np.ndarray:
    # Expanded or sliced tensors (stride 0, CFG rows) need a real buffer; contiguous ones pass as is.
    return np.ascontiguousarray(t.detach().cpu().numpy())


class _Graph:
    """A session and the names of its cache inputs."""

    def __init__(self, session, n_layer: int) -> None:
        self.session = session
        self.kv_names = [f"cache_{p}_{i}" for p in ("k", "v") for i in range(n_layer)]
        self.inputs = {i.name for i in session.get_inputs()}


class OrtDia2Decoder(_Graph):
    """Callable with `Dia2Decoder.forward`'s signature (kv_len is not needed: the graph masks)."""

    def __init__(self, session, n_layer: int, static: dict | None) -> None:
        super().__init__(session, n_layer)
        self.n_layer, self.static = n_layer, static

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache, slots: torch.Tensor | None = None,
                 kv_len: int | None = None) -> DecoderOutput:
        slots = positions if slots is None else slots
        total = cache.k[0].shape[2]
        if int(slots.max()) >= total or int(slots.min()) < 0:
            if self.static:
                raise GenerationError(f"this static export holds {total} decoder steps; use max_steps below that "
                                      f"(a voice prefix takes steps too) or export with a larger --cache-len")
            raise GenerationError(f"decoder cache slots must lie in 0..{total - 1}")
        if self.static:  # one step per call
            outs = [self._run(tokens[:, j:j + 1], positions[:, j:j + 1], slots[:, j:j + 1], cache)
                    for j in range(tokens.shape[1])]
            return DecoderOutput(*(torch.cat(parts, dim=1) for parts in zip(*outs)))
        return DecoderOutput(*self._run(tokens, positions, slots, cache))

    def _run(self, tokens, positions, slots, cache):
        n, b = self.n_layer, tokens.shape[0]
        out = []
        for rows in row_groups(b, self.static):
            count = rows.stop - rows.start
            feeds = {"tokens": _np(tokens[rows]), "positions": _np(positions[rows]), "slots": _np(slots[rows])}
            feeds.update(zip(self.kv_names, (_np(t[rows]) for t in (*cache.k, *cache.v))))
            if self.static and count != self.static["rows"]:
                feeds = {k: pad_rows(v, self.static["rows"]) for k, v in feeds.items()}
            hidden, action, cb0, *kv = self.session.run(None, feeds)
            # cache[row, :, slot] = new, row by row (each row has its own slots).
            idx = torch.arange(count)[:, None]
            slot = slots[rows]
            for i in range(n):
                cache.k[i][rows][idx, :, slot] = torch.from_numpy(kv[i][:count]).transpose(1, 2)
                cache.v[i][rows][idx, :, slot] = torch.from_numpy(kv[n + i][:count]).transpose(1, 2)
            out.append([torch.from_numpy(a[:count]) for a in (hidden, action, cb0)])
        return [torch.cat(p) if len(out) > 1 else p[0] for p in zip(*out)]


class OrtDia2Depformer:
    """`stage(s, hidden, prev_token, cache, text)` with `Dia2Depformer.stage`'s signature: stage s
    runs the graph of its weight group."""

    def __init__(self, graphs: dict[int, _Graph], schedule: tuple[int, ...], n_layer: int,
                 static: dict | None) -> None:
        self.graphs, self.schedule, self.n_layer, self.static = graphs, schedule, n_layer, static
        # The generator reads this to decide whether stage 0 gets the text (spec 3.6).
        self.text_embed = True if any("text_main" in g.inputs for g in graphs.values()) else None

    def stage(self, s: int, hidden: torch.Tensor, prev_token: torch.Tensor, cache,
              text: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        graph = self.graphs[self.schedule[s]]
        needs_text = "text_main" in graph.inputs
        if needs_text and text is None:
            if s == 0:
                raise ValueError("this depformer has a text embedding: stage 0 needs text=(main, second)")
            pad = torch.zeros_like(prev_token)  # ignored by the graph past stage 0, but must be a valid id
            text = (pad, pad)
        n, b = self.n_layer, hidden.shape[0]
        out = []
        for rows in row_groups(b, self.static):
            count = rows.stop - rows.start
            feeds = {"stage": np.array([s], np.int64), "hidden": _np(hidden[rows].float()),
                     "prev_token": _np(prev_token[rows].long())}
            feeds.update(zip(graph.kv_names, (_np(t[rows]) for t in (*cache.k, *cache.v))))
            if needs_text:
                feeds["text_main"], feeds["text_second"] = _np(text[0][rows].long()), _np(text[1][rows].long())
            if self.static and count != self.static["rows"]:
                feeds = {k: v if k == "stage" else pad_rows(v, self.static["rows"]) for k, v in feeds.items()}
            logits, *kv = graph.session.run(None, feeds)
            for i in range(n):
                cache.k[i][rows][:, :, s] = torch.from_numpy(kv[i][:count, :, 0])
                cache.v[i][rows][:, :, s] = torch.from_numpy(kv[n + i][:count, :, 0])
            out.append(torch.from_numpy(logits[:count]))
        return torch.cat(out) if len(out) > 1 else out[0]


class OrtDia2Model:
    """A `Dia2Model` look-alike backed by onnxruntime sessions (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike, threads: int | None = None) -> None:
        folder = Path(folder).expanduser()
        info = read_manifest(folder)
        if info is None:
            raise CheckpointError(f"{folder} is not a fastdia ONNX export (no fastdia_onnx block in config.json)")
        if info.get("family") != "dia2":
            raise CheckpointError(f"{folder} is a Dia-1 ONNX export; load it with Dia.from_pretrained")
        self.folder, self.info = folder, info
        self.config = parse_dia2_config(info["model_config"], where=str(folder / "config.json"))
        self.static = info.get("static_shapes") if info.get("static") else None
        # onnxruntime's default is one thread per core; follow torch's setting (OMP_NUM_THREADS) instead.
        threads = threads or torch.get_num_threads()
        graphs = info["graphs"]
        cfg = self.config
        self.transformer = OrtDia2Decoder(ort_session(folder / graphs["decoder"]["file"], threads),
                                          cfg.decoder.n_layer, self.static)
        dep = {g: _Graph(ort_session(folder / graphs[f"depformer_{g}"]["file"], threads), cfg.depformer.n_layer)
               for g in cfg.runtime.weight_groups}
        self.depformer = OrtDia2Depformer(dep, cfg.runtime.weights_schedule, cfg.depformer.n_layer, self.static)
        # What the qdq calibration records (fastdia.backends.onnx.dia2_export.record_calibration).
        self.sessions = {"decoder": self.transformer, **{f"depformer_{g}": d for g, d in dep.items()}}

    def step_functions(self):
        """(decoder call, depformer stage) for `Dia2Generator`."""
        return self.transformer, self.depformer.stage

    def new_decoder_cache(self, rows: int, slots: int, device=None, dtype=None) -> Dia2KVCache:
        d = self.config.decoder
        if self.static:  # the graph's fixed length; the decoder call says when a run outgrows it
            slots = self.static["cache_len"]
        return Dia2KVCache(d.n_layer, rows, d.n_kv_head, slots, d.head_dim, "cpu", torch.float32)

    def new_depformer_cache(self, rows: int, device=None, dtype=None) -> Dia2KVCache:
        d = self.config.depformer
        return Dia2KVCache(d.n_layer, rows, d.n_kv_head, self.config.n_stages, d.head_dim, "cpu", torch.float32)

    def parameters(self):
        return iter(())

    def modules(self):
        # onnxruntime's matrix products, like a BLAS, may round a row differently by the batch's
        # row count; a plain Linear here tells the server's slot batches so (backends.cpu.packed).
        return iter((torch.nn.Linear(1, 1),))

    def eval(self):
        return self


class OrtMimi(Mimi):
    """The exported Mimi decoder behind `fastdia.codecs.mimi.codec.Mimi` (decode, stream). Encoding a
    voice prefix needs the torch codec: load with codec=<Mimi source>."""

    def __init__(self, session, info: dict, static: dict | None) -> None:
        self.model = None
        self.session, self.static = session, static
        self.config = MimiConfig.from_dict(info["config"])
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.sample_rate = self.config.sampling_rate
        self.frame_rate = float(self.config.frame_rate)
        self.hop_length = self.config.hop_length
        self.n_codebooks = info["n_codebooks"]  # the model's codebooks: what the graph decodes
        self._codec_id = info["codec_id"]

    def decode_tensor(self, codes: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        codes = codes.to(torch.long).cpu()
        if state is None:
            return self._decode(codes)
        past = state.get("codes")
        joined = codes if past is None else torch.cat((past, codes), dim=-1)
        state["codes"] = joined[..., -STREAM_CONTEXT:]
        held = joined.shape[-1] - codes.shape[-1]
        return self._decode(joined)[..., held * self.hop_length:]

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        if not self.static:
            return torch.from_numpy(self.session.run(None, {"codes": _np(codes)})[0])
        frames = self.static["codec_frames"]
        # A fixed window: longer inputs decode in pieces, each after up to `context` frames of the
        # frames before it (equal to one pass to float rounding when the context covers the
        # decoder's reach, see STREAM_CONTEXT).
        context = min(STREAM_CONTEXT, frames // 2)
        hop, t = self.hop_length, codes.shape[-1]
        waves = []
        for i in range(codes.shape[0]):
            pieces, a = [], 0
            while a < t:
                start = max(0, a - context)
                b = min(t, start + frames)
                window = np.zeros((1, codes.shape[1], frames), np.int64)
                window[0, :, : b - start] = codes[i, :, start:b].numpy()
                wave = self.session.run(None, {"codes": window})[0]
                pieces.append(wave[..., (a - start) * hop:(b - start) * hop])
                a = b
            waves.append(np.concatenate(pieces, axis=-1))
        return torch.from_numpy(np.concatenate(waves))

    def encode_tensor(self, wave):
        raise AudioError("this ONNX export has no Mimi encoder; load it with codec=<Mimi source> "
                         "(e.g. codec='kyutai/mimi') to use voice prefixes")


def ort_tokenizer(folder: str | os.PathLike, info: dict):
    """The export's tokenizer: the model folder's files copied at export, else the presets' builtin one."""
    from ...dia2.text import Dia2Tokenizer, builtin_tokenizer

    if "tokenizer.json" in info.get("tokenizer_files", ()):
        return Dia2Tokenizer.from_file(Path(folder) / "tokenizer.json")
    return builtin_tokenizer()


