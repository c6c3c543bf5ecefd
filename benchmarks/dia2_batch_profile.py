"""Where a Dia2 batch pass goes (decoder, depformer stages, sampling) at batch 1 and 4.

    python benchmarks/dia2_batch_profile.py [MODEL] [QUANTIZE]   # default dia2-2b-random int8
(a `fastdia convert --quantize int8` folder loads in seconds; pass "none" as QUANTIZE for it).
"""
import time, torch, warnings, sys
warnings.simplefilter("ignore")
from fastdia.bench_dia2 import DEFAULT_TEXT_DIA2, load_tts
from fastdia.generation.dia2 import Dia2GenerationConfig
from fastdia.generation.dia2_slots import Dia2SlotBatch
tts, _ = load_tts({"model": sys.argv[1] if len(sys.argv) > 1 else "dia2-2b-random", "device": "cpu", "dtype": "auto", "quantize": None if len(sys.argv) > 2 and sys.argv[2] == "none" else (sys.argv[2] if len(sys.argv) > 2 else "int8")})
g = tts._generator
T = {"dec": 0.0, "stage": 0.0, "pick": 0.0, "head": 0.0}
def wrap(name, f):
    def w(*a, **k):
        t = time.perf_counter(); r = f(*a, **k); T[name] += time.perf_counter() - t; return r
    return w
g.transformer = wrap("dec", g.transformer); g.stage = wrap("stage", g.stage); g.pick = wrap("pick", g.pick); g.head = wrap("head", g.head)
entries = tts._entries(DEFAULT_TEXT_DIA2)
for batch in (1, 4):
    slots = Dia2SlotBatch(g, batch, 200)
    for i in range(batch):
        slots.join(Dia2GenerationConfig(seed=i, max_steps=60), None, entries=entries)
    with torch.inference_mode():
        for _ in range(18): slots.step()
        for k in T: T[k] = 0.0
        t0 = time.perf_counter()
        for _ in range(8): slots.step()
        tot = time.perf_counter() - t0
    print(batch, f"pass {tot/8*1e3:.1f} ms", {k: round(v / 8 * 1e3, 1) for k, v in T.items()})
