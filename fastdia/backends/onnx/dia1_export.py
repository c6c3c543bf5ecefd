"""`fastdia export onnx`: write a Dia-1 model (and its DAC decoder) as ONNX graphs + a manifest.

OUT_DIR gets `encoder.onnx`, `decoder.onnx`, `codec.onnx` (each with a `.data` external-data file
when it is large: the 1.6B decoder is 5.4 GB in float32, past protobuf's 2 GB limit) and a
`config.json` that is the model's transformers-style config plus a `fastdia_onnx` block: what
each graph is, its inputs and outputs with shapes, how to drive it (manifest.py). Any runtime
can run the graphs from that file alone; fastdia's own driver is fastdia.backends.onnx.dia1_runtime.

Graphs are exported with torch's dynamo exporter (onnxscript) at opset 18, the lowest it emits;
the QDQ export is converted to opset 21, the first whose QuantizeLinear takes uint16.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ...dia1.config import DiaConfig
from ...errors import GenerationError
from . import manifest as mf
from .dia1_graphs import CodecGraph, DecoderGraph, EncoderGraph
from .common import ExportOptions, Recorder, export_dirs, export_graph, io_names, quiet


def export_loaded(loaded, out_dir: str | os.PathLike, options: ExportOptions = ExportOptions(), log=print) -> dict:
    """Export a loaded float Dia-1 model to `out_dir`; returns the manifest written.

    Args:
        loaded: a `fastdia.dia1.checkpoint.LoadedModel` (float32, unoptimized: plain modules);
            `fastdia.dia1.onnx.export_onnx` loads one from a name.
        out_dir: created if missing; its graphs and config.json are replaced.
        options: see `ExportOptions`.
        log: called with one progress line per graph.
    """
    started = time.perf_counter()
    m, cfg, source = loaded.model, loaded.config, loaded.source
    static = _static_shapes(cfg, options) if options.static else None
    quantize = options.quantize
    out, float_dir = export_dirs(m, out_dir, quantize)

    graphs = {}
    with torch.no_grad(), quiet():
        t = time.perf_counter()
        graphs["encoder"] = _export_encoder(m, cfg, float_dir, static)
        log(f"encoder: {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        graphs["decoder"] = _export_decoder(m, cfg, float_dir, static)
        log(f"decoder: {time.perf_counter() - t:.1f} s")
        codec_source = options.codec or ("tiny-random" if loaded.layout == "preset" else None)
        codec_info = None
        if codec_source != "none":
            t = time.perf_counter()
            graphs["codec"], codec_info = _export_codec(codec_source, float_dir, static and options.codec_frames)
            log(f"codec: {time.perf_counter() - t:.1f} s")
    del m, loaded

    def manifest(folder: Path, graphs: dict, quantize: str | None) -> dict:
        info = {
            "format_version": mf.FORMAT_VERSION,
            "source": source,
            "static": static is not None,
            "static_shapes": static,
            "quantize": quantize,
            "model_config": config_to_json(cfg),
            "codec": codec_info,
            "graphs": {name: mf.describe_graph(folder, g) for name, g in graphs.items()},
            "export_seconds": round(time.perf_counter() - started, 1),
        }
        info["driving"] = mf.DRIVING
        config = cfg.to_transformers_dict()
        config["fastdia_onnx"] = info
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        return info

    if quantize:
        from . import quantize as q

        # the float folder is a complete export first: QDQ calibration generates with it
        manifest(float_dir, graphs, None)
        t = time.perf_counter()
        graphs = q.quantize_graphs(float_dir, out, graphs, options, static, record_calibration, log=log)
        log(f"quantize {quantize}: {time.perf_counter() - t:.1f} s")
        shutil.rmtree(float_dir, ignore_errors=True)
    return manifest(out, graphs, quantize)


def _static_shapes(cfg: DiaConfig, options: ExportOptions) -> dict:
    cache_len = options.cache_len or cfg.decoder.max_positions
    if not 1 < cache_len <= cfg.decoder.max_positions:
        raise GenerationError(f"cache_len must be in 2..{cfg.decoder.max_positions}, got {cache_len}")
    return {"rows": options.rows, "text_len": options.text_len, "cache_len": cache_len, "frames": 1,
            "codec_frames": options.codec_frames}


def _export_encoder(m, cfg: DiaConfig, out: Path, static: dict | None) -> dict:
    n = cfg.decoder.n_layer
    b, s = (static["rows"], static["text_len"]) if static else (2, 7)
    text = torch.randint(1, 255, (b, s))
    mask = torch.ones(b, s, dtype=torch.bool)
    dyn = None
    if not static:
        rows, text_len = torch.export.Dim("rows"), torch.export.Dim("text_len")
        dyn = {"text": {0: rows, 1: text_len}, "text_mask": {0: rows, 1: text_len}}
    return export_graph(EncoderGraph(m).eval(), (text, mask), out / "encoder.onnx", ["text", "text_mask"],
                   io_names("cross_k", n) + io_names("cross_v", n), dyn)


def _export_decoder(m, cfg: DiaConfig, out: Path, static: dict | None) -> dict:
    d, n = cfg.decoder, cfg.decoder.n_layer
    if static:
        b, length, s, total = static["rows"], 1, static["text_len"], static["cache_len"]
    else:
        b, length, s, total = 2, 3, 7, 11  # all > 1 so torch.export keeps them symbolic
    tokens = torch.randint(0, d.vocab_size - 4, (b, length, d.n_channels))
    positions = torch.arange(length).expand(b, length) + 2
    mask = torch.ones(b, s, dtype=torch.bool)
    cross = [torch.randn(b, d.cross_n_kv_head, s, d.cross_head_dim) for _ in range(2 * n)]
    cache = [torch.randn(b, d.n_kv_head, total, d.head_dim) for _ in range(2 * n)]
    args = (tokens, positions, mask, cross[:n], cross[n:], cache[:n], cache[n:])
    dyn = None
    if not static:
        rows, frames = torch.export.Dim("rows"), torch.export.Dim("frames")
        text_len, cache_len = torch.export.Dim("text_len"), torch.export.Dim("cache_len")
        kv = [{0: rows, 2: text_len}] * n
        ca = [{0: rows, 2: cache_len}] * n
        dyn = ({0: rows, 1: frames}, {0: rows, 1: frames}, {0: rows, 1: text_len}, kv, kv, ca, ca)
    inputs = ["tokens", "positions", "text_mask"] + io_names("cross_k", n) + io_names("cross_v", n) \
        + io_names("cache_k", n) + io_names("cache_v", n)
    outputs = ["logits"] + io_names("new_k", n) + io_names("new_v", n)
    return export_graph(DecoderGraph(m).eval(), args, out / "decoder.onnx", inputs, outputs, dyn)


def _export_codec(source: str | None, out: Path, static_frames: int | None):
    from ...codecs.dac.codec import DAC, DEFAULT_MODEL

    codec = DAC.from_pretrained(source or DEFAULT_MODEL, device="cpu", dtype="float32")
    cfg = codec.config
    b, t = (1, static_frames) if static_frames else (2, 5)
    codes = torch.randint(0, cfg.codebook_size, (b, cfg.n_codebooks, t))
    lengths = torch.full((b,), t, dtype=torch.long)
    dyn = None
    if not static_frames:
        items, frames = torch.export.Dim("items"), torch.export.Dim("frames")
        dyn = {"codes": {0: items, 2: frames}, "lengths": {0: items}}
    graph = export_graph(CodecGraph(codec.model).eval(), (codes, lengths), out / "codec.onnx", ["codes", "lengths"],
                    ["wave"], dyn)
    info = {"source": str(source or DEFAULT_MODEL), "codec_id": codec.codec_id, "sample_rate": codec.sample_rate,
            "hop_length": codec.hop_length, "n_codebooks": cfg.n_codebooks, "codebook_size": cfg.codebook_size,
            "decoder_rates": list(cfg.decoder_rates), "context_frames": codec.context_frames,
            "config": dataclasses.asdict(cfg)}
    return graph, info


def record_calibration(src: Path, options: ExportOptions) -> dict[str, list[dict]]:
    """Encoder and decoder feeds recorded while the float graphs speak the calibration scripts greedily."""
    import torch

    from ...dia1.generation import Dia1Generator
    from ...dia1.options import GenerationConfig
    from ...text import tokenize
    from .dia1_runtime import OrtDiaModel

    model = OrtDiaModel(src)
    recorded = {"encoder": [], "decoder": []}
    for name, part in (("encoder", model.encoder), ("decoder", model.decoder)):
        run = part.session.run

        def recording(outputs, feeds, *args, _run=run, _list=recorded[name]):
            _list.append({k: np.array(v, copy=True) for k, v in feeds.items()})
            return _run(outputs, feeds, *args)

        part.session = Recorder(part.session, recording)
    generator = Dia1Generator(model, torch.device("cpu"), torch.float32)
    max_tokens = options.calibration_max_tokens
    if model.static:
        max_tokens = min(max_tokens, model.static["cache_len"])
    gen = GenerationConfig(max_tokens=max_tokens, temperature=0.0)
    with torch.inference_mode():
        for script in options.calibration_scripts:
            generator.generate([tokenize(script)], [None], gen)
    return recorded


def config_to_json(cfg: DiaConfig) -> dict:
    return dataclasses.asdict(cfg)
