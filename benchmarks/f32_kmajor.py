"""Output-major float32 panels against fastdia's float32 GEMV, by row count (f32_kmajor.c).

Compiles benchmarks/f32_kmajor.c (AVX-512), checks it against torch, then times both kernels on the
same weights, calls alternating, at 1-128 rows for the tiny models' shapes (K = 128, 256) and a
full-size one (K = 2048), and reports G multiply-adds/s. Also checks that a row's outputs are the
same bits whatever the row count (the layout's point).

    python benchmarks/f32_kmajor.py --threads 1 --out benchmarks/results/f32-kmajor-1t.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastdia.backends.cpu import kernels  # noqa: E402
from fastdia.backends.cpu.features import cpu_features  # noqa: E402
from fastdia.bench.runner import _machine  # noqa: E402

SHAPES = [(9216, 128, "tiny Dia-1 head (9252 outputs, rounded)"), (512, 128, "tiny MLP up"),
          (1024, 256, "tiny Dia2"), (2048, 2048, "full-size square")]
ROWS = [1, 2, 8, 16, 32, 64, 128]


def build(tmp: Path) -> ctypes.CDLL:
    out = tmp / "f32_kmajor.so"
    subprocess.run(["gcc", "-O3", "-mavx512f", "-mfma", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC",
                    str(ROOT / "benchmarks" / "f32_kmajor.c"), "-o", str(out)], check=True)
    lib = ctypes.CDLL(str(out))
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.kmajor_pack.argtypes = [p, i64, i64, p]
    lib.kmajor_gemm.argtypes = [p, i64, i64, p, i64, p, ctypes.c_int]
    return lib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not kernels.available():
        raise SystemExit(f"fastdia's kernels are off here: {kernels.unavailable_reason()}")
    if "avx512f" not in cpu_features().reported:
        raise SystemExit("the prototype is written for AVX-512, which this CPU lacks")
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        lib = build(Path(tmp))
        for n, k, what in SHAPES:
            g = torch.Generator().manual_seed(0)
            w = torch.randn(n, k, generator=g) / k ** 0.5
            wp = torch.empty(n * k)
            lib.kmajor_pack(w.data_ptr(), n, k, wp.data_ptr())
            for m in ROWS:
                x = torch.randn(m, k, generator=g)
                y = torch.empty(m, n)

                def ours() -> None:
                    lib.kmajor_gemm(x.data_ptr(), m, k, wp.data_ptr(), n, y.data_ptr(), args.threads)

                ours()
                err = (y - x @ w.T).abs().max().item()
                y1 = torch.empty(1, n)
                lib.kmajor_gemm(x[-1:].contiguous().data_ptr(), 1, k, wp.data_ptr(), n, y1.data_ptr(), args.threads)
                invariant = torch.equal(y1[0], y[-1])
                reps = max(1, int(2e8 / (m * n * k)))
                times = {"fastdia": [], "panels": []}
                for _ in range(args.rounds):
                    for name, fn in (("fastdia", lambda: kernels.float_gemv(x, w)), ("panels", ours)):
                        fn()
                        t = time.perf_counter()
                        for _ in range(reps):
                            fn()
                        times[name].append((time.perf_counter() - t) / reps)
                rate = {name: m * n * k / statistics.median(ts) / 1e9 for name, ts in times.items()}
                row = {"n": n, "k": k, "shape": what, "rows": m, "gmacs_fastdia": round(rate["fastdia"], 1),
                       "gmacs_panels": round(rate["panels"], 1), "max_err_vs_torch": err,
                       "row_alone_same_bits": invariant}
                rows_out.append(row)
                print(f"{what:40s} {m:4d} rows: fastdia {rate['fastdia']:6.1f}  panels {rate['panels']:6.1f} "
                      f"G MAC/s  (x{rate['panels'] / rate['fastdia']:.2f}; err {err:.1e}; row alone same bits: "
                      f"{invariant})", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"machine": _machine(), "threads": args.threads, "results": rows_out}, indent=1))


if __name__ == "__main__":
    main()
