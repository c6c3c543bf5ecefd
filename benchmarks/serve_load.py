"""Load benchmark for the server's engine: concurrent streams in one batch vs one after another.

For n = 1, 4, 16, 64 concurrent requests (different seeds, same length), it measures

* batched: one engine with 64 slots (`--slots`); all n requests submitted at once and decoded together;
* one after another: the same requests through an engine with 1 slot (a one-request-at-a-time
  server: later requests wait in its queue),

and reports the aggregate decode rate (decoder steps of all requests per second of wall time, and
the audio frames they produced), p50/p95 time to first audio (from submit, queueing
included), and the factor batched/sequential. Audio is decoded as the server does (DAC for
Dia-1), so the codec's cost is in every figure; `--codes-only` leaves it out to isolate decoding.

The CPU and its measured read bandwidth are reported with the ceiling one request could reach
(bandwidth / weight bytes per step), so figures carry their machine. Example:

    python benchmarks/serve_load.py --model dia-1.6b-random --max-tokens 120 --out benchmarks/results/serve-load.json
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import warnings
from pathlib import Path

import torch

from fastdia.bench.common import measure_bandwidth
from fastdia.bench.dia1 import BENCH_CODECS, step_weight_bytes
from fastdia.bench.runner import _machine
from fastdia.serve.engine import Engine, SpeechRequest
from fastdia.serve.runners import Dia1Runner, Dia2Runner

SCRIPT = "[S1] Batching lets many voices speak at once. [S2] And every one of them hears the same model."


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[k]


def run_round(engine: Engine, n: int, options: dict, codes_only: bool) -> dict:
    """Submit n requests at once; wait for all; per-request TTFA and frames."""
    tickets = [engine.submit(SpeechRequest(SCRIPT, voice=None, options={**options, "seed": 100 + i}))
               for i in range(n)]
    ttfa: list[float] = [0.0] * n
    t0 = time.perf_counter()

    def drain(i, ticket):
        for piece in ticket:
            if not ttfa[i] and len(piece.audio):
                ttfa[i] = time.perf_counter() - t0

    threads = [threading.Thread(target=drain, args=(i, t)) for i, t in enumerate(tickets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    frames = sum(t.usage["output_tokens"] for t in tickets)
    steps = sum(t.job.steps for t in tickets)
    return {"n": n, "wall_s": wall, "frames": frames, "frames_per_s": frames / wall, "steps": steps,
            "steps_per_s": steps / wall,
            "ttfa_p50_s": _percentile(ttfa, 0.5), "ttfa_p95_s": _percentile(ttfa, 0.95)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="dia-1.6b-random")
    ap.add_argument("--quantize", choices=["int8", "int4"], default=None)
    ap.add_argument("--max-tokens", type=int, default=120, help="Dia-1 decode steps per request (Dia2: max_steps)")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--codes-only", action="store_true", help="skip the codec (decode throughput alone)")
    ap.add_argument("--codec", default=None,
                    help="codec (default: the full-size random DAC for dia-1.6b-random, as fastdia bench)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import fastdia

    bandwidth = measure_bandwidth()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opts = {"quantize": args.quantize} if args.quantize else {}
        codec = args.codec or BENCH_CODECS.get(args.model)
        if codec and "dia2" not in args.model:
            opts["codec"] = codec
        tts = fastdia.load(args.model, **opts)
    dia2 = type(tts).__name__ == "Dia2"
    runner_cls = Dia2Runner if dia2 else Dia1Runner
    options = {"max_steps": args.max_tokens} if dia2 else {"max_tokens": args.max_tokens}
    if dia2:  # every depformer stage's weights, as read from DRAM (fastdia.bench.dia2)
        from fastdia.bench.dia2 import step_weight_bytes_dia2

        weight_bytes = step_weight_bytes_dia2(tts._generator.model)["dram"]
    else:
        weight_bytes = step_weight_bytes(tts._generator.model)
    if args.codes_only:  # a codec that returns nothing: the engine's decode loop alone
        class _Silent:
            def push(self, codes):  # Dia2's MimiStream
                return torch.zeros(0).numpy()

            def finish(self):
                return torch.zeros(0).numpy()

            def plan_push(self, codes):  # Dia-1's DACStream, driven window by window
                return []

            def plan_finish(self):
                return []
        tts.codec.stream = lambda *a, **k: _Silent()

    batched = Engine(args.model, tts, runner_cls(tts, args.slots), max_batch=args.slots, max_queue=64, timeout=None)
    sequential = Engine(args.model, tts, runner_cls(tts, 1), max_batch=1, max_queue=64, timeout=None)
    batched.start()
    sequential.start()
    run_round(batched, 1, {**options, "max_tokens" if not dia2 else "max_steps": 40}, args.codes_only)  # warm-up

    rows = []
    for n in [int(x) for x in args.concurrency.split(",")]:
        b = run_round(batched, n, options, args.codes_only)
        s = run_round(sequential, n, options, args.codes_only)
        rows.append({"n": n, "batched": b, "sequential": s, "factor": b["steps_per_s"] / s["steps_per_s"]})
        print(f"n={n}: batched {b['steps_per_s']:.2f} steps/s, {b['frames_per_s']:.2f} frames/s (TTFA p50 "
              f"{b['ttfa_p50_s']:.2f} s, p95 {b['ttfa_p95_s']:.2f} s) | one after another {s['steps_per_s']:.2f} "
              f"steps/s, {s['frames_per_s']:.2f} frames/s (TTFA p50 {s['ttfa_p50_s']:.2f} s, p95 "
              f"{s['ttfa_p95_s']:.2f} s) | factor {rows[-1]['factor']:.2f}x", flush=True)
    batched.close()
    sequential.close()

    ceiling = None if weight_bytes is None else bandwidth["read_GBps"] * 1e9 / weight_bytes
    result = {"machine": _machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "model": args.model, "codec": None if args.codes_only else str(getattr(tts, "codec_source", "")), "quantize": args.quantize, "max_tokens": args.max_tokens,
              "codes_only": args.codes_only, "slots": args.slots, "bandwidth": bandwidth,
              "weight_bytes_per_step": weight_bytes, "single_stream_ceiling_steps_per_s": ceiling, "rows": rows}
    if ceiling:
        solo = rows[0]["sequential"]["steps_per_s"]
        print(f"CPU: {result['machine'].get('cpu')}; read bandwidth {bandwidth['read_GBps']:.1f} GB/s; one stream's "
              f"ceiling {ceiling:.2f} steps/s; one stream measured {solo:.2f} ({100 * solo / ceiling:.0f}% of it)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
