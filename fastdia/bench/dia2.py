"""`fastdia bench` for Dia2 models: decode speed, memory, time to first audio, quality, where a step goes.

fastdia.bench.runner runs the variants (one fresh process each, so peak RSS is the variant's own) and
prints the report; this module holds the Dia2 children it starts. A Dia2 step is one decoder pass
and 31 depformer stages (spec 8), each stage re-reading its `depformer_in`, attention projections,
the shared MLPs and its head: the bandwidth ceiling is given both for every weight read from
DRAM ("all from DRAM": decoder + the sum over stages) and for each distinct weight read once
("unique": what a cache that held the depformer's working set between stages would leave).

Decoding drives `Dia2Generator.start()` / `.steps()` (a one-shot generation, CFG on, default
sampling) for a fixed number of steps; `--batch N` drives a `Dia2SlotBatch` with N copies of the
script, seeds 0..N-1 (aggregate steps/s). Then, in the same process, time to first audio of the
streaming path: `Dia2.stream(text)` to its first chunk through Mimi (the released architecture
with random weights for the 2B preset), the codec loaded and warmed first.

`--compare original` adds the original Dia2 runtime on the same weights (fastdia.bench.original),
`--compare plain` fastdia's own float32 model in plain torch; each row's "vs" columns divide by them.

`--quality` (fastdia.bench.quality) teacher-forces each variant over the inputs a greedy
float32 run produced and reports the top-1 agreement of the CFG-guided logits with float32
for the action, codebook 0 and every depformer stage (codebook s + 1).
"""

from __future__ import annotations

import time
from collections import defaultdict

from . import roofline
from .common import peak_rss_bytes, read_bandwidth_now

FRAME_RATE = 12.5  # Dia2 steps per second of audio (80 ms frames): real time
DEFAULT_TEXT_DIA2 = (
    "[S1] Dia2 is a streaming dialogue model. [S2] It speaks as soon as the first words arrive. "
    "[S1] Wow. Amazing. (laughs) [S2] Try it now on GitHub, and tell us what you think of it."
)


# ============================================================================================
# Bytes a step reads


def _step_modules_dia2(model) -> tuple[list, list[list]]:
    """The projections one Dia2 step runs: the decoder's (embedding projections, layers, heads)
    and, per depformer stage, what that stage touches (`depformer_in[g]` only in the first stage
    of its group: the fused step computes it once per step and group, FusedDia2._depformer_in)."""
    dec, dep = model.transformer, model.depformer
    decoder = [dec.text_embed.main_proj, dec.text_embed.second_proj, dec.action_head, dec.cb0_head]
    for layer in dec.layers:
        a = layer.attn
        decoder += [a.q_proj, a.k_proj, a.v_proj, a.o_proj, layer.mlp.wi, layer.mlp.wo]
    seen: set[int] = set()
    stages = []
    for s, g in enumerate(dep.schedule):
        mods = ([] if id(dep.depformer_in[g]) in seen else [dep.depformer_in[g]]) + [dep.logits[s]]
        seen.add(id(dep.depformer_in[g]))
        for layer in dep.layers:
            sa = layer.self_attention
            mods += [sa.in_proj[g], sa.out_proj[g], layer.mlp.wi, layer.mlp.wo]
        stages.append(mods)
    return decoder, stages


def step_weight_bytes_dia2(model) -> dict:
    """Weight bytes of one Dia2 step (any batch: the weights are read once per pass).

    Returns {"decoder", "depformer_dram", "depformer_unique", "dram", "unique", "per_stage"}:
    the decoder's projections, norms and heads (embedding rows are negligible); the depformer as
    the sum over its stages of what each touches (`depformer_in[g]`, its layers' `in_proj[g]`,
    `out_proj[g]`, the shared MLPs and norms, `logits[s]`) and as the distinct weights among them.
    """
    dec, dep = model.transformer, model.depformer
    dec_mods, stages = _step_modules_dia2(model)
    decoder = sum(roofline.nbytes(m) for m in dec_mods) + dec.norm.weight.numel() * 4
    decoder += sum(n.weight.numel() * 4 for layer in dec.layers for n in (layer.pre_norm, layer.post_norm))
    seen: dict[int, int] = {}
    per_stage = []
    for mods in stages:
        per_stage.append(sum(roofline.nbytes(m) for m in mods) + dep.norm.weight.numel() * 4)
        seen.update((id(m), roofline.nbytes(m)) for m in mods)
    dram = sum(per_stage)
    unique = sum(seen.values()) + dep.norm.weight.numel() * 4
    return {"decoder": decoder, "depformer_dram": dram, "depformer_unique": unique, "dram": decoder + dram,
            "unique": decoder + unique, "per_stage_max": max(per_stage), "per_stage_last": per_stage[-1]}


def roofline_inputs_dia2(model, rows: int) -> dict:
    """MACs of one step per weight format and the in-cache rate of each format's kernel, measured
    on the decoder's first layer and the depformer's last stage (fastdia.bench.roofline)."""
    dec_mods, stages = _step_modules_dia2(model)
    everything = dec_mods + [m for st in stages for m in st]
    macs = roofline.macs_by_format(everything, rows)
    dec = model.transformer.layers[0]
    candidates = [dec.attn.q_proj, dec.attn.k_proj, dec.attn.v_proj, dec.attn.o_proj, *stages[-1]]
    rates = roofline.kernel_rates(candidates, rows, step_modules=everything)
    return {"macs_per_step": macs, "kernel_rates": rates, "roofline_rows": rows}


def stage_cache_timing(g, model, repeats: int = 15) -> dict:
    """Where the depformer's bytes come from, measured on its last stage (the 2B schedule's shared
    weight group, which stages 4..30 run back to back):

    * warm: the stage called back to back, as the loop does;
    * cold: each call after a 256 MB read that evicts every cache level (DRAM speed);
    * cache: the stage's projections of at most 8 MB (in int8: the MLP's and the attention's,
      not its 2 MB head alone), each called back to back so it stays in cache; the fastest
      sets the cache rate. (A 1 MB projection alone is bound by its call overhead: on a fast
      day it read no faster than DRAM, and the estimate below meant nothing.)

    With `bytes / cold` the DRAM rate and `bytes / cache` the cache rate, the warm time is
    explained by a fraction f of the stage's bytes coming from cache:
    `warm = bytes * (f / cache_rate + (1 - f) / dram_rate)`. An estimate from timings, not a
    counter reading; f near 0 means the working set does not survive from one stage to the next.
    When the cache rate is not clearly above the DRAM rate the two cannot be told apart, and the
    fraction is None.
    """
    import torch

    dep = model.depformer
    s = len(dep.schedule) - 1
    group = dep.schedule[s]
    cfg = model.config
    hidden = torch.randn(2, cfg.decoder.d_model, generator=torch.Generator().manual_seed(0))
    prev = torch.zeros(2, dtype=torch.long)
    cache = model.new_depformer_cache(2)
    flush = torch.ones(64 << 20)  # 256 MB: several times any last-level cache
    layer = dep.layers[0]
    small = [m for m in (layer.mlp.wi, layer.mlp.wo, layer.self_attention.in_proj[group],
                         layer.self_attention.out_proj[group]) if roofline.nbytes(m) <= 8 << 20]
    gen = torch.Generator().manual_seed(1)

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def median(xs):
        return sorted(xs)[len(xs) // 2]

    stage = lambda: g.stage(s, hidden, prev, cache)  # noqa: E731 (the same hidden: depformer_in is memoised, as in the loop)
    with torch.inference_mode():
        for _ in range(3):
            stage()
        warm = median([timed(stage) for _ in range(repeats)])
        cold = []
        for _ in range(repeats):
            flush.sum()
            cold.append(timed(stage))
        cold = median(cold)
        cache_rate = 0.0
        for m in small:
            x = torch.randn(2, m.in_features, generator=gen)
            for _ in range(3):
                m(x)
            t = median([timed(lambda: m(x)) for _ in range(3 * repeats)])  # noqa: B023 (called at once)
            cache_rate = max(cache_rate, roofline.nbytes(m) / t)
    nbytes = step_weight_bytes_dia2(model)["per_stage_last"]
    dram_rate = nbytes / cold
    f = None
    if cache_rate > 1.2 * dram_rate:
        f = min(max((nbytes / dram_rate - warm) / (nbytes / dram_rate - nbytes / cache_rate), 0.0), 1.0)
    return {"stage": s, "stage_bytes": nbytes, "cold_ms": cold * 1e3, "warm_ms": warm * 1e3,
            "cold_GBps": dram_rate / 1e9, "warm_GBps": nbytes / warm / 1e9, "cache_GBps": cache_rate / 1e9,
            "cache_fraction": f}


# ============================================================================================
# Loading a variant


def load_tts(spec: dict):
    """The Dia2 facade for `spec` (model, device, dtype, quantize, group_size, plain)."""
    from ..backends.device import resolve_device, resolve_dtype
    from ..dia2.api import Dia2
    from ..dia2.checkpoint import codec_source, load_dia2, load_tokenizer, source_parameters, source_quantization

    dev = resolve_device(spec["device"])
    quantize = spec.get("quantize") or source_quantization(spec["model"])
    dt = resolve_dtype(spec["dtype"], dev, source_parameters(spec["model"]), quantize)
    loaded = load_dia2(spec["model"], dev, dt, quantize=spec.get("quantize"), group_size=spec.get("group_size"),
                       optimize=not spec.get("plain"))
    tts = Dia2(loaded, dev, dt, load_tokenizer(loaded), codec_source(loaded, spec.get("codec")))
    if spec.get("plain"):  # plain torch throughout: the model's own forward, not the fused CPU step
        g = tts._generator
        g.transformer, g.stage = tts.model.transformer, tts.model.depformer.stage
    return tts, quantize


def _fused(tts) -> bool:
    return tts._generator.stage is not tts.model.depformer.stage


# ============================================================================================
# Children


def child_speed(spec: dict) -> dict:
    import torch

    from ..dia2.options import Dia2GenerationConfig
    from ..dia2.slots import Dia2SlotBatch

    t0 = time.perf_counter()
    tts, quantize = load_tts(spec)
    load_s = time.perf_counter() - t0
    steps, batch = spec["steps"], spec["batch"]
    g = tts._generator
    entries = tts._entries(spec["text"])
    # The first `dep_from` steps run the decoder only (their depformer output is never read), so
    # they are left out of steps/s, which counts full steps; they are in time to first audio.
    skip = max(g.dep_from, 0)
    stamps = []
    with torch.inference_mode():
        t1 = time.perf_counter()
        total = skip + steps + 1
        if batch == 1:
            run = g.start(Dia2GenerationConfig(seed=0, max_steps=total), None, entries=entries)
            for _ in g.steps(run):
                stamps.append((time.perf_counter(), 1))
                if len(stamps) >= skip + steps:
                    break
        else:
            slots = Dia2SlotBatch(g, batch, 2 * (total + 1) + 2 * g.max_delay + 4)
            for i in range(batch):
                slots.join(Dia2GenerationConfig(seed=i, max_steps=total), None, entries=entries)
            while len(stamps) < skip + steps and slots.active:
                moved = slots.step()
                stamps.append((time.perf_counter(), len(moved)))
                for s, m in enumerate(slots.members):
                    if m is not None and m.finished:
                        slots.leave(s)
    times = [t1] + [s for s, _ in stamps]
    per_step = [b - a for a, b in zip(times[:-1], times[1:])]
    steady = per_step[skip + 1:] or per_step[1:] or per_step
    rows = [n for _, n in stamps][skip + 1:] or [n for _, n in stamps]
    peak_rss = peak_rss_bytes()  # before the codec exists
    bw_after = read_bandwidth_now()
    wb = step_weight_bytes_dia2(tts.model)
    ttfa = time_to_first_audio(tts, spec)
    roof = roofline_inputs_dia2(tts.model, 2 * batch)
    return {
        "impl": "fastdia-plain" if spec.get("plain") else "fastdia",
        "family": "dia2",
        "dtype": str(tts.dtype).removeprefix("torch."),
        "quantize": quantize or "none",
        "batch": batch,
        "fused_step": _fused(tts),
        "load_s": load_s,
        "steps_timed": len(steady),
        "decoder_only_steps": skip,
        "ttfs_ms": per_step[0] * 1e3 if per_step else None,
        "steps_per_s": len(steady) / sum(steady) if steady else None,  # batch passes per second
        "aggregate_steps_per_s": sum(rows) / sum(steady) if steady else None,  # script-steps per second
        "median_step_ms": sorted(steady)[len(steady) // 2] * 1e3 if steady else None,
        "weight_bytes_per_step": wb["dram"],
        "weight_bytes_unique": wb["unique"],
        "weight_bytes": wb,
        "parameters_bytes": sum(t.numel() * t.element_size() for t in tts.model.state_dict().values()),
        "peak_rss_bytes": peak_rss,
        "bandwidth_after_run_GBps": bw_after,
        **ttfa,
        **roof,
    }


def time_to_first_audio(tts, spec: dict) -> dict:
    """Seconds from `Dia2.stream(text)` to its first chunk, the codec loaded and warmed on one frame
    first (once per process). Chunks of one 80 ms frame unless `chunk_seconds`: the first audio a
    streaming caller can play (Dia2's default 0.24 s chunks wait for two more steps)."""
    import warnings

    import numpy as np

    tts.decode(np.zeros((1, tts.config.data.n_codebooks), np.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        chunks = tts.stream(spec["text"], seed=0, chunk_seconds=spec.get("chunk_seconds") or 0.08)
        first = next(chunks)
        ttfa = time.perf_counter() - t0
        chunks.close()
    return {"ttfa_s": ttfa, "ttfa_chunk_s": len(first.audio) / tts.sample_rate, "codec": str(tts.codec_source)}


def child_profile(spec: dict) -> dict:
    """Where a step's time goes: decoder, action + codebook-0 sampling, depformer stages, their
    sampling, with the projections' (matmul) share of each model part timed by module hooks.

    Two passes over the same number of steps: one with plain timers around the loop's phases
    (the hooks off), one with forward hooks accumulating the time inside every projection
    (through the modules: prepared layer plans off for that pass).

    Both passes run the depformer stage by stage (`stage`, then a pick call) to time its parts, not
    in the one C call a real step makes (`FusedDia2.frame`), so their steps are slower than the
    speed run's (`benchmarks/dia2_ab.py --switch frame` measures the difference).
    """
    import torch

    from ..dia2.options import Dia2GenerationConfig

    tts, quantize = load_tts(spec)
    g, model = tts._generator, tts.model
    entries = tts._entries(spec["text"])
    steps = spec["steps"]

    def run_steps(timers):
        """The generator's own step (`step_group`, a group of one), its parts timed by wrapping
        them on this instance: the decoder call, the head (action and codebook-0 picks with the
        text state machine), the depformer stages, and the depformer's pick calls."""
        run = g.start(Dia2GenerationConfig(seed=0, max_steps=steps + 4), None, entries=entries)
        run.group.widths = [run.gen.cfg_filter_k, run.gen.top_k]
        clock = {"decoder": 0.0, "head_sampling": 0.0, "depformer": 0.0, "depformer_sampling": 0.0}
        in_head = [False]

        def timed(name, fn):
            def call(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    if not (name == "depformer_sampling" and in_head[0]):
                        clock[name] += time.perf_counter() - t0
            return call

        def head(*args, **kwargs):
            in_head[0] = True
            try:
                return timed("head_sampling", real_heads)(*args, **kwargs)
            finally:
                in_head[0] = False

        real_heads = g._heads
        g.transformer, g.stage = timed("decoder", real[0]), timed("depformer", real[1])
        g.pick_rows, g._heads = timed("depformer_sampling", real[2]), head
        g.frame = None  # stage by stage, to time the parts
        n = 0
        try:
            with torch.inference_mode():
                while not g.finished(run) and n <= steps:
                    before = dict(clock)
                    c0 = time.perf_counter()
                    g.step_group(run.group, 2, run.cache, run.dep_cache, [(0, run)], kv_len=run.slot + 1)
                    if n > 0 and timers is not None:  # the first step warms caches and allocators
                        for k in clock:
                            timers[k] += clock[k] - before[k]
                        timers["step"] += time.perf_counter() - c0
                    n += 1
        finally:
            for name in ("transformer", "stage", "pick_rows", "_heads", "frame"):
                g.__dict__.pop(name, None)
            g.transformer, g.stage, g.frame = real[0], real[1], real[3]
        return max(n - 1, 1)

    real = (g.transformer, g.stage, g.pick_rows, g.frame)
    phases: dict[str, float] = defaultdict(float)
    n = run_steps(phases)
    matmul: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    hooks = []
    start: dict[int, float] = {}
    hooked_names: list[str] = []
    for name, m in model.named_modules():
        # every projection once: a RowSplitLinear is timed whole, not its two row blocks
        if hasattr(m, "out_features") and not any(name.startswith(h + ".") for h in hooked_names):
            hooked_names.append(name)
            part = name.split(".")[0]

            def pre(mod, args):
                start[id(mod)] = time.perf_counter()

            def post(mod, args, out, _part=part):
                matmul[_part] += time.perf_counter() - start[id(mod)]
                calls[_part] += 1

            hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    hooked: dict[str, float] = defaultdict(float)
    # Prepared layer plans call the kernels without the modules, where no hook sees them: this
    # pass runs the unprepared fused path (the same kernel calls, made through the modules).
    fused = getattr(g.stage, "__self__", None)
    planned = getattr(fused, "use_plans", False)
    if planned:
        fused.use_plans = False
    n2 = run_steps(hooked)
    if planned:
        fused.use_plans = True
    for h in hooks:
        h.remove()
    wb = step_weight_bytes_dia2(model)
    per = {k: v / n * 1e3 for k, v in phases.items()}
    cache = stage_cache_timing(g, model)
    cache["retention"] = roofline.cache_retention()
    if cache["cache_fraction"] is not None:
        dep_dram = wb["depformer_dram"] * (1 - cache["cache_fraction"])
        cache["step_bytes_from_dram"] = wb["decoder"] + dep_dram
        cache["step_bytes_from_cache"] = wb["depformer_dram"] - dep_dram
    scale = n2  # hook timers ran over the first step too: normalise per step of that pass
    return {
        "dtype": str(tts.dtype).removeprefix("torch."), "quantize": quantize or "none",
        "plain": bool(spec.get("plain")), "fused_step": _fused(tts), "steps": n,
        "ms_per_step": per,
        "matmul_ms_per_step": {"decoder": matmul["transformer"] / (scale + 1) * 1e3,
                               "depformer": matmul["depformer"] / (scale + 1) * 1e3},
        "hooked_step_ms": hooked["step"] / n2 * 1e3,
        "linear_calls_per_step": {k: v / (scale + 1) for k, v in calls.items()},
        "weight_bytes": wb,
        "cache": cache,
    }


# ============================================================================================
# Parent side (called by fastdia.bench.runner.run_bench for a Dia2 model)


