"""`fastdia bench`: runner.py (child processes, the bandwidth probe, the table), roofline.py, one
module per family (dia1.py, dia2.py), quality.py, onnx.py and original.py (the original Dia2 runtime)."""
