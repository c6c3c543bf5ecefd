"""Every documented variant, end to end, in one child process: `python -m tests.cpu_matrix OUT.json`.

Both families (tiny random presets) x float32 / bfloat16 x none / int8 / int4, each: loaded,
a greedy script's codes, a seeded sampled script decoded to audio, the modules its projections
became, and the teacher-forced agreement of its guided logits with plain-torch float32 in the
same process. tests/test_cpu_kinds.py runs it once per CPU configuration (this machine with and
without fastdia's kernels, and the kinds it can emulate: tests/cpu_kinds.py) and compares them.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections import Counter

import numpy as np
import torch

FAMILIES = {"dia1": "tiny-random", "dia2": "dia2-tiny-random"}
DTYPES = ("float32", "bfloat16")
QUANTIZE = (None, "int8", "int4")
SCRIPT = "[S1] Hello there, how are you doing today. [S2] Fine thanks, and you? [S1] Great."
STEPS = 48


def _modules(model) -> dict:
    """How many projections of each kind, and which fallbacks they took."""
    from fastdia.backends.cpu.packed import PackedLinear
    from fastdia.quant.modules import Int4Linear, Int8Linear

    kinds = Counter()
    for m in model.modules():
        name = type(m).__name__
        if isinstance(m, (Int8Linear, Int4Linear)):
            name += "[fastdia]" if m.use_kernel else "[torch]"
        elif isinstance(m, PackedLinear):
            name += f"[{str(m.dtype).removeprefix('torch.')}]"
        elif name not in ("Linear", "GemvLinear", "Bf16Linear", "DenseLinear"):
            continue
        kinds[name] += 1
    return dict(kinds)


def _dia1(dtype: str, quantize: str | None, reference: dict | None) -> dict:
    from fastdia import Dia
    from fastdia.bench.common import DEFAULT_TEXT
    from fastdia.bench.dia1 import compare_guided, teacher_forced_guided
    from fastdia.dia1.checkpoint import load_model
    from fastdia.dia1.generation import Dia1Generator
    from fastdia.text import tokenize

    tts = Dia.from_pretrained("tiny-random", device="cpu", dtype=dtype, quantize=quantize)
    codes = tts.generate_codes(SCRIPT, temperature=0, max_tokens=STEPS + 20)
    audio = tts.generate(SCRIPT, seed=3, max_tokens=STEPS + 20)
    cpu = torch.device("cpu")
    if reference is None:  # the process's own plain-torch float32: the oracle for every variant
        plain = load_model("tiny-random", cpu, torch.float32, optimize=False).model
        with torch.inference_mode():
            guided, tokens = teacher_forced_guided(plain, Dia1Generator(plain, cpu, torch.float32),
                                                   [tokenize(DEFAULT_TEXT)], STEPS, 3.0)
        reference = {"guided": guided, "tokens": tokens}
    with torch.inference_mode():
        got, _ = teacher_forced_guided(tts.model, Dia1Generator(tts.model, cpu, tts.dtype), [tokenize(DEFAULT_TEXT)],
                                       STEPS, 3.0, reference["tokens"])
    return {"codes": codes, "audio": audio, "modules": _modules(tts.model),
            "agreement": compare_guided(got, reference["guided"]), "reference": reference}


def _dia2(dtype: str, quantize: str | None, reference: dict | None) -> dict:
    from fastdia import Dia2
    from fastdia.bench.quality import compare_dia2, record_greedy, teacher_forced_dia2
    from fastdia.dia2.checkpoint import load_dia2

    tts = Dia2.from_pretrained("dia2-tiny-random", device="cpu", dtype=dtype, quantize=quantize)
    codes = tts.generate_codes(SCRIPT, temperature=0, text_temperature=0, max_steps=STEPS)
    audio = tts.synthesize(SCRIPT, seed=3, max_steps=STEPS).audio
    if reference is None:
        loaded = load_dia2("dia2-tiny-random", torch.device("cpu"), torch.float32, optimize=False)
        plain = Dia2(loaded, tts.device, torch.float32, tts.tokenizer, tts.codec_source)
        inputs, buffer = record_greedy(plain, SCRIPT, STEPS)
        reference = {"inputs": inputs, "buffer": buffer,
                     "logits": teacher_forced_dia2(plain.model, inputs, buffer, STEPS)}
    got = teacher_forced_dia2(tts.model, reference["inputs"], reference["buffer"], STEPS)
    return {"codes": codes, "audio": audio, "modules": _modules(tts.model),
            "agreement": compare_dia2(got, reference["logits"]), "reference": reference}


def run() -> dict:
    from fastdia.backends.cpu.report import cpu_report

    torch.set_num_threads(1)
    out = {"report": cpu_report(), "variants": {}}
    for family, fn in (("dia1", _dia1), ("dia2", _dia2)):
        reference = None
        for dtype in DTYPES:
            for quantize in QUANTIZE:
                name = f"{family}/{dtype}/{quantize or 'none'}"
                try:
                    r = fn(dtype, quantize, reference)
                except Exception as exc:  # a crash is a result: the parent names every one
                    out["variants"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                    continue
                reference = r.pop("reference")
                audio = np.asarray(r.pop("audio"))
                codes = np.asarray(r.pop("codes"))
                out["variants"][name] = r | {
                    "codes": codes.tolist(), "audio_samples": int(audio.size),
                    "audio_finite": bool(np.isfinite(audio).all()), "audio_peak": float(np.abs(audio).max(initial=0)),
                }
    return out


def main(argv: list[str]) -> int:
    warnings.simplefilter("ignore")
    result = run()
    with open(argv[0], "w") as f:
        json.dump(result, f, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
