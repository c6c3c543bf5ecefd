"""`fastdia bench` for Dia2, the parent side: runs the children (fastdia.bench.dia2's speed and
profile, fastdia.bench.quality's agreement, fastdia.bench.original's reference runtime), then
derives each row's ceiling fractions and roofline and prints the table."""

from __future__ import annotations

from . import original as bench_original
from . import roofline
from .common import DEFAULT_TEXT, pct, run_child, set_after_run_fraction
from .dia2 import DEFAULT_TEXT_DIA2, FRAME_RATE
from .quality import run_quality_dia2


def _label(r: dict) -> str:
    if r.get("impl") == "dia2-original":
        return "original Dia2 float32"
    q = r["quantize"]
    plain = " plain" if r.get("impl") == "fastdia-plain" else ""
    return f"fastdia {r['dtype']}{plain}" + ("" if q == "none" else f" {q}")


def run_bench_dia2(args, base: dict, bw: dict, out: dict, variants, log=print, compare=()) -> dict:
    """Speed (and quality, profile) of each variant, appended to `out` (fastdia.bench.runner's report).

    `compare` may hold "original" (the original runtime on the same weights, fastdia.bench.original)
    and "plain" (fastdia's float32 model in plain torch); both run before the variants."""
    import shutil

    text = args.text if args.text != _bench_default_text() else DEFAULT_TEXT_DIA2
    base = dict(base, text=text)
    if "original" in compare and base["batch"] != 1:
        raise RuntimeError("--compare original times one script (--batch 1): the original runtime has no batches")
    original = bench_original.prepare(base, log) if "original" in compare else None
    try:
        specs = []
        if original is not None:
            specs.append(dict(base, kind="dia2_original", directory=str(original[0])))
        if "plain" in compare:
            specs.append(dict(base, kind="dia2", dtype="float32", quantize=None, plain=True))
        specs += [dict(base, kind="dia2", dtype=d, quantize=q) for d, q in variants]
        _run_speed(specs, bw, out, log)
        for key, impl in (("vs_original", "dia2-original"), ("vs_plain", "fastdia-plain")):
            ref = next((r for r in out["results"] if r.get("impl") == impl), None)
            if ref and ref["steps_per_s"]:
                for r in out["results"]:
                    r[key] = r["steps_per_s"] / ref["steps_per_s"]
        if args.quality:
            out["quality"] = run_quality_dia2(base, [(d, q) for d, q in variants if not _is_reference(base, d, q)],
                                              log, original=None if original is None else original[0])
    finally:
        if original is not None and original[1] is not None:
            shutil.rmtree(original[1], ignore_errors=True)
    if getattr(args, "profile", False):
        _run_profiles([s for s in specs if s["kind"] == "dia2"], bw, out, log)
    return out


def _run_speed(specs: list[dict], bw: dict, out: dict, log) -> None:
    for spec in specs:
        what = "the original Dia2 runtime, float32" if spec["kind"] == "dia2_original" else \
            f"fastdia {spec['dtype']}{' plain' if spec.get('plain') else ''}" \
            f"{'' if spec.get('quantize') is None else ' ' + spec['quantize']}"
        log(f"bench: running {what} (Dia2, batch {spec['batch']}) ...")
        r = run_child(spec)
        r["ceiling_steps_per_s"] = bw["read_GBps"] * 1e9 / r["weight_bytes_per_step"]
        r["ceiling_unique_steps_per_s"] = bw["read_GBps"] * 1e9 / r["weight_bytes_unique"]
        r["fraction_of_ceiling"] = r["steps_per_s"] / r["ceiling_steps_per_s"] if r["steps_per_s"] else None
        r["realtime_factor"] = r["aggregate_steps_per_s"] / FRAME_RATE if r["aggregate_steps_per_s"] else None
        out["results"].append(r)
        log(f"bench: {_label(r):30s} {r['steps_per_s']:7.2f} steps/s"
            + (f" ({r['aggregate_steps_per_s']:.2f} script-steps/s)" if r["batch"] > 1 else "")
            + f" (x{r['realtime_factor']:.3f} realtime; {100 * r['fraction_of_ceiling']:.0f}% of the "
            f"{r['ceiling_steps_per_s']:.2f} steps/s bandwidth ceiling if every weight comes from DRAM, "
            f"{r['ceiling_unique_steps_per_s']:.2f} if each is read once), first step {r['ttfs_ms']:.0f} ms, "
            + ("no streaming (no first audio)" if r["ttfa_s"] is None else f"first audio {r['ttfa_s']:.2f} s")
            + f", peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB{set_after_run_fraction(r)}")
        if "macs_per_step" in r:  # fastdia's rows: the roofline from its own kernels' measured rates
            r["roofline"] = roofline.bound(r["weight_bytes_per_step"], bw["read_GBps"] * 1e9, r["macs_per_step"],
                                           r["kernel_rates"])
            log(f"bench: {'':30s} {roofline.describe(r, bw['read_GBps'])}")


def _run_profiles(specs: list[dict], bw: dict, out: dict, log) -> None:
    out["profile"] = []
    for spec in specs:
        p = run_child(dict(spec, kind="dia2_profile", steps=min(spec["steps"], 8)))
        out["profile"].append(p)
        log(f"bench: profile {_label({**p, 'impl': 'fastdia-plain' if p['plain'] else 'fastdia'})}: "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in p["ms_per_step"].items())
            + f"; inside projections: decoder {p['matmul_ms_per_step']['decoder']:.1f} ms, "
            f"depformer {p['matmul_ms_per_step']['depformer']:.1f} ms")
        c = p["cache"]
        log(f"bench: depformer stage {c['stage']} ({c['stage_bytes'] / 1e6:.1f} MB of weights): cold cache "
            f"{c['cold_ms']:.2f} ms ({c['cold_GBps']:.1f} GB/s), back to back {c['warm_ms']:.2f} ms "
            f"({c['warm_GBps']:.1f} GB/s), its projections from cache {c['cache_GBps']:.1f} GB/s: "
            + (f"~{100 * c['cache_fraction']:.0f}% of the depformer's bytes from cache; per step "
               f"~{c['step_bytes_from_dram'] / 1e9:.2f} GB from DRAM, ~{c['step_bytes_from_cache'] / 1e9:.2f} GB "
               "from cache" if c["cache_fraction"] is not None else
               "cache and DRAM rates too close in this run to split the bytes"))
        log(f"bench: {roofline.describe_retention(c['retention'], bw['read_GBps'], c['warm_ms'])}")


def _is_reference(base: dict, dtype: str, quantize: str | None) -> bool:
    """Whether a variant is the float32 quality reference itself (dtype "auto" resolved)."""
    import torch

    from ..backends.device import resolve_device, resolve_dtype
    from ..dia2.checkpoint import source_parameters, source_quantization

    if quantize is not None or source_quantization(base["model"]):
        return False
    dev = resolve_device(base["device"])
    return resolve_dtype(dtype, dev, source_parameters(base["model"])) == torch.float32


def _bench_default_text() -> str:
    return DEFAULT_TEXT


def print_table_dia2(out: dict) -> None:
    orig = any(r.get("impl") == "dia2-original" for r in out["results"])
    print(f"{'variant':32s} {'batch':>5s} {'steps/s':>8s} {'x realtime':>10s} "
          + (f"{'vs orig':>8s} " if orig else "") + f"{'vs plain':>8s} {'ceil DRAM':>9s} "
          f"{'ceil uniq':>9s} {'% ceil':>6s} {'% after':>7s} {'1st step ms':>11s} {'TTFA s':>6s} {'GB/step':>7s} "
          f"{'uniq GB':>7s} "
          f"{'peak RSS GB':>11s}")
    for r in out["results"]:
        vs, vo = r.get("vs_plain"), r.get("vs_original")
        print(f"{_label(r):32s} {r['batch']:5d} {r['steps_per_s']:8.2f} {r['realtime_factor']:10.3f} "
              + (f"{'-' if vo is None else f'{vo:.2f}x':>8s} " if orig else "")
              + f"{'-' if vs is None else f'{vs:.2f}x':>8s} {r['ceiling_steps_per_s']:9.2f} "
              f"{r['ceiling_unique_steps_per_s']:9.2f} {100 * r['fraction_of_ceiling']:5.0f}% "
              f"{pct(r.get('fraction_of_ceiling_after_run')):>7s} {r['ttfs_ms']:11.0f} "
              f"{'-' if r['ttfa_s'] is None else format(r['ttfa_s'], '.2f'):>6s} "
              f"{r['weight_bytes_per_step'] / 1e9:7.2f} {r['weight_bytes_unique'] / 1e9:7.2f} "
              f"{r['peak_rss_bytes'] / 1e9:11.2f}")
    for r in out["results"]:
        line = roofline.summary(_label(r), r)
        if line:
            print(line)
    for q in out.get("quality", []):
        who = "original runtime " if q.get("impl") == "dia2-original" else ""
        print(f"quality {who}{q['dtype']} {q['quantize']}: top-1 agreement over {q['steps']} teacher-forced steps: action "
              f"{100 * q['action_top1']:.1f}%, codebook 0 {100 * q['cb0_top1']:.1f}%, all codebooks mean "
              f"{100 * q['mean_codebook_top1']:.1f}% (min {100 * q['min_codebook_top1']:.1f}%)")
    for p in out.get("profile", []):
        print(f"profile {p['dtype']}{' plain' if p['plain'] else ''} {p['quantize']}: "
              + ", ".join(f"{k} {v:.1f} ms" for k, v in p["ms_per_step"].items())
              + f"; in projections: decoder {p['matmul_ms_per_step']['decoder']:.1f} ms, depformer "
              f"{p['matmul_ms_per_step']['depformer']:.1f} ms")
