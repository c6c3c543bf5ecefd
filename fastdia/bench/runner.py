"""`fastdia bench`: decode speed, memory and quantization quality, each variant in a fresh process.

A decode step reads every per-step decoder weight once (spec 7.2), so speed is bounded by memory
bandwidth: `ceiling steps/s = read bandwidth / weight bytes read per step`. The benchmark
measures the machine's read bandwidth, then runs each variant (dtype x quantization, optionally a
reference implementation with the same weights) in its own subprocess, so peak RSS is that
variant's alone and nothing is shared between runs. This module holds the flags, the table of
children (`CHILDREN`: what each child process runs) and the report; Dia-1's measurements are in
fastdia.bench.dia1, Dia2's in fastdia.bench.dia2 (children) and dia2_parent (the parent side).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from . import dia1, dia2, original, quality
from .common import DEFAULT_TEXT, RESULT_TAG, child_bandwidth, run_child, setup_threads, split_list, torch_version
from .dia1 import print_table, run_bench_dia1
from .dia2_parent import print_table_dia2, run_bench_dia2
from .onnx import child_onnx
from .original import INSTALL_HINT, original_available




# ============================================================================================
# Child side: one variant per process


# Every child's kind -> the function its process runs (fastdia.bench.dia1, dia2, quality, onnx, original).
CHILDREN = {"bandwidth": child_bandwidth, "fastdia": dia1.child_fastdia, "transformers": dia1.child_transformers,
            "quality": dia1.child_quality, "onnx": child_onnx, "dia2": dia2.child_speed,
            "dia2_profile": dia2.child_profile, "dia2_quality": quality.child_quality, **original.CHILDREN}


def child_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    setup_threads(spec["threads"])
    result = CHILDREN[spec["kind"]](spec)
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


# ============================================================================================
# Parent side


def run_bench(args: argparse.Namespace, log=print) -> dict:
    """Run the variants `args` asks for; returns everything measured (what --json prints)."""
    import platform

    from ..quant.modules import check_mode

    threads = args.threads or os.cpu_count() or 1
    base = {"model": args.model, "device": args.device, "threads": threads, "batch": args.batch,
            "steps": args.steps, "text": args.text, "group_size": args.group_size}
    log(f"bench: {args.model}, {threads} threads, batch {args.batch} (x2 CFG rows), {args.steps} steps, "
        f"text {len(args.text.encode())} bytes")
    compare = split_list(args.compare, "")
    bad = [c for c in compare if c not in ("transformers", "plain", "original")]
    if bad:
        raise RuntimeError(f"--compare takes transformers (Dia-1), plain and/or original (Dia2), got {', '.join(bad)}")
    from ..dia2.config import is_dia2

    dia2 = is_dia2(args.model)
    if dia2 and "transformers" in compare:
        raise RuntimeError("--compare transformers runs Dia-1 models; for Dia2 use plain and/or original")
    if not dia2 and ("plain" in compare or "original" in compare or getattr(args, "profile", False)):
        raise RuntimeError("--compare plain, --compare original and --profile are for Dia2 models")
    if "original" in compare:
        if not original_available():  # before the probe: say so at once
            raise RuntimeError(f"--compare original: {INSTALL_HINT}")
    bw = run_child({"kind": "bandwidth", "threads": threads, "mib": args.probe_mib})
    log(f"bench: memory read bandwidth {bw['read_GBps']:.1f} GB/s (copy {bw['copy_GBps']:.1f} GB/s)")
    out = {"machine": _machine(), "python": platform.python_version(), "torch": torch_version(),
           "config": {k: v for k, v in base.items() if k != "text"} | {"text_bytes": len(args.text.encode())},
           "bandwidth": bw, "results": []}
    log(f"bench: {out['machine'].get('cpu', 'unknown CPU')}; kernels {out['machine']['kernels']}, "
        f"AMX {out['machine']['amx']}; dispatch {out['machine']['dispatch']}")
    for name, v in out["machine"]["variants"].items():
        log(f"bench: {name} here: {v['runs_on']}")

    variants = [(d, check_mode(q) if q != "none" else None)
                for d in split_list(args.dtype, "auto") for q in split_list(args.quantize, "none")]
    backends = split_list(getattr(args, "backend", None), "torch")
    bad = [b for b in backends if b not in ("torch", "onnxruntime")]
    if bad:
        raise RuntimeError(f"--backend takes torch and/or onnxruntime, got {', '.join(bad)}")
    if dia2:
        if backends != ["torch"]:
            raise RuntimeError("--backend onnxruntime benchmarks Dia-1 models; Dia2 runs on torch")

        out["family"] = "dia2"
        return run_bench_dia2(args, base, bw, out, variants, log, compare)
    return run_bench_dia1(args, base, bw, out, variants, backends, compare, log)


def _machine() -> dict:
    import platform

    from ..backends.cpu.report import cpu_report

    # the CPU, its features and what each variant's matmuls run on here (fastdia's C kernels, on
    # AMX tiles where the CPU has them, or a torch fallback): the same report `fastdia info` prints
    report = cpu_report()
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu": report["cpu"], "isa": report["features"],
            "kernels": report["kernels"] + (f" ({report['kernels_off_because']})" if report["kernels_off_because"]
                                            else ""),
            "amx": report["amx"], "dispatch": report["kernel_dispatch"], "kernel_builds": report["kernel_builds"],
            "variants": report["variants"], "features_emulated": report["features_emulated"]}


def cmd_bench(args: argparse.Namespace) -> int:
    from ..errors import FastDiaError

    try:
        out = run_bench(args, log=(lambda m: print(m, file=sys.stderr, flush=True)) if args.json else
                        (lambda m: print(m, flush=True)))
    except RuntimeError as exc:
        raise FastDiaError(str(exc)) from None
    if args.json:
        print(json.dumps(out, indent=2))
    elif out.get("family") == "dia2":
        print()
        print_table_dia2(out)
    else:
        print()
        print_table(out)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `fastdia bench` flags (the command itself is registered by fastdia.cli.main)."""
    p.add_argument("--model", default="dia-1.6b-random",
                   help="preset, local directory or hub id (default: %(default)s, the full-size "
                        "architecture with random weights)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--dtype", default="auto",
                   help="comma-separated compute dtypes to run: auto, float32, bfloat16 (default: auto)")
    p.add_argument("--quantize", default="none",
                   help="comma-separated weight quantizations to run: none, int8, int4 (default: none)")
    p.add_argument("--group-size", type=int, default=None, help="int4 group size (default: 32)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--batch", type=int, default=1,
                   help="utterances decoded together (default: 1; Dia2: scripts in one Dia2SlotBatch)")
    p.add_argument("--steps", type=int, default=32, help="decode steps to time (default: %(default)s)")
    p.add_argument("--text", default=DEFAULT_TEXT, help="script to encode (default: a 150-byte dialogue)")
    p.add_argument("--compare", default=None,
                   help="comma-separated references to run in the same bench: 'transformers' (Dia-1: "
                        "transformers' DiaForConditionalGeneration, float32, same weights); for Dia2, 'plain' "
                        "(fastdia's float32 model in plain torch, without the CPU fast path) and 'original' "
                        "(the original nari-labs/dia2 runtime, float32, same weights, when it is installed)")
    p.add_argument("--backend", default="torch",
                   help="comma-separated backends to run each variant on: torch, onnxruntime (Dia-1; a model that "
                        "is not an ONNX export is exported once into the export cache; default: torch)")
    p.add_argument("--profile", action="store_true",
                   help="Dia2: also time where a step goes (decoder, depformer, sampling, projections)")
    p.add_argument("--quality", action="store_true",
                   help="also measure guided-logit agreement of each variant with float32 (64 steps)")
    p.add_argument("--probe-mib", type=int, default=1024,
                   help="size of the memory-bandwidth probe in MiB (default: %(default)s; keep it >> LLC)")
    p.add_argument("--json", action="store_true", help="print the results as JSON (progress goes to stderr)")


def main(argv: list[str] | None = None) -> int:
    """`python -m fastdia.bench.runner --child SPEC`: one variant, in the fresh process `run_child` starts."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--child":
        return child_main(argv[1])
    print("usage: fastdia bench [options] (this module's own entry point only runs benchmark children)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
