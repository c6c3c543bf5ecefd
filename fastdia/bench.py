"""`fastdia bench`: decode speed, memory and quantization quality, each variant in a fresh process.

A decode step reads every per-step decoder weight once (spec 7.2), so speed is bounded by memory
bandwidth: `ceiling steps/s = read bandwidth / weight bytes read per step`. The benchmark
measures the machine's read bandwidth, then runs each variant (dtype x quantization, optionally
transformers' DiaForConditionalGeneration with the same weights) in its own subprocess, so
peak RSS is that variant's alone and nothing is shared between runs.

Decoding drives `Dia1Generator.prepare()` then `.step()` a fixed number of times: CFG on,
default sampling, EOS never ends the run (step() keeps decoding finished items). Then, in the
same process, time to first audio (TTFA) of the streaming path: `Dia.stream(text)` to its first
0.5 s chunk, through the codec (the released DAC architecture, random weights, for the full-size
preset).

`--quality` teacher-forces quantized/bfloat16 variants over the tokens a float32 run picked and
reports top-1 agreement of the CFG-guided logits with float32 and their relative error.

Dia2 models (`--model dia2-2b-random`, a Dia2 folder) run the children of fastdia.bench_dia2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import roofline

STEPS_PER_AUDIO_SECOND = 86.13
DEFAULT_TEXT = (
    "[S1] Dia is an open weights text to dialogue model. [S2] You get full control over scripts "
    "and voices. [S1] Wow. Amazing. (laughs) [S2] Try it now on GitHub."
)
RESULT_TAG = "FASTDIA_BENCH_RESULT "


# ============================================================================================
# Child side: one variant per process


def _setup_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _step_projections(model) -> list:
    """The projections one decode step runs (spec 7.2): each layer's, but not the cross-attention
    K/V (computed once per utterance), and the head."""
    dec = model.decoder
    mods = [dec.head]
    for layer in dec.layers:
        mods += [layer.self_attn.qkv, layer.self_attn.o, layer.cross_attn.q, layer.cross_attn.o,
                 layer.mlp.gate_up, layer.mlp.down]
    return mods


def step_weight_bytes(model) -> int:
    """Bytes of weights one decode step reads: its projections, the norms; embedding rows are
    negligible."""
    dec = model.decoder
    total = sum(roofline.nbytes(m) for m in _step_projections(model)) + dec.norm.weight.numel() * 4
    for layer in dec.layers:
        total += sum(n.weight.numel() * 4 for n in (layer.pre_sa_norm, layer.pre_ca_norm, layer.pre_mlp_norm))
    return total


def roofline_inputs(model, rows: int) -> dict:
    """MACs of one step per weight format, and each format's kernel rate in cache, measured on the
    first decoder layer's projections (fastdia.roofline)."""
    step = _step_projections(model)
    layer = model.decoder.layers[0]
    first = [layer.self_attn.qkv, layer.self_attn.o, layer.cross_attn.q, layer.cross_attn.o, layer.mlp.gate_up,
             layer.mlp.down]
    macs = roofline.macs_by_format(step, rows)
    rates = roofline.kernel_rates(first, rows, step_modules=step)
    return {"macs_per_step": macs, "kernel_rates": rates, "roofline_rows": rows}


def measure_bandwidth(mib: int = 1024, reps: int = 7) -> dict:
    """Best-of-`reps` read (sum) and copy bandwidth over a `mib` MiB float32 tensor, GB/s.

    The tensor must dwarf the last-level cache (1 GiB by default) to measure DRAM.
    """
    return _child_bandwidth({"mib": mib, "reps": reps})


def _best_seconds(fn, reps: int) -> float:
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _child_bandwidth(spec: dict) -> dict:
    import torch

    n = spec.get("mib", 1024) * (1 << 20) // 4
    x = torch.ones(n)
    y = torch.empty_like(x)
    x.sum()
    y.copy_(x)
    reps = spec.get("reps", 7)
    read = _best_seconds(x.sum, reps)
    copy = _best_seconds(lambda: y.copy_(x), reps)
    nbytes = n * 4
    return {"read_GBps": nbytes / read / 1e9, "copy_GBps": 2 * nbytes / copy / 1e9}


AFTER_RUN_PROBE_MIB = 256  # 8x this machine kind's 32 MB L3; freed before anything else runs


def read_bandwidth_now(mib: int = AFTER_RUN_PROBE_MIB, reps: int = 5) -> float:
    """Best-of-`reps` read bandwidth (GB/s) of a `mib` MiB sum, taken in a variant's own process
    right after its timed steps (and after its peak RSS is read; the tensor is freed on return).

    The bench's first probe runs minutes before the last variant, and on a shared machine the
    bandwidth drifts in between (this VM kind: 27-72 GB/s within an hour); this one is the
    bandwidth the run itself last saw, so each row also gets a ceiling fraction of its own moment.
    """
    import torch

    x = torch.ones(mib * (1 << 20) // 4)
    x.sum()
    return x.numel() * 4 / _best_seconds(x.sum, reps) / 1e9


def set_after_run_fraction(r: dict) -> str:
    """Sets r["fraction_of_ceiling_after_run"] from the variant's own after-run probe; returns the
    log suffix that reports it ("" when the child took none)."""
    bw = r.get("bandwidth_after_run_GBps")
    if not bw or not r.get("steps_per_s"):
        return ""
    r["fraction_of_ceiling_after_run"] = r["steps_per_s"] * r["weight_bytes_per_step"] / (bw * 1e9)
    return f"; probe right after the run {bw:.1f} GB/s: {100 * r['fraction_of_ceiling_after_run']:.0f}% of that ceiling"


def _child_fastdia(spec: dict) -> dict:
    import torch

    from .backends.device import resolve_device, resolve_dtype
    from .checkpoints.dia1_load import load_model, source_parameters
    from .generation.dia1 import Dia1Generator
    from .generation.options import GenerationConfig
    from .text import tokenize

    dev = resolve_device(spec["device"])
    dt = resolve_dtype(spec["dtype"], dev, source_parameters(spec["model"]), _effective_quantize(spec))
    steps, batch = spec["steps"], spec["batch"]
    t0 = time.perf_counter()
    loaded = load_model(spec["model"], dev, dt, quantize=spec["quantize"], group_size=spec.get("group_size"))
    load_s = time.perf_counter() - t0
    model = loaded.model
    gen = Dia1Generator(model, dev, dt)
    gcfg = GenerationConfig(max_tokens=max(steps + 1, 2 * loaded.config.max_delay + 2), seed=0)
    texts = [tokenize(spec["text"])] * batch
    times = []
    with torch.inference_mode():
        t1 = time.perf_counter()
        state = gen.prepare(texts, [None] * batch, gcfg)
        _sync(dev)
        t2 = time.perf_counter()
        for _ in range(steps):
            gen.step(state, gcfg)
            _sync(dev)
            times.append(time.perf_counter())
    per_step = [b - a for a, b in zip([t2] + times[:-1], times)]
    steady = per_step[1:] or per_step
    peak_rss = _peak_rss_bytes()  # before the codec exists: the decoder's own memory
    bw_after = read_bandwidth_now()
    del state
    roof = roofline_inputs(model, 2 * batch)
    ttfa = time_to_first_audio(loaded, dev, dt, spec)
    return {
        "impl": "fastdia",
        "dtype": str(dt).removeprefix("torch."),
        "quantize": _effective_quantize(spec) or "none",  # a converted checkpoint's own
        "load_s": load_s,
        "prefill_ms": (t2 - t1) * 1e3,
        "ttfs_ms": (times[0] - t1) * 1e3,
        "steps_per_s": len(steady) / sum(steady),
        "median_step_ms": sorted(steady)[len(steady) // 2] * 1e3,
        "weight_bytes_per_step": step_weight_bytes(model),
        "parameters_bytes": sum(t.numel() * t.element_size() for t in model.state_dict().values())
        + sum(m.nbytes() for m in model.modules() if hasattr(m, "packed")),
        "peak_rss_bytes": peak_rss,
        "bandwidth_after_run_GBps": bw_after,
        **ttfa,
        **roof,
    }


# The codec a benchmark streams through: presets have no released codec weights to pair with, so
# the full-size model gets the released DAC architecture with random weights (same cost).
_BENCH_CODECS = {"tiny-random": "tiny-random", "dia-1.6b-random": "dac-44khz-random"}


def time_to_first_audio(loaded, dev, dt, spec: dict) -> dict:
    """Seconds from `Dia.stream(...)` to its first chunk (default 0.5 s chunks), as a user calls it.

    Includes text encoding, prefill, the 15 + chunk + codec-context decoder steps the first chunk
    needs, and its DAC decode. The codec is loaded (and warmed on one frame) first: it is loaded
    once per process, not per request.
    """
    import warnings

    import numpy as np

    from .api import Dia

    tts = Dia(loaded, dev, dt, codec=spec.get("codec") or _BENCH_CODECS.get(str(spec["model"])))
    tts.decode(np.zeros((1, loaded.config.n_channels), np.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        chunks = tts.stream(spec["text"], seed=0, chunk_seconds=spec.get("chunk_seconds", 0.5))
        first = next(chunks)
        ttfa = time.perf_counter() - t0
        chunks.close()
    return {"ttfa_s": ttfa, "ttfa_chunk_s": len(first) / tts.sample_rate, "codec": str(tts.codec_source)}


def _effective_quantize(spec: dict) -> str | None:
    """The quantization asked for, or the one a converted checkpoint already carries."""
    from .checkpoints.dia1_load import source_quantization

    return spec.get("quantize") or source_quantization(spec["model"])


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _child_transformers(spec: dict) -> dict:
    """transformers' DiaForConditionalGeneration.generate, float32, same weights, EOS blocked."""
    import torch
    from transformers import DiaConfig as HFConfig
    from transformers import (
        DiaForConditionalGeneration,
        StoppingCriteria,
        StoppingCriteriaList,
    )

    from .checkpoints.dia1_layouts import export_state_dict, load_dir_state
    from .checkpoints.dia1_load import _choose_files, random_state
    from .checkpoints.hub import resolve_dir
    from .config import PRESETS, load_config
    from .text import tokenize

    steps, batch = spec["steps"], spec["batch"]
    t0 = time.perf_counter()
    if spec["model"] in PRESETS:
        cfg = PRESETS[spec["model"]]
        state = random_state(cfg)
    else:
        directory = resolve_dir(spec["model"], _choose_files, what="model")
        cfg = load_config(directory / "config.json")
        state, _ = load_dir_state(directory, cfg, torch.float32)
    hf_state = export_state_dict(state, cfg, "transformers")
    del state
    model = DiaForConditionalGeneration.from_pretrained(
        None, config=HFConfig.from_dict(cfg.to_transformers_dict()), state_dict=hf_state, dtype=torch.float32
    ).eval()
    del hf_state
    load_s = time.perf_counter() - t0

    ids = tokenize(spec["text"])
    tokens = torch.tensor([ids] * batch, dtype=torch.long)
    mask = torch.ones_like(tokens)
    stamps: list[float] = []

    class Stamp(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    with torch.inference_mode():
        t1 = time.perf_counter()
        model.generate(
            input_ids=tokens, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps,
            do_sample=True, temperature=1.2, top_p=0.95, top_k=45, guidance_scale=3.0,
            stopping_criteria=StoppingCriteriaList([Stamp()]),
        )
    per_step = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
    peak_rss = _peak_rss_bytes()
    return {
        "impl": "transformers",
        "dtype": "float32",
        "quantize": "none",
        "load_s": load_s,
        "prefill_ms": None,
        "ttfs_ms": (stamps[0] - t1) * 1e3,
        "steps_per_s": len(per_step) / sum(per_step) if per_step else None,
        "median_step_ms": sorted(per_step)[len(per_step) // 2] * 1e3 if per_step else None,
        "decode_steps": len(stamps),
        "weight_bytes_per_step": _hf_step_bytes(cfg),
        "peak_rss_bytes": peak_rss,
        "bandwidth_after_run_GBps": read_bandwidth_now(),
    }


def _hf_step_bytes(cfg) -> int:
    d = cfg.decoder
    per_layer = (d.d_model * (d.n_head + 2 * d.n_kv_head) * d.head_dim + d.n_head * d.head_dim * d.d_model
                 + 2 * d.d_model * d.cross_n_head * d.cross_head_dim + 3 * d.d_model * d.d_ff + 3 * d.d_model)
    return 4 * (d.n_layer * per_layer + d.d_model * d.n_channels * d.vocab_size + d.d_model)


def teacher_forced_guided(model, gen, texts: list[list[int]], steps: int, cfg_scale: float,
                          ref_tokens=None):
    """CFG-guided logits `(B, steps, C, V)` over `steps` decode steps, and the token grid used.

    Without `ref_tokens` the next frame is the argmax of the guided logits over the audio codes
    (0..1023); with it, the given grid is fed (teacher forcing), so every variant sees the same
    inputs.
    """
    import torch

    from .generation.delay import UNKNOWN
    from .generation.options import GenerationConfig

    cfg = model.config
    b = len(texts)
    gcfg = GenerationConfig(max_tokens=max(steps + 1, 2 * cfg.max_delay + 2), temperature=0, cfg_scale=cfg_scale)
    state = gen.prepare(texts, [None] * b, gcfg)
    out = []
    for _ in range(steps):
        t = state.t
        current = state.tokens[:, t].repeat_interleave(2, dim=0).unsqueeze(1)
        positions = torch.full((2 * b, 1), t, dtype=torch.long, device=gen.device)
        logits = gen.decode(current, positions, state.cache, state.cross, kv_len=t + 1)
        logits = logits.view(b, 2, cfg.n_channels, -1).float()
        guided = logits[:, 1] + cfg_scale * (logits[:, 1] - logits[:, 0])  # (B, C, V)
        out.append(guided[..., : cfg.eos_id].cpu())
        if ref_tokens is None:
            nxt = guided[..., : cfg.eos_id].argmax(-1)
        else:
            nxt = ref_tokens[:, t + 1].to(gen.device)
        known = state.tokens[:, t + 1]
        state.tokens[:, t + 1] = torch.where(known == UNKNOWN, nxt, known)
        state.t = t + 1
    return torch.stack(out, dim=1), state.tokens.cpu()


def _child_quality(spec: dict) -> dict:
    import torch

    from .backends.device import resolve_device, resolve_dtype
    from .checkpoints.dia1_load import load_model, source_parameters
    from .generation.dia1 import Dia1Generator
    from .text import tokenize

    dev = resolve_device(spec["device"])
    dt = resolve_dtype(spec["dtype"], dev, source_parameters(spec["model"]), _effective_quantize(spec))
    loaded = load_model(spec["model"], dev, dt, quantize=spec["quantize"], group_size=spec.get("group_size"))
    gen = Dia1Generator(loaded.model, dev, dt)
    texts = [tokenize(spec["text"])]
    ref = torch.load(spec["ref_tokens"]) if spec.get("ref_tokens") else None
    with torch.inference_mode():
        guided, tokens = teacher_forced_guided(loaded.model, gen, texts, spec["steps"], 3.0, ref)
    torch.save({"guided": guided, "tokens": tokens}, spec["out"])
    return {"out": spec["out"], "dtype": str(dt).removeprefix("torch."), "quantize": spec["quantize"] or "none"}


def compare_guided(test, ref) -> dict:
    """Top-1 agreement and relative Frobenius error of guided logits `(B, T, C, V)`."""
    agree = (test.argmax(-1) == ref.argmax(-1)).float().mean().item()
    rel = ((test - ref).norm() / ref.norm()).item()
    return {"top1_agreement": agree, "rel_logit_error": rel}


_CHILDREN = {"bandwidth": _child_bandwidth, "fastdia": _child_fastdia, "transformers": _child_transformers,
             "quality": _child_quality}


def _child(kind: str):
    if kind == "onnx":  # the onnxruntime backend: fastdia.bench_onnx
        from .bench_onnx import child_onnx

        return child_onnx
    if kind.startswith("dia2"):  # Dia2 models: fastdia.bench_dia2
        from .bench_dia2 import CHILDREN

        return CHILDREN[kind]
    return _CHILDREN[kind]


def child_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    _setup_threads(spec["threads"])
    result = _child(spec["kind"])(spec)
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


# ============================================================================================
# Parent side


def run_child(spec: dict, timeout: float | None = None) -> dict:
    """Run one measurement in a fresh interpreter with `spec["threads"]` threads."""
    env = dict(os.environ)
    threads = str(spec["threads"])
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false",
               TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "fastdia.bench", "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    raise RuntimeError(f"benchmark child {spec['kind']} failed (exit {proc.returncode}):\n{tail}")


def _split(value: str | None, default: str) -> list[str]:
    return [v.strip() for v in (value or default).split(",") if v.strip()]


def _label(r: dict) -> str:
    if r["impl"] == "transformers":
        return "transformers float32"
    q = r["quantize"]
    ort = " onnxruntime" if r["impl"] == "onnxruntime" else ""
    return f"fastdia{ort} {r['dtype']}" + ("" if q == "none" else f" {q}")


def _ttfa(r: dict) -> str:
    return "-" if r.get("ttfa_s") is None else f"{r['ttfa_s']:.2f}"


def _pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.0f}%"


def _gb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f}"


def run_bench(args: argparse.Namespace, log=print) -> dict:
    """Run the variants `args` asks for; returns everything measured (what --json prints)."""
    import platform

    from .quant.modules import check_mode

    threads = args.threads or os.cpu_count() or 1
    base = {"model": args.model, "device": args.device, "threads": threads, "batch": args.batch,
            "steps": args.steps, "text": args.text, "group_size": args.group_size}
    log(f"bench: {args.model}, {threads} threads, batch {args.batch} (x2 CFG rows), {args.steps} steps, "
        f"text {len(args.text.encode())} bytes")
    compare = _split(args.compare, "")
    bad = [c for c in compare if c not in ("transformers", "plain", "original")]
    if bad:
        raise RuntimeError(f"--compare takes transformers (Dia-1), plain and/or original (Dia2), got {', '.join(bad)}")
    from .config_dia2 import is_dia2

    dia2 = is_dia2(args.model)
    if dia2 and "transformers" in compare:
        raise RuntimeError("--compare transformers runs Dia-1 models; for Dia2 use plain and/or original")
    if not dia2 and ("plain" in compare or "original" in compare or getattr(args, "profile", False)):
        raise RuntimeError("--compare plain, --compare original and --profile are for Dia2 models")
    if "original" in compare:
        from .bench_original import INSTALL_HINT, original_available

        if not original_available():  # before the probe: say so at once
            raise RuntimeError(f"--compare original: {INSTALL_HINT}")
    bw = run_child({"kind": "bandwidth", "threads": threads, "mib": args.probe_mib})
    log(f"bench: memory read bandwidth {bw['read_GBps']:.1f} GB/s (copy {bw['copy_GBps']:.1f} GB/s)")
    out = {"machine": _machine(), "python": platform.python_version(), "torch": _torch_version(),
           "config": {k: v for k, v in base.items() if k != "text"} | {"text_bytes": len(args.text.encode())},
           "bandwidth": bw, "results": []}
    log(f"bench: {out['machine'].get('cpu', 'unknown CPU')}; kernels {out['machine']['kernels']}, "
        f"AMX {out['machine']['amx']}")

    variants = [(d, check_mode(q) if q != "none" else None)
                for d in _split(args.dtype, "auto") for q in _split(args.quantize, "none")]
    backends = _split(getattr(args, "backend", None), "torch")
    bad = [b for b in backends if b not in ("torch", "onnxruntime")]
    if bad:
        raise RuntimeError(f"--backend takes torch and/or onnxruntime, got {', '.join(bad)}")
    if dia2:
        from .bench_dia2 import run_bench_dia2

        if backends != ["torch"]:
            raise RuntimeError("--backend onnxruntime benchmarks Dia-1 models; Dia2 runs on torch")

        out["family"] = "dia2"
        return run_bench_dia2(args, base, bw, out, variants, log, compare)
    if args.quality and "onnxruntime" in backends:
        raise RuntimeError("--quality measures the PyTorch variants; the ONNX exports' agreement is "
                           "`fastdia export onnx --quantize ...`'s report")
    specs = []
    if "transformers" in compare:
        specs.append(dict(base, kind="transformers"))
    for backend in backends:
        if backend == "torch":
            specs += [dict(base, kind="fastdia", dtype=d, quantize=q) for d, q in variants]
        else:  # onnxruntime computes in float32 whatever --dtype says; one row per quantization
            specs += [dict(base, kind="onnx", dtype="float32", quantize=q) for q in dict.fromkeys(q for _, q in variants)]
    for spec in specs:
        what = "transformers float32" if spec["kind"] == "transformers" else \
            f"fastdia{' onnxruntime' if spec['kind'] == 'onnx' else ''} {spec['dtype']}" \
            f"{'' if spec.get('quantize') is None else ' ' + spec['quantize']}"
        log(f"bench: running {what} ...")
        r = run_child(spec)
        ceiling = bw["read_GBps"] * 1e9 / r["weight_bytes_per_step"]
        r["ceiling_steps_per_s"] = ceiling
        r["fraction_of_ceiling"] = r["steps_per_s"] / ceiling if r["steps_per_s"] else None
        r["realtime_factor"] = r["steps_per_s"] / STEPS_PER_AUDIO_SECOND if r["steps_per_s"] else None
        out["results"].append(r)
        log(f"bench: {_label(r):28s} {r['steps_per_s']:7.2f} steps/s  (x{r['realtime_factor']:.3f} realtime, "
            f"{100 * r['fraction_of_ceiling']:.0f}% of the {ceiling:.1f} steps/s bandwidth ceiling), "
            f"first step {r['ttfs_ms']:.0f} ms, first audio {_ttfa(r)} s, peak RSS {_gb(r['peak_rss_bytes'])} GB"
            f"{set_after_run_fraction(r)}")
        if "macs_per_step" in r:
            r["roofline"] = roofline.bound(r["weight_bytes_per_step"], bw["read_GBps"] * 1e9, r["macs_per_step"],
                                           r["kernel_rates"])
            log(f"bench: {'':28s} {roofline.describe(r, bw['read_GBps'])}")
    ref = next((r for r in out["results"] if r["impl"] == "transformers"), None)
    if ref and ref["steps_per_s"]:
        for r in out["results"]:
            r["vs_transformers"] = r["steps_per_s"] / ref["steps_per_s"]

    if args.quality:
        out["quality"] = run_quality(base, [(d, q) for d, q in variants if (d, q) != ("float32", None)], log)
    return out


def run_quality(base: dict, variants: list[tuple[str, str | None]], log=print) -> list[dict]:
    """Teacher-forced guided-logit agreement of each variant with float32 (see module docstring)."""
    import torch

    steps = base.get("quality_steps") or 64
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        spec = dict(base, kind="quality", steps=steps, dtype="float32", quantize=None, out=f"{tmp}/ref.pt")
        log(f"bench: quality reference (float32, {steps} teacher-forced steps) ...")
        run_child(spec)
        ref = torch.load(f"{tmp}/ref.pt")
        torch.save(ref["tokens"], f"{tmp}/tokens.pt")
        for i, (d, q) in enumerate(variants):
            out = f"{tmp}/v{i}.pt"
            run_child(dict(spec, dtype=d, quantize=q, out=out, ref_tokens=f"{tmp}/tokens.pt"))
            got = torch.load(out)
            r = {"dtype": d, "quantize": q or "none", "steps": steps} | compare_guided(got["guided"], ref["guided"])
            results.append(r)
            log(f"bench: quality {d} {q or ''}: top-1 agreement {100 * r['top1_agreement']:.1f}%, "
                f"relative logit error {r['rel_logit_error']:.4f}")
    return results


def _torch_version() -> str:
    import torch

    return torch.__version__


def _machine() -> dict:
    import platform

    from .backends.cpu.report import cpu_report

    # the CPU, its features and what each variant's matmuls run on here (fastdia's C kernels, on
    # AMX tiles where the CPU has them, or a torch fallback): the same report `fastdia info` prints
    report = cpu_report()
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu": report["cpu"], "isa": report["features"],
            "kernels": report["kernels"] + (f" ({report['kernels_off_because']})" if report["kernels_off_because"]
                                            else ""),
            "amx": report["amx"], "variants": report["variants"], "features_emulated": report["features_emulated"]}


def print_table(out: dict) -> None:
    print(f"{'variant':34s} {'steps/s':>8s} {'x realtime':>10s} {'vs HF':>6s} {'ceiling':>8s} {'% ceil':>6s} "
          f"{'% after':>7s} {'prefill ms':>10s} {'1st step ms':>11s} {'TTFA s':>6s} {'GB/step':>7s} "
          f"{'peak RSS GB':>11s}")
    for r in out["results"]:
        vs = r.get("vs_transformers")
        pre = r.get("prefill_ms")
        print(f"{_label(r):34s} {r['steps_per_s']:8.2f} {r['realtime_factor']:10.3f} "
              f"{'-' if vs is None else f'{vs:.2f}x':>6s} {r['ceiling_steps_per_s']:8.2f} "
              f"{100 * r['fraction_of_ceiling']:5.0f}% {_pct(r.get('fraction_of_ceiling_after_run')):>7s} "
              f"{'-' if pre is None else f'{pre:.0f}':>10s} "
              f"{r['ttfs_ms']:11.0f} {_ttfa(r):>6s} {_gb(r['weight_bytes_per_step']):>7s} {_gb(r['peak_rss_bytes']):>11s}")
    for r in out["results"]:
        line = roofline.summary(_label(r), r)
        if line:
            print(line)
    for q in out.get("quality", []):
        print(f"quality {q['dtype']} {q['quantize']}: top-1 agreement {100 * q['top1_agreement']:.1f}% of "
              f"{q['steps']} teacher-forced steps x channels, relative logit error {q['rel_logit_error']:.4f}")


def cmd_bench(args: argparse.Namespace) -> int:
    from .errors import FastDiaError

    try:
        out = run_bench(args, log=(lambda m: print(m, file=sys.stderr, flush=True)) if args.json else
                        (lambda m: print(m, flush=True)))
    except RuntimeError as exc:
        raise FastDiaError(str(exc)) from None
    if args.json:
        print(json.dumps(out, indent=2))
    elif out.get("family") == "dia2":
        from .bench_dia2 import print_table_dia2

        print()
        print_table_dia2(out)
    else:
        print()
        print_table(out)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `fastdia bench` flags (the command itself is registered by fastdia.cli)."""
    p.add_argument("--model", default="dia-1.6b-random",
                   help="preset, local directory or hub id (default: %(default)s, the full-size "
                        "architecture with random weights)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--dtype", default="auto",
                   help="comma-separated compute dtypes to run: auto, float32, bfloat16 (default: auto)")
    p.add_argument("--quantize", default="none",
                   help="comma-separated weight quantizations to run: none, int8, int4 (default: none)")
    p.add_argument("--group-size", type=int, default=None, help="int4 group size (default: 32)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--batch", type=int, default=1,
                   help="utterances decoded together (default: 1; Dia2: scripts in one Dia2SlotBatch)")
    p.add_argument("--steps", type=int, default=32, help="decode steps to time (default: %(default)s)")
    p.add_argument("--text", default=DEFAULT_TEXT, help="script to encode (default: a 150-byte dialogue)")
    p.add_argument("--compare", default=None,
                   help="comma-separated references to run in the same bench: 'transformers' (Dia-1: "
                        "transformers' DiaForConditionalGeneration, float32, same weights); for Dia2, 'plain' "
                        "(fastdia's float32 model in plain torch, without the CPU fast path) and 'original' "
                        "(the original nari-labs/dia2 runtime, float32, same weights, when it is installed)")
    p.add_argument("--backend", default="torch",
                   help="comma-separated backends to run each variant on: torch, onnxruntime (Dia-1; a model that "
                        "is not an ONNX export is exported once into the export cache; default: torch)")
    p.add_argument("--profile", action="store_true",
                   help="Dia2: also time where a step goes (decoder, depformer, sampling, projections)")
    p.add_argument("--quality", action="store_true",
                   help="also measure guided-logit agreement of each variant with float32 (64 steps)")
    p.add_argument("--probe-mib", type=int, default=1024,
                   help="size of the memory-bandwidth probe in MiB (default: %(default)s; keep it >> LLC)")
    p.add_argument("--json", action="store_true", help="print the results as JSON (progress goes to stderr)")


def main(argv: list[str] | None = None) -> int:
    """`python -m fastdia.bench --child SPEC`: one variant, in the fresh process `run_child` starts."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--child":
        return child_main(argv[1])
    print("usage: fastdia bench [options] (this module's own entry point only runs benchmark children)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
