"""Which parts of Dia2 lose top-1 agreement when quantized: a sensitivity sweep.

Each variant rounds the weights of one group of projections to a format (int8 per output
channel, int4 group-wise, bfloat16) and runs the float32 model on them, teacher-forced over the
same greedy float32 run as `fastdia bench --quality`. Only the weights change, so the sweep
isolates weight error by part of the model; the kernels' own int16 activation rounding is
measured by `fastdia bench --quality` on the real quantized model.

    python benchmarks/dia2_quant_sweep.py --model dia2-2b-random --steps 32 --out benchmarks/results/dia2-sweep.json
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from fastdia.bench.dia2 import load_tts
from fastdia.bench.quality import compare_dia2, record_greedy, teacher_forced_dia2
from fastdia.quant.formats import dequantize_int4, dequantize_int8, quantize_int4, quantize_int8
from fastdia.quant.modules import linear_names

GROUPS = {
    "dec.attn_qkv": r"^transformer\.layers\.\d+\.attn\.[qkv]_proj$",
    "dec.attn_o": r"^transformer\.layers\.\d+\.attn\.o_proj$",
    "dec.mlp": r"^transformer\.layers\.\d+\.mlp\.",
    "dec.embeds": r"^transformer\.(audio_embeds\.\d+|text_embed\.embedding)$",
    "dec.text_proj": r"^transformer\.text_embed\.(main|second)_proj$",
    "dep.in": r"^depformer\.depformer_in\.",
    "dep.attn_in": r"^depformer\.layers\.\d+\.self_attention\.in_proj\.",
    "dep.attn_out": r"^depformer\.layers\.\d+\.self_attention\.out_proj\.",
    "dep.mlp": r"^depformer\.layers\.\d+\.mlp\.",
    "dep.embeds": r"^depformer\.audio_embeds\.",
    "dep.heads": r"^depformer\.logits\.",
}
# the plan's int8 / int4 modes as one variant each (heads action/cb0 float as in fastdia)
ALL = r"^(?!transformer\.(action_head|cb0_head)$)"


def fake(w: torch.Tensor, fmt: str, group: int) -> torch.Tensor:
    if fmt == "int8":
        return dequantize_int8(*quantize_int8(w))
    if fmt == "int4":
        return dequantize_int4(*quantize_int4(w, group))
    if fmt == "bf16":
        return w.to(torch.bfloat16).float()
    raise ValueError(fmt)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dia2-2b-random")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--group", type=int, default=32)
    ap.add_argument("--variants", default="", help="comma list of group:fmt (default: every group int8 and int4)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reference", default=None, help="a file to keep the reference run in (reused when present)")
    args = ap.parse_args()

    tts, _ = load_tts({"model": args.model, "device": "cpu", "dtype": "float32", "plain": True})
    model = tts.model
    text = "[S1] Hello there, how are you doing today? [S2] I am fine, thank you very much."
    t0 = time.perf_counter()
    if args.reference and Path(args.reference).exists():
        inputs, buffer, ref = torch.load(args.reference)
    else:
        inputs, buffer = record_greedy(tts, text, args.steps)
        ref = teacher_forced_dia2(model, inputs, buffer, args.steps)
        if args.reference:
            torch.save((inputs, buffer, ref), args.reference)
    print(f"reference: {time.perf_counter() - t0:.0f} s", flush=True)
    names = linear_names(model)
    if args.variants:
        variants = [tuple(v.split(":")) for v in args.variants.split(",")]
    else:
        variants = [(g, f) for f in ("int8", "int4") for g in GROUPS] + [("all", "int8"), ("all", "bf16")]
    # earlier runs' rows stay in --out; a variant run again replaces its row
    out = Path(args.out)
    results = {(r["group"], r["fmt"]): r for r in json.loads(out.read_text())["results"]} if out.exists() else {}
    for group, fmt in variants:
        pattern = ALL if group == "all" else GROUPS[group]
        chosen = [n for n in names if re.search(pattern, n)]
        saved = {}
        with torch.no_grad():
            for n in chosen:
                w = model.get_submodule(n).weight
                if fmt == "int4" and (w.shape[1] % args.group or re.search(r"embeds|embedding", n)):
                    continue
                saved[n] = w.data.clone()
                w.data.copy_(fake(w.data, fmt, args.group))
        t1 = time.perf_counter()
        r = compare_dia2(teacher_forced_dia2(model, inputs, buffer, args.steps), ref)
        with torch.no_grad():
            for n, w in saved.items():
                model.get_submodule(n).weight.data.copy_(w)
        r.update(group=group, fmt=fmt, modules=len(saved))
        r.pop("codebook_top1")
        results[(group, fmt)] = r
        print(f"{group:14s} {fmt:5s} n={len(saved):3d} action {r['action_top1']:.3f} cb0 {r['cb0_top1']:.3f} "
              f"mean {r['mean_codebook_top1']:.3f} min {r['min_codebook_top1']:.3f} "
              f"rel cb0 {r['rel_error_cb0']:.4f} stages {r['rel_error_stages']:.4f} ({time.perf_counter() - t1:.0f} s)",
              flush=True)
        out.write_text(json.dumps({"model": args.model, "steps": args.steps, "int4_group": args.group,
                                   "results": list(results.values())}, indent=1))


if __name__ == "__main__":
    main()
