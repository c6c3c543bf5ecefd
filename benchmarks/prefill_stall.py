"""How long a running stream stalls while a request with a long voice prompt joins its batch.

One Dia-1 member decodes in a `SlotBatch`; a second request with a `--prompt-seconds` voice prompt
(random codes: the cost does not depend on them) joins. Every step of the running member is timed
from the join on, until the newcomer decodes; the longest gap is the stall the running stream's
listener hears. Run twice in one process: the prefill in chunks of `PREFILL_CHUNK` positions, one
chunk per step (fastdia's way), and in one pass at the join (as before: the chunk size set above
the prompt's length).

    python benchmarks/prefill_stall.py --model dia-1.6b-random --quantize int8 --out benchmarks/results/prefill-stall.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

from fastdia.bench.runner import _machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="dia-1.6b-random")
    ap.add_argument("--quantize", default=None)
    ap.add_argument("--prompt-seconds", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import fastdia
    from fastdia.dia1 import generation
    from fastdia.dia1.options import GenerationConfig
    from fastdia.dia1.slots import SlotBatch
    from fastdia.text import tokenize

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opts = {"quantize": args.quantize} if args.quantize else {}
        tts = fastdia.load(args.model, **opts)
    g = tts._generator
    frames = round(args.prompt_seconds * 86.13)
    prompt = torch.randint(0, 1024, (frames, 9), generator=torch.Generator().manual_seed(0))
    limit = min(frames + 200, tts.config.decoder.max_positions)
    rows = {}
    chunk = generation.PREFILL_CHUNK
    for label, size in (("chunked", chunk), ("one pass", frames + 1)):
        generation.PREFILL_CHUNK = size
        with torch.inference_mode():
            batch = SlotBatch(g, 2, limit)
            runner = batch.join(tokenize("[S1] Already speaking, on and on."), None,
                                GenerationConfig(max_tokens=limit, seed=1))
            for _ in range(3):
                batch.step()
            t0 = time.perf_counter()
            slot = batch.join(tokenize("[S1] A cloned voice joins. [S2] Yes."), prompt,
                              GenerationConfig(max_tokens=limit, seed=2))
            gaps = []
            last = t0
            while not bool(batch.in_use[slot]):
                batch.step()
                now = time.perf_counter()
                gaps.append(now - last)
                last = now
            for _ in range(3):  # a few steps with both decoding
                batch.step()
                now = time.perf_counter()
                gaps.append(now - last)
                last = now
            del batch
        rows[label] = {"join_to_first_step_s": gaps[0], "max_gap_s": max(gaps), "steps_until_decoding": len(gaps) - 3,
                       "gaps_s": gaps}
        print(f"{label:8s}: the running stream's longest gap {max(gaps):.3f} s (join + first step "
              f"{gaps[0]:.3f} s); the newcomer decodes after {len(gaps) - 3} steps", flush=True)
    generation.PREFILL_CHUNK = chunk
    result = {"machine": _machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "model": args.model, "quantize": args.quantize, "prompt_frames": frames, "chunk": chunk, "rows": rows}
    print(f"CPU: {result['machine']['cpu']}; {result['threads']} threads; prompt {frames} frames")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
