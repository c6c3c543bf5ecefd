"""ONNX export of Dia-1 (`fastdia export onnx`) and an onnxruntime backend for it.

export.py writes the graphs (graphs.py) and the manifest (manifest.py); quantize.py makes the
int8 / int4 / QDQ variants; runtime.py drives exported graphs through fastdia's own generation
loop. Needs the `onnx` extra (onnx, onnxscript, onnxruntime).
"""
