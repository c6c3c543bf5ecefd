"""Micro-benchmark: Dia-1 decoder matmul shapes with M = 2 rows (one utterance with CFG).

Decoding one step multiplies a (2, K) activation by every decoder weight once, so each call is a
matrix-vector product bound by how fast the weight streams from memory. This script times the
CPU variants torch offers for each weight dtype, cycling through enough copies of each weight
that nothing is served from the last-level cache, and a memory-bandwidth probe for reference.

    python benchmarks/matvec.py --threads 2 [--json benchmarks/matvec.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch
import torch.nn.functional as F

# (name, out N, in K) for one decoder layer plus the head (spec 7.1).
SHAPES = [
    ("self.qkv", 3072, 2048),
    ("self.o", 2048, 2048),
    ("cross.q", 2048, 2048),
    ("cross.o", 2048, 2048),
    ("mlp.gate_up", 16384, 2048),
    ("mlp.down", 2048, 8192),
    ("head", 9252, 2048),
]
# How many times each shape runs per decode step (18 layers; the head once).
PER_STEP = {"head": 1}
LAYERS = 18
FOOTPRINT = 256 << 20  # bytes of weight copies cycled per variant: 8x the 32 MiB L3
M = 2


def bandwidth_probe(gib: float = 1.0, reps: int = 5) -> dict:
    """Best-of-`reps` read (sum) and copy bandwidth, GB/s: the same probe as `fastdia bench`."""
    from fastdia.bench.common import measure_bandwidth

    return measure_bandwidth(mib=int(gib * 1024), reps=reps)


def _int8(w):
    scale = w.abs().amax(1).clamp(min=1e-8) / 127
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def _int4(w, group):
    n, k = w.shape
    if n % 16:  # the int4 CPU packing wants N % 16 == 0: pad with zero rows (the head: 9252)
        w = torch.cat((w, w.new_zeros(16 - n % 16, k)))
        n = w.shape[0]
    wg = w.view(n, k // group, group)
    lo, hi = wg.amin(-1), wg.amax(-1)
    scale = (hi - lo).clamp(min=1e-8) / 15
    q = torch.round((wg - lo[..., None]) / scale[..., None]).clamp(0, 15).view(n, k).to(torch.int32)
    zero = lo + 8 * scale
    sz = torch.stack((scale, zero), -1).transpose(0, 1).contiguous()  # (K/g, N, 2)
    return q, sz


def variants():
    v = {}

    v["fp32 F.linear"] = (
        lambda w: (w.contiguous(), w.numel() * 4),
        lambda x, p: F.linear(x, p),
        torch.float32,
    )
    v["fp32 mkl packed"] = (
        lambda w: ((torch.ops.mkl._mkl_reorder_linear_weight(w.contiguous(), M), w.contiguous()), w.numel() * 4),
        lambda x, p: torch.ops.mkl._mkl_linear(x, p[0], p[1], None, M),
        torch.float32,
    )
    v["fp32 onednn packed"] = (
        lambda w: (torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), M), w.numel() * 4),
        lambda x, p: torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], ""),
        torch.float32,
    )
    v["bf16 F.linear"] = (
        lambda w: (w.to(torch.bfloat16).contiguous(), w.numel() * 2),
        lambda x, p: F.linear(x, p),
        torch.bfloat16,
    )
    v["bf16 onednn packed"] = (
        lambda w: (torch.ops.mkldnn._reorder_linear_weight(w.to(torch.bfloat16).contiguous(), M), w.numel() * 2),
        lambda x, p: torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], ""),
        torch.bfloat16,
    )
    v["fp16w fp32x fbgemm"] = (
        lambda w: (torch.ops.quantized.linear_prepack_fp16(w.contiguous()), w.numel() * 2),
        lambda x, p: torch.ops.quantized.linear_dynamic_fp16(x, p),
        torch.float32,
    )

    def int8_prep(w):
        q, s = _int8(w)
        return (q, s), q.numel() + s.numel() * 4

    v["int8 _weight_int8pack_mm fp32x"] = (int8_prep, lambda x, p: torch.ops.aten._weight_int8pack_mm(x, p[0], p[1]),
                                           torch.float32)
    v["int8 _weight_int8pack_mm bf16x"] = (
        lambda w: ((lambda q, s: ((q, s.to(torch.bfloat16)), q.numel() + s.numel() * 2))(*_int8(w))),
        lambda x, p: torch.ops.aten._weight_int8pack_mm(x, p[0], p[1]),
        torch.bfloat16,
    )

    def dyn8_prep(w):
        q, s = _int8(w)
        qw = torch._make_per_channel_quantized_tensor(q, s.double(), torch.zeros_like(s, dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(qw, None), q.numel() + s.numel() * 8

    v["int8 w8a8-dynamic fbgemm"] = (dyn8_prep, lambda x, p: torch.ops.quantized.linear_dynamic(x, p, False),
                                     torch.float32)

    for group in (32, 64, 128):
        for xdt in (torch.bfloat16, torch.float32):
            def prep(w, group=group, xdt=xdt):
                q, sz = _int4(w, group)
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 8)
                return (packed, sz.to(xdt)), packed.numel() + sz.numel() * sz.to(xdt).element_size()

            def run(x, p, group=group):
                y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, p[0], group, p[1])
                return y[:, :9252] if y.shape[1] == 9264 else y

            v[f"int4 g{group} _weight_int4pack_mm {'bf16' if xdt == torch.bfloat16 else 'fp32'}x"] = (prep, run, xdt)
    try:
        from fastdia.backends.cpu import kernels as cpu_kernels
        from fastdia.quant.modules import Int4Linear, Int8Linear
    except ImportError:
        return v
    if cpu_kernels.available():
        v["fp32 fastdia gemv"] = (lambda w: (w.contiguous(), w.numel() * 4),
                                  lambda x, p: cpu_kernels.float_gemv(x, p), torch.float32)
        v["bf16 fastdia gemv"] = (lambda w: (w.to(torch.bfloat16).contiguous(), w.numel() * 2),
                                  lambda x, p: cpu_kernels.float_gemv(x, p), torch.bfloat16)
        # The modules fastdia uses: weights in row pairs (tiled), int4 with integer group steps.
        v["int8 fastdia VNNI fp32x"] = (
            lambda w: ((lambda m: (m, m.nbytes()))(Int8Linear.from_float(w))),
            lambda x, m: m(x),
            torch.float32,
        )
        for group in (32, 64, 128):
            v[f"int4 g{group} fastdia VNNI fp32x"] = (
                lambda w, group=group: ((lambda m: (m, m.nbytes()))(Int4Linear.from_float(w, group))),
                lambda x, m: m(x),
                torch.float32,
            )
    return v


def time_variant(prep, run, xdt, n, k, reps):
    w = torch.randn(n, k) / math.sqrt(k)
    first, nbytes = prep(w)
    copies = [first] + [prep(torch.randn(n, k) / math.sqrt(k))[0]
                        for _ in range(max(1, math.ceil(FOOTPRINT / nbytes)) - 1)]
    x = torch.randn(M, k).to(xdt)
    ref = F.linear(x.float(), w)
    y = run(x, first)
    err = ((y.float() - ref).norm() / ref.norm()).item()
    for p in copies:  # warm-up
        run(x, p)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        for p in copies:
            run(x, p)
        best = min(best, (time.perf_counter() - t0) / len(copies))
    return best, nbytes, err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", default=None, help="substring filter on variant names")
    ap.add_argument("--json", default=None, help="write raw results to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    bw = bandwidth_probe()
    print(f"torch {torch.__version__}, {args.threads} threads, M={M}; "
          f"bandwidth: read {bw['read_GBps']:.1f} GB/s, copy {bw['copy_GBps']:.1f} GB/s")
    results = {"torch": torch.__version__, "threads": args.threads, "m": M, "bandwidth": bw,
               "machine": platform.processor() or platform.machine(), "variants": {}}
    for name, (prep, run, xdt) in variants().items():
        if args.only and args.only not in name:
            continue
        per_shape, step_s, step_bytes = {}, 0.0, 0
        try:
            for sname, n, k in SHAPES:
                sec, nbytes, err = time_variant(prep, run, xdt, n, k, args.reps)
                per_shape[sname] = {"us": sec * 1e6, "GBps": nbytes / sec / 1e9, "rel_err": err}
                count = PER_STEP.get(sname, LAYERS)
                step_s += sec * count
                step_bytes += nbytes * count
        except Exception as exc:  # a variant this build does not support
            print(f"{name:36s} unsupported: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
            continue
        ceiling = bw["read_GBps"] * 1e9 / step_bytes
        results["variants"][name] = {"shapes": per_shape, "step_ms": step_s * 1e3, "step_bytes": step_bytes,
                                     "steps_per_s": 1 / step_s, "ceiling_steps_per_s": ceiling}
        cols = " ".join(f"{sname}={r['us']:7.0f}us/{r['GBps']:5.1f}" for sname, r in per_shape.items())
        errs = max(r["rel_err"] for r in per_shape.values())
        print(f"{name:36s} matmuls/step {step_s * 1e3:7.1f} ms = {1 / step_s:6.2f} steps/s "
              f"({100 / step_s / ceiling:4.0f}% of {ceiling:5.1f}) err {errs:.1e} | {cols}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
