"""AMX against AVX-512, per matrix shape and row count, in one process (csrc/amx.c).

Where AMX pays depends on the CPU: it multiplies 16 x 16 x 64 bytes per instruction, but the
int8 path does two of them per weight tile (the hi and lo bytes of the int16 activations) and
half of each activation tile is zeros (the weights keep the AVX-512 row-pair layout). Counting
instructions, AMX at M rows does ~32 M useful int8 multiply-adds per cycle and core against
~64 for AVX-512 VNNI (int16 vpdpwssd on two ports): level at 2 rows, twice at 4. The int8
kernel takes AMX from `AMX_MIN_ROWS` = 4 rows on that count; this script is how a CPU with AMX
checks it. It alternates AMX on and off over the same weights (in cache: the multiplies, not the
stream, are what AMX changes) and prints G MAC/s for each.

    python benchmarks/amx_ab.py [--threads 2] [--rounds 5] [--json out.json]

On a CPU without AMX it says so and exits 0 (the emulated tiles are for tests, not timing).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from fastdia.backends.cpu import kernels
from fastdia.quant import formats

# (name, N, K): Dia2-2B decoder and depformer shapes and Dia-1's (spec 8; spec 7.1)
SHAPES = [("dia2.qkv", 4096, 2048), ("dia2.mlp.down", 2048, 8192), ("dia2.dep.mlp.up", 6144, 1024),
          ("dia2.dep.mlp.down", 1024, 3072), ("dia1.mlp.gate_up", 16384, 2048)]
ROWS = (2, 4, 8, 16, 64)


def _time(fn, reps: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    status = kernels.amx_status()
    if status != "on":
        print(f"AMX {status}: nothing to compare on this CPU")
        return 0
    rows_out = []
    gen = torch.Generator().manual_seed(0)
    for name, n, k in SHAPES:
        q, scale = formats.quantize_int8(torch.randn(n, k, generator=gen) / math.sqrt(k))
        w = formats.kernel_layout(q, 32, k)
        wb = (torch.randn(n, k, generator=gen) / math.sqrt(k)).to(torch.bfloat16)
        for m in ROWS:
            x = torch.randn(m, k, generator=gen)
            best = {}
            for _ in range(args.rounds):  # alternating, best of each
                for mode in ("on", "off"):
                    kernels.set_amx(mode)
                    for kind, fn in (("int8", lambda: kernels.q8_gemv(x, w, scale, n)),
                                     ("bf16", lambda: kernels.float_gemv(x, wb))):
                        s = _time(fn, reps=max(3, 2000 // (m * 8)))
                        key = (kind, mode)
                        best[key] = min(best.get(key, s), s)
            kernels.set_amx("on")
            for kind in ("int8", "bf16"):
                on, off = (m * n * k / best[(kind, mode)] / 1e9 for mode in ("on", "off"))
                rows_out.append({"shape": name, "n": n, "k": k, "rows": m, "kind": kind,
                                 "amx_gmacs": on, "avx512_gmacs": off, "ratio": on / off})
                print(f"{name:20s} {kind} {m:3d} rows: AMX {on:7.1f}  AVX-512 {off:7.1f} G MAC/s  ({on / off:.2f}x)")
    if args.json:
        from fastdia.bench.runner import _machine

        with open(args.json, "w") as f:
            json.dump({"machine": _machine(), "threads": args.threads, "results": rows_out}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
