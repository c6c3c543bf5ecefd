"""`fastdia export onnx` for Dia2: the decoder step, one depformer graph per weight group, the Mimi
decoder, and a config.json that is the Dia2 config plus a `fastdia_onnx` manifest (family "dia2").

The same exporter settings as Dia-1 (export.py): torch's dynamo exporter at opset 18, weights in
a `.data` side file above 1 GiB, `--static` fixing rows, cache length and one step per decoder
call, `--quantize int8|int4|qdq` through quantize.py (qdq calibrated on recorded Dia2 generations).
The tokenizer files of a model folder are copied next to the graphs; presets use the builtin one.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from ...errors import GenerationError
from . import manifest as mf
from .dia2_graphs import Dia2CodecGraph, Dia2DecoderGraph, Dia2DepformerGraph, group_stages, has_text_input
from .common import ExportOptions, export_dirs, export_graph, io_names, quiet

FAMILY = "dia2"
CALIBRATION_EVERY = 3  # qdq calibration keeps one call in this many per graph

PURPOSE = {
    "decoder": "Dia2 decoder over L new steps per row (L = 1 per step; L > 1 prefills): final hidden, action "
               "and codebook-0 logits, and the steps' self-attention K/V, to be written by the caller into "
               "cache slot = slots[row, j]; RoPE reads positions",
    "depformer": "Dia2 depformer, one stage of the weight group {group} (stages {stages}): codebook stage+1 "
                 "logits and the stage's K/V, to be written into depformer cache slot = stage",
    "codec": "Mimi decoder: codes (items, codebooks, frames) -> waveform (items, 1, frames * 1920); causal, "
             "so a batch may be right-padded with any valid code",
}

DRIVING = {
    "rows": "two rows per script: row 0 conditional, row 1 unconditional (text (zero, pad)); CFG: "
            "uncond + cfg_scale * (cond - uncond) (spec 5.5)",
    "decoder_cache": "cache_k_i/cache_v_i (rows, kv_heads, cache_len, head_dim) zero-initialised; after each "
                     "decoder call write new_k_i/new_v_i[:, :, j] into slot slots[:, j]; slots >= slots[:, 0] are "
                     "ignored by the graph",
    "depformer": "per frame, stages s = 0..S-1 run the graph depformer_<weights_schedule[s]> with stage = [s], "
                 "hidden = the decoder's hidden of the step, prev_token = codebook s of the frame (s = 0: the "
                 "sampled codebook 0); write new_k_i/new_v_i[:, :, 0] into depformer cache slot s",
    "static": "static exports fix rows, cache_len and L = 1 (one step per decoder call), and codec frames",
}


def purpose(name: str, groups: dict | None = None) -> str:
    if name.startswith("depformer_") and groups:
        g = name.removeprefix("depformer_")
        return PURPOSE["depformer"].format(group=g, stages=groups[g])
    return PURPOSE.get(name, name)


def quantized_graphs(graphs) -> tuple[str, ...]:
    """The graphs a quantized export quantizes: the decoder and every depformer graph (the codec stays float)."""
    return tuple(n for n in graphs if n == "decoder" or n.startswith("depformer_"))


def export_dia2_loaded(loaded, out_dir, codec: str, tokenizer_files: list[Path],
                       options: ExportOptions = ExportOptions(), log=print) -> dict:
    """Export a loaded float Dia2 model to `out_dir`; returns the manifest written.

    Args:
        loaded: a `fastdia.dia2.checkpoint.LoadedDia2` (float32, unoptimized: plain modules);
            `fastdia.dia2.onnx.export_dia2_onnx` loads one from a name.
        out_dir: created if missing; its graphs and config.json are replaced.
        codec: the Mimi source whose decoder is exported beside ("none": no codec graph).
        tokenizer_files: the model folder's tokenizer files, copied next to the graphs (none for
            presets, whose builtin tokenizer is used).
        options: see `fastdia.backends.onnx.common.ExportOptions` (`text_len` does not apply to Dia2).
        log: called with one progress line per graph.
    """
    started = time.perf_counter()
    source_name = loaded.source
    m, cfg = loaded.model, loaded.config
    static = _static_shapes(cfg, options) if options.static else None
    quantize = options.quantize
    out, float_dir = export_dirs(m, out_dir, quantize)

    graphs = {}
    groups = {str(g): group_stages(m, g) for g in cfg.runtime.weight_groups}
    with torch.no_grad(), quiet():
        t = time.perf_counter()
        graphs["decoder"] = _export_decoder(m, float_dir, static)
        log(f"decoder: {time.perf_counter() - t:.1f} s")
        for g in cfg.runtime.weight_groups:
            t = time.perf_counter()
            graphs[f"depformer_{g}"] = _export_depformer(m, g, float_dir, static)
            log(f"depformer_{g}: {time.perf_counter() - t:.1f} s")
        source = codec
        codec_info = None
        if source != "none":
            t = time.perf_counter()
            graphs["codec"], codec_info = _export_codec(source, cfg.data.n_codebooks, float_dir,
                                                        static and options.codec_frames)
            log(f"codec: {time.perf_counter() - t:.1f} s")
    tokenizer_files = _copy_tokenizer(tokenizer_files, out)
    del m, loaded

    def write_config(folder: Path, quantized: str | None) -> dict:
        info = {
            "format_version": mf.FORMAT_VERSION,
            "family": FAMILY,
            "source": source_name,
            "static": static is not None,
            "static_shapes": static,
            "quantize": quantized,
            "model_config": cfg.to_dict(),
            "weights_schedule": list(cfg.runtime.weights_schedule),
            "depformer_groups": groups,
            "tokenizer_files": tokenizer_files,
            "codec": codec_info,
            "graphs": {name: {**mf.describe_graph(folder, g), "purpose": purpose(name, groups)}
                       for name, g in graphs.items()},
            "export_seconds": round(time.perf_counter() - started, 1),
            "driving": DRIVING,
        }
        config = cfg.to_dict()
        config["fastdia_onnx"] = info
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        return info

    if quantize:
        from . import quantize as q

        # The float folder is a complete export of its own: qdq calibration generates with it.
        for name in tokenizer_files:
            shutil.copyfile(out / name, float_dir / name)
        write_config(float_dir, None)
        t = time.perf_counter()
        graphs = q.quantize_graphs(float_dir, out, graphs, options, static, record_calibration, log=log,
                                   quantized=quantized_graphs(graphs))
        log(f"quantize {quantize}: {time.perf_counter() - t:.1f} s")
        shutil.rmtree(float_dir, ignore_errors=True)
    info = write_config(out, quantize)
    return info


def _static_shapes(cfg, options: ExportOptions) -> dict:
    # Default: the generator's buffer for the model's whole step budget (max_steps + 1 columns);
    # a voice prefix's warm-up takes slots too, so it needs a larger --cache-len.
    cache_len = options.cache_len or cfg.runtime.max_context_steps + 1
    if cache_len < 2:
        raise GenerationError(f"cache_len must be at least 2, got {cache_len}")
    return {"rows": options.rows, "cache_len": cache_len, "steps": 1, "codec_frames": options.codec_frames}


def _export_decoder(m, out: Path, static: dict | None) -> dict:
    cfg = m.config
    d, n = cfg.decoder, cfg.decoder.n_layer
    b, length, total = (static["rows"], 1, static["cache_len"]) if static else (2, 3, 11)
    tokens = torch.randint(0, cfg.data.text_vocab_size, (b, length, cfg.data.channels))
    tokens[..., 2:] %= cfg.data.audio_vocab_size
    positions = torch.arange(length).expand(b, length) + 2
    slots = positions + 1
    cache = [torch.randn(b, d.n_kv_head, total, d.head_dim) for _ in range(2 * n)]
    dyn = None
    if not static:
        rows, steps, cache_len = torch.export.Dim("rows"), torch.export.Dim("steps"), torch.export.Dim("cache_len")
        ca = [{0: rows, 2: cache_len}] * n
        dyn = ({0: rows, 1: steps}, {0: rows, 1: steps}, {0: rows, 1: steps}, ca, ca)
    inputs = ["tokens", "positions", "slots"] + io_names("cache_k", n) + io_names("cache_v", n)
    outputs = ["hidden", "action_logits", "cb0_logits"] + io_names("new_k", n) + io_names("new_v", n)
    return export_graph(Dia2DecoderGraph(m).eval(), (tokens, positions, slots, cache[:n], cache[n:]),
                   out / "decoder.onnx", inputs, outputs, dyn)


def _export_depformer(m, group: int, out: Path, static: dict | None) -> dict:
    cfg = m.config
    d, n = cfg.depformer, cfg.depformer.n_layer
    b = static["rows"] if static else 2
    stage = torch.tensor([group_stages(m, group)[-1]])
    hidden = torch.randn(b, cfg.decoder.d_model)
    prev = torch.randint(0, cfg.data.codebook_size, (b,))
    cache = [torch.randn(b, d.n_kv_head, cfg.n_stages, d.head_dim) for _ in range(2 * n)]
    args = [stage, hidden, prev, cache[:n], cache[n:]]
    inputs = ["stage", "hidden", "prev_token"] + io_names("cache_k", n) + io_names("cache_v", n)
    dyn = None
    if not static:
        rows = torch.export.Dim("rows")
        ca = [{0: rows}] * n
        dyn = [None, {0: rows}, {0: rows}, ca, ca]
    if has_text_input(m, group):
        args += [torch.randint(0, cfg.data.text_vocab_size, (b,)) for _ in range(2)]
        inputs += ["text_main", "text_second"]
        if dyn:
            dyn += [{0: rows}, {0: rows}]
    outputs = ["logits"] + io_names("new_k", n) + io_names("new_v", n)
    return export_graph(Dia2DepformerGraph(m, group).eval(), tuple(args), out / f"depformer_{group}.onnx", inputs,
                   outputs, tuple(dyn) if dyn else None)


def _export_codec(source: str, n_codebooks: int, out: Path, static_frames: int | None):
    from ...codecs.mimi.codec import Mimi

    codec = Mimi.from_pretrained(source, device="cpu", dtype="float32")
    if codec.n_codebooks < n_codebooks:
        raise GenerationError(f"codec {source} has {codec.n_codebooks} codebooks but the model needs {n_codebooks}")
    b, t = (1, static_frames) if static_frames else (2, 5)
    codes = torch.randint(0, codec.config.codebook_size, (b, n_codebooks, t))
    dyn = None
    if not static_frames:
        dyn = {"codes": {0: torch.export.Dim("items"), 2: torch.export.Dim("frames")}}
    graph = export_graph(Dia2CodecGraph(codec.model).eval(), (codes,), out / "codec.onnx", ["codes"], ["wave"], dyn)
    info = {"source": str(source), "codec_id": codec.codec_id, "sample_rate": codec.sample_rate,
            "hop_length": codec.hop_length, "n_codebooks": n_codebooks,
            "config": codec.config.to_transformers_dict()}
    return graph, info


def _copy_tokenizer(files: list[Path], out: Path) -> list[str]:
    """Copy a model folder's tokenizer files next to the graphs; returns their names."""
    if files and not any(f.name == "tokenizer.json" for f in files):
        raise GenerationError(f"no tokenizer.json in {files[0].parent}; a Dia2 folder needs its tokenizer files")
    for f in files:
        shutil.copyfile(f, out / f.name)
    return [f.name for f in files]


def record_calibration(src: Path, options: ExportOptions) -> dict[str, list[dict]]:
    """Decoder and depformer feeds recorded while the float graphs in `src` speak the calibration
    scripts greedily (for the qdq quantizer)."""
    from ...dia2.generation import Dia2Generator
    from ...dia2.options import Dia2GenerationConfig
    from ...dia2.text import parse_script
    from .dia2_runtime import OrtDia2Model, ort_tokenizer
    from .common import Recorder

    model = OrtDia2Model(src)
    recorded: dict[str, list[dict]] = {}
    calls: dict[str, int] = {}
    for name, holder in model.sessions.items():
        run = holder.session.run
        recorded[name], calls[name] = [], 0

        def recording(outputs, feeds, *args, _run=run, _name=name):
            # Every CALIBRATION_EVERY-th call: the decoder's feeds hold its whole cache, and ranges
            # need a spread of steps, not all of them.
            if calls[_name] % CALIBRATION_EVERY == 0:
                recorded[_name].append({k: v.copy() for k, v in feeds.items()})
            calls[_name] += 1
            return _run(outputs, feeds, *args)

        holder.session = Recorder(holder.session, recording)
    tokenizer = ort_tokenizer(src, model.info)
    data = model.config.data
    ids = tokenizer.text_ids(data.text_pad_token_id, data.text_new_word_token_id, data.text_zero_token_id)
    generator = Dia2Generator(model, torch.device("cpu"), ids)
    max_steps = options.calibration_max_tokens
    if model.static:
        max_steps = min(max_steps, model.static["cache_len"])
    gen = Dia2GenerationConfig(temperature=0, text_temperature=0, max_steps=max_steps)
    for script in options.calibration_scripts:
        generator.generate(parse_script(script, tokenizer, ids), gen)
    return recorded
