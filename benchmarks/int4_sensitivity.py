"""Which projections take int4: top-1 agreement when one more part of the model is put in int4.

    python benchmarks/int4_sensitivity.py ref                      # float32 reference, once
    python benchmarks/int4_sensitivity.py NAME PATTERNS [GROUP]    # one variant, a JSON line

PATTERNS is a comma list of module-path substrings whose projections become int4 on top of what
`fastdia.quant.plan` already puts there (e.g. "cross_attn.kv"; "" for the plan as it is). The
measure is `fastdia bench --quality`'s: 64 teacher-forced steps of the full-size random model,
CFG-guided logits against float32. About a minute per variant on 2 cores.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from fastdia.bench import common as bench_common
from fastdia.bench import dia1 as bench
from fastdia.quant import modules as quant
from fastdia.dia1 import quantized as quant_store
from fastdia.dia1.generation import Dia1Generator
from fastdia.dia1.checkpoint import load_model
from fastdia.text import tokenize

MODEL = os.environ.get("MODEL", "dia-1.6b-random")
REF = os.environ.get("REF", f"/tmp/fastdia-int4-sensitivity-{MODEL}.pt")
CPU = torch.device("cpu")


def guided(model, ref_tokens=None):
    gen = Dia1Generator(model, CPU, torch.float32)
    with torch.inference_mode():
        return bench.teacher_forced_guided(model, gen, [tokenize(bench_common.DEFAULT_TEXT)], 64, 3.0, ref_tokens)


def main(argv: list[str]) -> None:
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    if argv[0] == "ref":
        logits, tokens = guided(load_model(MODEL, CPU, torch.float32).model)
        torch.save({"guided": logits, "tokens": tokens}, REF)
        return
    name, patterns = argv[0], [p for p in argv[1].split(",") if p]
    group = int(argv[2]) if len(argv) > 2 else None
    base_plan = quant.plan

    def plan(module, in_features, mode, group_size):
        fmt = base_plan(module, in_features, mode, group_size)
        if fmt in ("int8", "bf16", "int4-query") and any(p in module for p in patterns) \
                and in_features % group_size == 0 and in_features % 64 == 0:
            return "int4"
        return fmt

    quant.plan = quant_store.plan = plan
    ref = torch.load(REF)
    t0 = time.time()
    model = load_model(MODEL, CPU, torch.float32, quantize="int4", group_size=group).model
    logits, _ = guided(model, ref["tokens"])
    result = bench.compare_guided(logits, ref["guided"])
    print(json.dumps({"name": name, "patterns": patterns, "group": group or quant.DEFAULT_GROUP_SIZE,
                      "weights_MB": round(quant.quantized_bytes(model) / 1e6, 1),
                      **{k: round(v, 4) for k, v in result.items()}, "seconds": round(time.time() - t0)}))


if __name__ == "__main__":
    main(sys.argv[1:])
