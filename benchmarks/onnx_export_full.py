"""Export the full-size random Dia-1.6B (float32 with external data, then int8 and int4 from it)
and record sizes, export times and peak RSS in benchmarks/onnx_export_full.json.

Run: python benchmarks/onnx_export_full.py OUT_ROOT   (needs ~20 GB free RAM and ~12 GB disk)
"""

import json
import resource
import sys
import time
from pathlib import Path

from fastdia.backends.onnx.common import ExportOptions
from fastdia.dia1.onnx import export_onnx


def main() -> None:
    root = Path(sys.argv[1])
    modes = sys.argv[2:] or ["float32", "int8", "int4"]
    results_path = Path(__file__).with_suffix(".json")
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for mode in modes:
        out = root / f"dia-1.6b-random-{mode}"
        t = time.perf_counter()
        if mode == "float32":
            info = export_onnx("dia-1.6b-random", out, ExportOptions(codec="none"))
        else:
            # Quantize from the float export already on disk (no second torch export).
            from fastdia.backends.onnx.requantize import quantize_export

            info = quantize_export(root / "dia-1.6b-random-float32", out, mode)
        seconds = time.perf_counter() - t
        results[mode] = {
            "seconds": round(seconds, 1),
            "peak_rss_gb_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
            "graphs": {k: {"bytes": v["bytes"], "file": v["file"], "external_data": v["external_data"],
                           "op_types": v["op_types"]} for k, v in info["graphs"].items()},
            "total_gb": round(sum(v["bytes"] for v in info["graphs"].values()) / 1e9, 3),
        }
        print(mode, json.dumps({k: v for k, v in results[mode].items() if k != "graphs"}), flush=True)
        results_path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
