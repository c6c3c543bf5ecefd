"""Roofline of a decode step: what bounds steps/s on this CPU, measured in the run that reports it.

A decode step multiplies a few activation rows (2 per script: CFG) by every weight it touches.
Two things bound how fast that can go:

* **memory**: the weight bytes the step reads from DRAM, at the read bandwidth the bench probed;
* **compute**: per weight format, the step's multiply-accumulates (MACs) at the rate fastdia's
  kernel for that format reaches with its weights in cache. That rate is measured here, on the
  model's own projections of at most `CACHE_BYTES`, called back to back with the step's row
  count, so it includes what a call really costs (quantizing the activations, unpacking the
  weights, the per-call overhead).

No step can be faster than either bound, and only a kernel that overlaps the two perfectly
reaches the larger one. So `bound_steps_per_s` = 1 / max(memory, compute) is an upper bound for
the step's projections alone; sampling and the float32 glue (norms, attention) come on top.
A target above it is beyond this machine for these kernels; one below it but not reached is
fastdia's to close.
"""

from __future__ import annotations

import time

CACHE_BYTES = 24 << 20  # candidates for the in-cache rate: at most three quarters of a 32 MB L3
MAX_TIMED = 4  # projections timed per format


def projections(module) -> list:
    """The modules that multiply (anything with `out_features`), a row-split projection as its
    two blocks, since they may use different formats."""
    parts = [getattr(module, "first", None), getattr(module, "rest", None)]
    if all(p is not None and hasattr(p, "out_features") for p in parts):
        return [q for p in parts for q in projections(p)]
    return [module]


def weight_format(module) -> str:
    """"int8", "int4", "float32", "bfloat16", ... for a projection."""
    name = type(module).__name__
    if name.startswith("Int8"):
        return "int8"
    if name.startswith("Int4"):
        return "int4"
    dtype = getattr(module, "dtype", None)
    if dtype is None:
        weight = getattr(module, "weight", None)
        dtype = weight.dtype if weight is not None else None
    return str(dtype).removeprefix("torch.") if dtype is not None else name


def nbytes(module) -> int:
    """Bytes of a projection's (or embedding's) weights in its own format."""
    if hasattr(module, "nbytes") and callable(module.nbytes):
        return module.nbytes()
    return module.weight.numel() * module.weight.element_size()


def _by_format(modules) -> dict[str, list]:
    """Distinct projections of `modules` per weight format."""
    out: dict[str, dict] = {}
    for m in modules:
        for p in projections(m):
            out.setdefault(weight_format(p), {})[id(p)] = p
    return {f: list(ps.values()) for f, ps in out.items()}


def macs_by_format(modules, rows: int) -> dict[str, float]:
    """MACs of one step per weight format: `modules` lists each projection once per time the step
    runs it."""
    out: dict[str, float] = {}
    for m in modules:
        for p in projections(m):
            f = weight_format(p)
            out[f] = out.get(f, 0.0) + rows * p.in_features * p.out_features
    return out


def kernel_rates(candidates, rows: int, step_modules=(), repeats: int = 25) -> dict[str, dict]:
    """Per format, the best MAC rate over `candidates` (projections of the model), each called
    back to back on `rows` random rows so its weights stay in cache. A format of `step_modules`
    that no candidate has is timed on the step's own projections of that format. Either way the
    largest `MAX_TIMED` that fit `CACHE_BYTES` are timed (a tiny one measures only the call
    overhead), or the smallest where none fits."""
    import torch

    pool = _by_format(step_modules)
    pool.update(_by_format(candidates))  # the candidates, where they cover a format
    out = {}
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for f, mods in pool.items():
            fits = sorted((m for m in mods if nbytes(m) <= CACHE_BYTES), key=nbytes)[-MAX_TIMED:]
            best = None
            for m in fits or [min(mods, key=nbytes)]:
                x = torch.randn(rows, m.in_features, generator=gen)
                for _ in range(3):
                    m(x)
                ts = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    m(x)
                    ts.append(time.perf_counter() - t0)
                t = sorted(ts)[len(ts) // 2]
                rate = rows * m.in_features * m.out_features / t
                if best is None or rate > best["macs_per_s"]:
                    best = {"macs_per_s": rate, "bytes_per_s": nbytes(m) / t, "shape": [m.out_features, m.in_features],
                            "weight_bytes": nbytes(m), "call_us": t * 1e6}
            out[f] = best
    return out


def bound(dram_bytes: float, read_bytes_per_s: float, macs: dict[str, float], rates: dict[str, dict]) -> dict:
    """The step's two bounds (ms) and the steps/s neither lets it pass."""
    memory = dram_bytes / read_bytes_per_s
    compute = {f: n / rates[f]["macs_per_s"] for f, n in macs.items() if f in rates}
    compute_s = sum(compute.values())
    limit = max(memory, compute_s)
    return {
        "memory_ms": memory * 1e3,
        "compute_ms": compute_s * 1e3,
        "compute_ms_by_format": {f: t * 1e3 for f, t in compute.items()},
        "bound_steps_per_s": 1.0 / limit if limit > 0 else None,
        "bound_no_overlap_steps_per_s": 1.0 / (memory + compute_s) if memory + compute_s > 0 else None,
        "limit": "memory" if memory >= compute_s else "compute",
    }


def describe(r: dict, read_GBps: float) -> str:
    """One line for the bench log."""
    rf = r["roofline"]
    rates = ", ".join(f"{f} {v['macs_per_s'] / 1e9:.3g}" for f, v in r["kernel_rates"].items())
    macs = sum(r["macs_per_step"].values())
    return (f"roofline: {r['weight_bytes_per_step'] / 1e9:.2f} GB/step from DRAM at {read_GBps:.1f} GB/s = "
            f"{rf['memory_ms']:.3g} ms; {macs / 1e9:.2f} GMAC/step at the kernels' in-cache rates ({rates} GMAC/s "
            f"at {r['roofline_rows']} rows) = {rf['compute_ms']:.3g} ms; bound {rf['bound_steps_per_s']:.2f} steps/s "
            f"({rf['limit']}-bound; {rf['bound_no_overlap_steps_per_s']:.2f} without overlap), measured "
            f"{100 * r['steps_per_s'] / rf['bound_steps_per_s']:.0f}% of it")


def summary(label: str, r: dict) -> str | None:
    """One line under the bench table, or None for a row without a roofline."""
    rf = r.get("roofline")
    if rf is None:
        return None
    return (f"roofline {label}: bound {rf['bound_steps_per_s']:.2f} steps/s ({rf['limit']}-bound: memory "
            f"{rf['memory_ms']:.3g} ms, compute {rf['compute_ms']:.3g} ms per step), measured "
            f"{100 * r['steps_per_s'] / rf['bound_steps_per_s']:.0f}% of it")


RETENTION_GAPS_MS = (0.0, 0.5, 1.0, 2.0, 5.0)


def cache_retention(mib: int = 8, gaps_ms=RETENTION_GAPS_MS, repeats: int = 25) -> dict:
    """How long data read once stays in the last-level cache: the read rate of a `mib` MiB buffer
    (well inside a 32 MB L3, far over L2) re-read after `gap` ms of doing nothing with memory
    (a spin on the clock). At gap 0 it is the cache's rate; a rate that falls to the DRAM probe's
    as the gap grows means the lines were evicted by something other than this process (on a VM,
    the neighbours sharing the L3). Weights reused after that long come from DRAM whatever their
    order or prefetch hints, which decides whether the depformer's per-stage working set can be
    served from cache (`benchmarks/README.md`, "Can the depformer live in L3?")."""
    import torch

    buf = torch.ones((mib << 20) // 4)
    rates = []
    with torch.inference_mode():
        for gap in gaps_ms:
            ts = []
            for i in range(repeats + 3):
                t0 = time.perf_counter()
                buf.sum()
                t = time.perf_counter() - t0
                if i >= 3:
                    ts.append(t)
                end = time.perf_counter() + gap / 1e3
                while time.perf_counter() < end:
                    pass
            rates.append((mib << 20) / sorted(ts)[len(ts) // 2] / 1e9)
    return {"buffer_MiB": mib, "gaps_ms": list(gaps_ms), "GBps": rates}


def describe_retention(ret: dict, read_GBps: float, reuse_ms: float | None = None) -> str:
    """One line for the bench log."""
    gaps = " / ".join(f"{g:g}" for g in ret["gaps_ms"])
    rates = " / ".join(f"{r:.0f}" for r in ret["GBps"])
    reuse = "" if reuse_ms is None else f"; a depformer stage's shared weights are reused {reuse_ms:.1f} ms apart"
    return (f"cache retention: a {ret['buffer_MiB']} MiB buffer re-read after {gaps} ms idle: {rates} GB/s "
            f"(DRAM probe {read_GBps:.1f} GB/s){reuse}")
