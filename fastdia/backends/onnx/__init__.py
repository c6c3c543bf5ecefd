"""ONNX export of Dia-1 and Dia2 (`fastdia export onnx`) and an onnxruntime backend for each.

export.py writes the graphs (graphs.py) and the manifest (manifest.py); quantize.py makes the
int8 / int4 / QDQ variants; runtime.py drives exported graphs through fastdia's own generation
loop; the dia2_* modules do the same for Dia2 (dia2_compare.py: quantized top-1 agreement).
Needs the `onnx` extra (onnx, onnxscript, onnxruntime).
"""
