"""`fastdia export onnx`: write a Dia-1 model (and its DAC decoder) as ONNX graphs + a manifest.

OUT_DIR gets `encoder.onnx`, `decoder.onnx`, `codec.onnx` (each with a `.data` external-data file
when it is large: the 1.6B decoder is 5.4 GB in float32, past protobuf's 2 GB limit) and a
`config.json` that is the model's transformers-style config plus a `fastdia_onnx` block: what
each graph is, its inputs and outputs with shapes, how to drive it (manifest.py). Any runtime
can run the graphs from that file alone; fastdia's own driver is fastdia.onnx.runtime.

Graphs are exported with torch's dynamo exporter (onnxscript) at opset 18, the lowest it emits;
the QDQ export is converted to opset 21, the first whose QuantizeLinear takes uint16.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import DiaConfig
from ..errors import GenerationError
from . import manifest as mf
from .graphs import CodecGraph, DecoderGraph, EncoderGraph

OPSET = 18
# Graphs above this are saved with their weights in a side file (protobuf's limit is 2 GB).
EXTERNAL_DATA_BYTES = 1 << 30
QUANT_MODES = ("int8", "int4", "qdq")


@dataclass(frozen=True)
class ExportOptions:
    """How to export.

    Attributes:
        static: fixed shapes for NPUs (QNN): batch `rows`, text `text_len`, cache `cache_len`,
            one frame per decoder call, no dynamic dims.
        quantize: None (float32), "int8" (int8 weights, dynamic activation quantization via
            MatMulInteger), "int4" (onnxruntime MatMulNBits, block-wise) or "qdq" (static QDQ,
            uint8 weights and uint16 activations calibrated on recorded generations).
        rows: static batch in CFG rows (2 = one utterance).
        text_len: static text length in bytes (the original pads to 1024).
        cache_len: static self-attention cache length (default: the model's max positions).
        codec_frames: static codec window in frames.
        block_size: int4 block size.
        accuracy_level: int4 MatMulNBits compute: 4 (default) quantizes each activation row to int8
            and multiplies in integers, onnxruntime's fast CPU path; 0 dequantizes the weights to
            float32 first (the reference arithmetic; slower on CPU, see benchmarks/README.md).
        codec: DAC source for the codec graph (default: the model's: tiny-random for presets,
            else descript/dac_44khz); "none" skips the codec graph.
        calibration_scripts: scripts generated (greedy) to record QDQ calibration activations.
    """

    static: bool = False
    quantize: str | None = None
    rows: int = 2
    text_len: int = 1024
    cache_len: int | None = None
    codec_frames: int = 256
    block_size: int = 32
    accuracy_level: int = 4
    codec: str | None = None
    calibration_scripts: tuple[str, ...] = (
        "[S1] Hello there, how are you today? [S2] Fine, thanks (laughs).",
        "[S2] The weather is lovely. [S1] Let's go for a walk!",
        "[S1] One, two, three. [S2] Four, five, six, seven.",
    )
    calibration_max_tokens: int = 96

    def __post_init__(self) -> None:
        if self.quantize not in (None, *QUANT_MODES):
            raise GenerationError(f"quantize must be one of {', '.join(QUANT_MODES)} (or none), got {self.quantize!r}")
        for name in ("rows", "text_len", "codec_frames", "block_size"):
            if getattr(self, name) < 1:
                raise GenerationError(f"{name} must be positive, got {getattr(self, name)}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise GenerationError(f"accuracy_level must be 0..4, got {self.accuracy_level}")
        if self.rows % 2:
            raise GenerationError(f"rows counts CFG rows (2 per utterance) and must be even, got {self.rows}")


def export_onnx(model: str | os.PathLike, out_dir: str | os.PathLike, options: ExportOptions = ExportOptions(),
                log=print) -> dict:
    """Export `model` (preset, directory or hub id) to `out_dir`; returns the manifest written.

    Args:
        model: what `Dia.from_pretrained` takes (a float checkpoint).
        out_dir: created if missing; its graphs and config.json are replaced.
        options: see `ExportOptions`.
        log: called with one progress line per graph.
    """
    from ..checkpoints.dia1_load import load_model

    started = time.perf_counter()
    loaded = load_model(model, torch.device("cpu"), torch.float32, optimize=False)
    m, cfg = loaded.model, loaded.config
    static = _static_shapes(cfg, options) if options.static else None
    quantize = options.quantize
    out, float_dir = export_dirs(m, out_dir, quantize)

    graphs = {}
    with torch.no_grad(), _quiet():
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
            "source": str(model),
            "static": static is not None,
            "static_shapes": static,
            "quantize": quantize,
            "model_config": mf.config_to_json(cfg),
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
        graphs = q.quantize_graphs(float_dir, out, graphs, cfg, options, static, log=log)
        log(f"quantize {quantize}: {time.perf_counter() - t:.1f} s")
        shutil.rmtree(float_dir, ignore_errors=True)
    return manifest(out, graphs, quantize)


def export_dirs(model: torch.nn.Module, out_dir: str | os.PathLike, quantize: str | None) -> tuple[Path, Path]:
    """(OUT_DIR, the folder the float graphs go to), both created, for a float `model`. Float
    graphs go to a scratch folder `.float` first when they are only the input of a quantizer."""
    if any(not isinstance(p, torch.nn.Parameter) or p.dtype != torch.float32 for p in model.parameters()):
        raise GenerationError("export onnx needs a float checkpoint; export the float model with --quantize instead")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    float_dir = out / ".float" if quantize else out
    float_dir.mkdir(parents=True, exist_ok=True)
    return out, float_dir


def _static_shapes(cfg: DiaConfig, options: ExportOptions) -> dict:
    cache_len = options.cache_len or cfg.decoder.max_positions
    if not 1 < cache_len <= cfg.decoder.max_positions:
        raise GenerationError(f"cache_len must be in 2..{cfg.decoder.max_positions}, got {cache_len}")
    return {"rows": options.rows, "text_len": options.text_len, "cache_len": cache_len, "frames": 1,
            "codec_frames": options.codec_frames}


def _names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}_{i}" for i in range(n)]


def _export(module, args, path: Path, input_names, output_names, dynamic_shapes) -> dict:
    program = torch.onnx.export(module, args, dynamo=True, input_names=input_names, output_names=output_names,
                                dynamic_shapes=dynamic_shapes, opset_version=OPSET, optimize=True, verbose=False)
    big = sum(t.numel() * t.element_size() for t in module.state_dict().values()) > EXTERNAL_DATA_BYTES
    program.save(str(path), external_data=big)
    del program
    return {"file": path.name, "external_data": (path.name + ".data") if big else None}


def _export_encoder(m, cfg: DiaConfig, out: Path, static: dict | None) -> dict:
    n = cfg.decoder.n_layer
    b, s = (static["rows"], static["text_len"]) if static else (2, 7)
    text = torch.randint(1, 255, (b, s))
    mask = torch.ones(b, s, dtype=torch.bool)
    dyn = None
    if not static:
        rows, text_len = torch.export.Dim("rows"), torch.export.Dim("text_len")
        dyn = {"text": {0: rows, 1: text_len}, "text_mask": {0: rows, 1: text_len}}
    return _export(EncoderGraph(m).eval(), (text, mask), out / "encoder.onnx", ["text", "text_mask"],
                   _names("cross_k", n) + _names("cross_v", n), dyn)


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
    inputs = ["tokens", "positions", "text_mask"] + _names("cross_k", n) + _names("cross_v", n) \
        + _names("cache_k", n) + _names("cache_v", n)
    outputs = ["logits"] + _names("new_k", n) + _names("new_v", n)
    return _export(DecoderGraph(m).eval(), args, out / "decoder.onnx", inputs, outputs, dyn)


def _export_codec(source: str | None, out: Path, static_frames: int | None):
    from ..codecs.dac import DAC, DEFAULT_MODEL

    codec = DAC.from_pretrained(source or DEFAULT_MODEL, device="cpu", dtype="float32")
    cfg = codec.config
    b, t = (1, static_frames) if static_frames else (2, 5)
    codes = torch.randint(0, cfg.codebook_size, (b, cfg.n_codebooks, t))
    lengths = torch.full((b,), t, dtype=torch.long)
    dyn = None
    if not static_frames:
        items, frames = torch.export.Dim("items"), torch.export.Dim("frames")
        dyn = {"codes": {0: items, 2: frames}, "lengths": {0: items}}
    graph = _export(CodecGraph(codec.model).eval(), (codes, lengths), out / "codec.onnx", ["codes", "lengths"],
                    ["wave"], dyn)
    info = {"source": str(source or DEFAULT_MODEL), "codec_id": codec.codec_id, "sample_rate": codec.sample_rate,
            "hop_length": codec.hop_length, "n_codebooks": cfg.n_codebooks, "codebook_size": cfg.codebook_size,
            "decoder_rates": list(cfg.decoder_rates), "context_frames": codec.context_frames,
            "config": dataclasses.asdict(cfg)}
    return graph, info


class _quiet:
    """The exporter prints per-op progress and torchvision warnings on every call; keep the CLI's
    output to our own lines (errors still raise)."""

    def __enter__(self):
        self._level = logging.root.manager.disable
        logging.disable(logging.WARNING)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        return self

    def __exit__(self, *exc):
        logging.disable(self._level)
        self._warnings.__exit__(*exc)
        return False
