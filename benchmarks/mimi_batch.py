"""Would batching Mimi across a server's Dia2 members pay on CPU? Decode n streams one by one and
as one batch (same codes, same chunking), and compare time and bits.

    python benchmarks/mimi_batch.py [--streams 4] [--frames 36] [--chunk 12] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

import fastdia
from fastdia.bench.runner import _machine


def _decode(mimi, codes: torch.Tensor, chunk: int) -> torch.Tensor:
    state: dict = {}
    return torch.cat([mimi.decode_tensor(codes[..., i: i + chunk], state) for i in range(0, codes.shape[-1], chunk)],
                     dim=-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dia2-tiny-random")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--frames", type=int, default=36)
    ap.add_argument("--chunk", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    tts = fastdia.load(args.model)
    mimi = tts.codec
    n_q = tts.model.config.data.n_codebooks
    codes = torch.randint(0, 2048, (args.streams, n_q, args.frames), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        alone = [_decode(mimi, codes[i: i + 1], args.chunk)[0] for i in range(args.streams)]
        together = _decode(mimi, codes, args.chunk)
        diffs = [(a - b).abs().max().item() for a, b in zip(alone, together)]
        same = [bool(torch.equal(a, b)) for a, b in zip(alone, together)]
        one_by_one, batched = [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            for i in range(args.streams):
                _decode(mimi, codes[i: i + 1], args.chunk)
            one_by_one.append(time.perf_counter() - t)
            t = time.perf_counter()
            _decode(mimi, codes, args.chunk)
            batched.append(time.perf_counter() - t)
    out = {"machine": _machine(), "threads": torch.get_num_threads(), "model": args.model, "streams": args.streams,
           "frames": args.frames, "chunk": args.chunk, "one_by_one_s": min(one_by_one), "batched_s": min(batched),
           "rows_bitwise_equal": same, "max_abs_difference": diffs}
    print(f"{args.streams} Mimi streams of {args.frames} frames in chunks of {args.chunk}: one by one "
          f"{min(one_by_one) * 1e3:.1f} ms, as one batch {min(batched) * 1e3:.1f} ms; rows equal to alone: "
          f"{sum(same)}/{len(same)} (max difference {max(diffs):.2g})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
