"""Would decoding audio on a second thread, while the batch steps, pay on this CPU?

One process, `tiny-random`: a 16-member Dia-1 slot batch takes N steps on one thread, and M DAC
windows (0.5 s each) are decoded on another; first one after the other, then both at once. If the
two overlapped, "together" would approach the larger of the two; if they contend for the same
cores (or the OpenMP pools throttle each other, fastdia.backends.cpu.threads), it is the sum or
more. Each thread hands its OpenMP pool back when it ends.

    python benchmarks/codec_overlap.py --threads 2 --codec-threads 1 --out benchmarks/results/codec-overlap.json
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastdia.backends.cpu.threads import release_pool  # noqa: E402
from fastdia.bench.runner import _machine  # noqa: E402
from fastdia.codecs.dac.codec import decode_windows  # noqa: E402
from fastdia.dia1.options import GenerationConfig  # noqa: E402
from fastdia.dia1.slots import SlotBatch  # noqa: E402
from fastdia.loader import load  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the stepping thread")
    ap.add_argument("--codec-threads", type=int, default=0, help="torch threads set on the codec thread (0: as is)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--windows", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    tts = load("tiny-random")
    batch = SlotBatch(tts._generator, 16, tts.config.decoder.max_positions)
    script = list(b"[S1] Two threads, one batch stepping, one codec decoding.")
    for i in range(16):
        batch.join(script, None, GenerationConfig(seed=i, max_tokens=3000))
    codes = np.random.default_rng(0).integers(0, 1024, size=(4000, 9))
    windows = tts.codec.stream(43).plan_push(codes)[2: 2 + args.windows]

    times: dict[str, list[float]] = {"steps": [], "codec": []}

    def steps() -> None:
        t = time.perf_counter()
        with torch.inference_mode():
            for _ in range(args.steps):
                batch.step()
        times["steps"].append(time.perf_counter() - t)
        release_pool()

    def codec() -> None:
        if args.codec_threads:
            torch.set_num_threads(args.codec_threads)
        t = time.perf_counter()
        with torch.inference_mode():
            for w in windows:
                decode_windows(tts.codec, [w])
        times["codec"].append(time.perf_counter() - t)
        release_pool()

    def on_threads(*fns) -> float:
        threads = [threading.Thread(target=f) for f in fns]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return time.perf_counter() - t

    on_threads(steps), on_threads(codec)  # warm
    release_pool()
    rounds = []
    for _ in range(args.rounds):
        for v in times.values():
            v.clear()
        on_threads(steps)
        on_threads(codec)
        alone = dict(steps=times["steps"][0], codec=times["codec"][0])
        together = on_threads(steps, codec)
        r = {"steps_alone_s": alone["steps"], "codec_alone_s": alone["codec"],
             "sum_s": alone["steps"] + alone["codec"], "together_s": together,
             "steps_together_s": times["steps"][1], "codec_together_s": times["codec"][1]}
        rounds.append(r)
        print(f"steps alone {r['steps_alone_s']:.3f} s, codec alone {r['codec_alone_s']:.3f} s, "
              f"one after the other {r['sum_s']:.3f} s; together {together:.3f} s "
              f"(steps {r['steps_together_s']:.3f}, codec {r['codec_together_s']:.3f})", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"machine": _machine(), "threads": args.threads,
                                        "codec_threads": args.codec_threads, "steps": args.steps,
                                        "windows": args.windows, "rounds": rounds}, indent=1))


if __name__ == "__main__":
    main()
