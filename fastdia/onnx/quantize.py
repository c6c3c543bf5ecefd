"""Quantized variants of exported float graphs, with onnxruntime's own quantizers.

* int8: int8 weights per output channel, activations quantized on the fly (DynamicQuantizeLinear
  + MatMulInteger: standard ops, any CPU runtime).
* int4: onnxruntime's MatMulNBits (com.microsoft), 4-bit symmetric blocks along the input axis.
* qdq: static QDQ, uint8 weights and uint16 activations around every MatMul, ranges calibrated
  on the inputs recorded while the float graphs generate a few scripts. 16-bit QuantizeLinear
  is standard only from opset 21, so these graphs are converted to 21 first (below that
  onnxruntime would emit its com.microsoft Q/DQ ops, which NPU toolchains do not take).

Only MatMuls with constant weights are touched: the projections and the output head. Attention
(scores against the cache) and the masked softmax stay float; the codec graph stays float.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..config import DiaConfig
from .export import EXTERNAL_DATA_BYTES, ExportOptions

QDQ_OPSET = 21
QUANTIZED_GRAPHS = ("encoder", "decoder")


def quantize_graphs(src: Path, dst: Path, graphs: dict, cfg: DiaConfig, options: ExportOptions,
                    static: dict | None, log=print, quantized: tuple[str, ...] = QUANTIZED_GRAPHS,
                    record=None) -> dict:
    """Quantize `src`'s `quantized` graphs (Dia-1: encoder and decoder) into `dst` (the others, the
    codec, are copied); returns the graph records. `record(src, options)` gives the qdq calibration
    feeds per graph (default: Dia-1's)."""
    mode = options.quantize
    calibration = (record or _record_calibration)(src, options) if mode == "qdq" else None
    out = {}
    for name, graph in graphs.items():
        path = src / graph["file"]
        if name not in quantized:
            _copy_graph(src, dst, graph)
            out[name] = graph
            continue
        target = dst / graph["file"]
        big = path.stat().st_size + (src / graph["external_data"]).stat().st_size \
            if graph.get("external_data") else path.stat().st_size
        external = big / (4 if mode == "int4" else 2 if mode == "int8" else 3) > EXTERNAL_DATA_BYTES
        for stale in (target, Path(str(target) + ".data")):
            stale.unlink(missing_ok=True)
        if mode == "int8":
            _int8(path, target, external)
        elif mode == "int4":
            _int4(path, target, external, options.block_size, options.accuracy_level)
        else:
            _qdq(path, target, external, calibration[name])
        out[name] = {"file": target.name, "external_data": target.name + ".data" if external else None}
        log(f"{name}: {mode} done")
    return out


def _copy_graph(src: Path, dst: Path, graph: dict) -> None:
    for f in (graph["file"], graph.get("external_data")):
        if f:
            shutil.copyfile(src / f, dst / f)


def _int8(path: Path, target: Path, external: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(path), str(target), op_types_to_quantize=["MatMul"], per_channel=True,
                     weight_type=QuantType.QInt8, use_external_data_format=external,
                     extra_options={"MatMulConstBOnly": True})
    _rename_data(target, external)


def _int4(path: Path, target: Path, external: bool, block_size: int, accuracy_level: int = 4) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(path))
    # accuracy level 4: activations int8 per block inside MatMulNBits (the integer kernels); at the
    # default 0, onnxruntime dequantizes to float32 and the int4 export ran slower than int8.
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=True,
                                     accuracy_level=accuracy_level or None, op_types_to_quantize=("MatMul",))
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=external)
    _rename_data(target, external)


def _qdq(path: Path, target: Path, external: bool, samples: list[dict]) -> None:
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = version_converter.convert_version(onnx.load(str(path)), QDQ_OPSET)
    upgraded = target.with_suffix(".opset21.onnx")
    onnx.save(model, str(upgraded), save_as_external_data=external, location=upgraded.name + ".data")
    del model

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    try:
        quantize_static(str(upgraded), str(target), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul"], activation_type=QuantType.QUInt16,
                        weight_type=QuantType.QUInt8, per_channel=False, use_external_data_format=external,
                        extra_options={"MatMulConstBOnly": True, "UseQDQContribOps": False})
    finally:
        upgraded.unlink(missing_ok=True)
        Path(str(upgraded) + ".data").unlink(missing_ok=True)
    _rename_data(target, external)


def _rename_data(target: Path, external: bool) -> None:
    """onnxruntime's quantizers name the weights file `<graph>.onnx.data` already; check it."""
    if external and not Path(str(target) + ".data").exists():
        raise RuntimeError(f"the quantizer did not write {target.name}.data")


def _record_calibration(src: Path, options: ExportOptions) -> dict[str, list[dict]]:
    """Encoder and decoder feeds recorded while the float graphs speak the calibration scripts greedily."""
    import torch

    from ..generation.dia1 import Dia1Generator
    from ..generation.options import GenerationConfig
    from ..text import tokenize
    from .runtime import OrtDiaModel

    model = OrtDiaModel(src)
    recorded = {"encoder": [], "decoder": []}
    for name, part in (("encoder", model.encoder), ("decoder", model.decoder)):
        run = part.session.run

        def recording(outputs, feeds, *args, _run=run, _list=recorded[name]):
            _list.append({k: np.array(v, copy=True) for k, v in feeds.items()})
            return _run(outputs, feeds, *args)

        part.session = _Recorder(part.session, recording)
    generator = Dia1Generator(model, torch.device("cpu"), torch.float32)
    max_tokens = options.calibration_max_tokens
    if model.static:
        max_tokens = min(max_tokens, model.static["cache_len"])
    gen = GenerationConfig(max_tokens=max_tokens, temperature=0.0)
    with torch.inference_mode():
        for script in options.calibration_scripts:
            generator.generate([tokenize(script)], [None], gen)
    return recorded


class _Recorder:
    def __init__(self, session, run) -> None:
        self._session, self.run = session, run

    def __getattr__(self, name):
        return getattr(self._session, name)


def quantize_export(src: str | Path, dst: str | Path, mode: str, block_size: int = 32, log=print) -> dict:
    """Quantize an existing float32 export folder `src` into `dst` (no torch export); returns its manifest."""
    import json
    import time

    from .manifest import config_from_json, describe_graph, read_manifest

    src, dst = Path(src), Path(dst)
    info = read_manifest(src)
    if info is None or info.get("quantize"):
        raise ValueError(f"{src} is not a float32 fastdia ONNX export")
    dst.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    graphs = {k: {"file": v["file"], "external_data": v["external_data"]} for k, v in info["graphs"].items()}
    static = info.get("static_shapes") if info.get("static") else None
    options = ExportOptions(quantize=mode, block_size=block_size, static=bool(static))
    if info.get("family") == "dia2":
        from .dia2_export import quantized_graphs, record_calibration

        done = quantize_graphs(src, dst, graphs, None, options, static, log=log, quantized=quantized_graphs(graphs),
                               record=record_calibration)
        for name in info.get("tokenizer_files", ()):
            shutil.copyfile(src / name, dst / name)
    else:
        done = quantize_graphs(src, dst, graphs, config_from_json(info["model_config"]), options, static, log=log)
    raw = json.loads((src / "config.json").read_text())
    described = {k: {**describe_graph(dst, g), "purpose": info["graphs"][k]["purpose"]} for k, g in done.items()}
    raw["fastdia_onnx"].update(quantize=mode, graphs=described, quantize_seconds=round(time.perf_counter() - started, 1))
    (dst / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    return raw["fastdia_onnx"]
