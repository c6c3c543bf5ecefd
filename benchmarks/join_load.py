"""Join-heavy load on the server's engines: requests arrive at random times while others stream.

Both families are served at once, as `fastdia serve --model tiny-random --model dia2-tiny-random`
does (one engine each, `--slots` slots each, one process). Requests arrive one by one at
exponentially distributed intervals (a Poisson process at `--rate` per second), each for a random
family with a random length, and each is read by its own client thread as the server's streaming
responses are. Audio is decoded (DAC for Dia-1, Mimi for Dia2) in chunks of `--chunk-seconds`.

Reported per family: time to first audio (submit to first chunk, queueing and prefill included)
p50/p95, and the inter-chunk gap p50/p95 (between consecutive chunks of one request: what a
player must buffer against), with the audio seconds each chunk holds for comparison, and how late pieces are for a listener who
starts playing at the first one (pieces may grow: `--max-chunk-seconds`, as the server's do). The same
arrivals run twice in one process: with the engine's admission cap (`ADMIT_PER_STEP` joins per
step while others decode) and without it (every queued request joins before the next step), so
the cap's effect on running streams is measured on the same machine in the same minutes. One
request alone (each family) is the baseline.

    python benchmarks/join_load.py --out benchmarks/results/join-load.json
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
import warnings
from pathlib import Path

import torch

from fastdia.bench.runner import _machine
from fastdia.serve.engine import ADMIT_PER_STEP, Engine, SpeechRequest

SCRIPTS = ["[S1] A short one.", "[S1] Batching lets many voices speak at once. [S2] And every one hears the model.",
           "[S2] Requests keep arriving while others speak. [S1] Nobody should stutter because of it. (laughs)"]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def run_load(engines: dict, arrivals: list[tuple[float, str, str, dict]]) -> dict:
    """Submit each request at its arrival time; every request read by its own thread."""
    records = []
    threads = []
    t0 = time.perf_counter()

    def read(family, ticket, submitted, rec):
        for piece in ticket:
            if len(piece.audio):
                rec["chunks"].append((time.perf_counter() - submitted, len(piece.audio)))
        rec["done"] = time.perf_counter() - submitted

    for at, family, text, options in arrivals:
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        submitted = time.perf_counter()
        ticket = engines[family].submit(SpeechRequest(text, options=options, chunk_seconds=CHUNK,
                                                      max_chunk_seconds=MAX_CHUNK))
        rec = {"family": family, "chunks": []}
        records.append(rec)
        th = threading.Thread(target=read, args=(family, ticket, submitted, rec))
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    out = {"wall_s": wall}
    for family, engine in engines.items():
        recs = [r for r in records if r["family"] == family and r["chunks"]]
        ttfa = [r["chunks"][0][0] for r in recs]
        gaps = [b[0] - a[0] for r in recs for a, b in zip(r["chunks"][:-1], r["chunks"][1:])]
        samples = [n for r in recs for _, n in r["chunks"][:-1]]
        # How late each piece is for a listener who starts playing at the first piece: with pieces
        # of different lengths the gap between two says little, the audio already delivered does.
        late = []
        for r in recs:
            first, heard = r["chunks"][0][0], 0
            for arrived, n in r["chunks"]:
                late.append(max(0.0, arrived - (first + heard / engine.sample_rate)))
                heard += n
        out[family] = {"requests": len(recs), "ttfa_p50_s": _pct(ttfa, 0.5), "ttfa_p95_s": _pct(ttfa, 0.95),
                       "late_p95_s": _pct(late, 0.95), "late_max_s": max(late, default=None),
                       "gap_p50_s": _pct(gaps, 0.5), "gap_p95_s": _pct(gaps, 0.95), "gap_max_s": max(gaps, default=None),
                       "chunk_audio_s": (sum(samples) / len(samples) / engine.sample_rate) if samples else None}
    return out


def main() -> None:
    global CHUNK, MAX_CHUNK
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--rate", type=float, default=4.0, help="arrivals per second (both families together)")
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--chunk-seconds", type=float, default=0.5)
    ap.add_argument("--max-chunk-seconds", type=float, default=None,
                    help="later pieces grow up to this (as `fastdia serve` does; default: every piece --chunk-seconds)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    CHUNK, MAX_CHUNK = args.chunk_seconds, args.max_chunk_seconds
    if args.threads:
        torch.set_num_threads(args.threads)
    rnd = random.Random(args.seed)
    arrivals, at = [], 0.0
    for i in range(args.requests):
        at += rnd.expovariate(args.rate)
        family = rnd.choice(["dia1", "dia2"])
        length = rnd.choice([0.5, 1.0, 2.0])  # of the longest
        options = {"seed": i, **({"max_tokens": int(80 + 200 * length)} if family == "dia1"
                                 else {"max_steps": int(30 + 55 * length)})}
        arrivals.append((at, family, rnd.choice(SCRIPTS), options))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = {}
        for label, cap in (("capped", ADMIT_PER_STEP), ("uncapped", None)):
            engines = {"dia1": Engine.load("tiny-random", max_batch=args.slots, max_queue=args.requests),
                       "dia2": Engine.load("dia2-tiny-random", max_batch=args.slots, max_queue=args.requests)}
            for e in engines.values():
                e.admit_per_step = cap
                e.start()
            solo = {f: run_load({f: engines[f]}, [(0.0, f, SCRIPTS[1], {"seed": 99, **(
                {"max_tokens": 280} if f == "dia1" else {"max_steps": 140})})])[f] for f in engines}
            load = run_load(engines, arrivals)
            for e in engines.values():
                e.close()
            rows[label] = {"admit_per_step": cap, "solo": solo, "load": load}
            for f in ("dia1", "dia2"):
                s, x = solo[f], load[f]
                print(f"{label:9s} {f}: alone TTFA {s['ttfa_p50_s']:.3f} s, gap p95 {s['gap_p95_s'] or 0:.3f} s | "
                      f"load ({x['requests']} requests) TTFA p50 {x['ttfa_p50_s']:.3f} s p95 {x['ttfa_p95_s']:.3f} s, "
                      f"gap p50 {x['gap_p50_s'] or 0:.3f} s p95 {x['gap_p95_s'] or 0:.3f} s max "
                      f"{x['gap_max_s'] or 0:.3f} s (chunks of {x['chunk_audio_s'] or 0:.2f} s audio); a listener's "
                      f"wait for a late piece p95 {x['late_p95_s'] or 0:.3f} s max {x['late_max_s'] or 0:.3f} s", flush=True)
    result = {"machine": _machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "requests": args.requests, "rate_per_s": args.rate, "slots": args.slots,
              "chunk_seconds": args.chunk_seconds, "max_chunk_seconds": args.max_chunk_seconds, "rows": rows}
    print(f"CPU: {result['machine']['cpu']}; {result['threads']} threads")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


CHUNK = 0.5
MAX_CHUNK = None

if __name__ == "__main__":
    main()
