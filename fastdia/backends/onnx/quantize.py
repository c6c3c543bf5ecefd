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


from .common import EXTERNAL_DATA_BYTES, ExportOptions

QDQ_OPSET = 21
QUANTIZED_GRAPHS = ("encoder", "decoder")


def quantize_graphs(src: Path, dst: Path, graphs: dict, options: ExportOptions,
                    static: dict | None, record, log=print, quantized: tuple[str, ...] = QUANTIZED_GRAPHS) -> dict:
    """Quantize `src`'s `quantized` graphs (Dia-1: encoder and decoder) into `dst` (the others, the
    codec, are copied); returns the graph records. `record(src, options)` gives the qdq calibration
    feeds per graph (the family's export module has it: dia1_export / dia2_export.record_calibration)."""
    mode = options.quantize
    calibration = record(src, options) if mode == "qdq" else None
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


