"""`fastdia bench` for Dia-1: the children that time a variant (fastdia's, transformers') and
teacher-force it for `--quality`, and the parent side that runs them and prints the table.

Decoding drives `Dia1Generator.prepare()` then `.step()` a fixed number of times: CFG on,
default sampling, EOS never ends the run (step() keeps decoding finished items). Then, in the
same process, time to first audio (TTFA) of the streaming path: `Dia.stream(text)` to its first
0.5 s chunk, through the codec (the released DAC architecture, random weights, for the full-size
preset).

`--quality` teacher-forces quantized/bfloat16 variants over the tokens a float32 run picked and
reports top-1 agreement of the CFG-guided logits with float32 and their relative error.
"""

from __future__ import annotations

import tempfile
import time

from . import roofline
from .common import gb, pct, peak_rss_bytes, read_bandwidth_now, run_child, set_after_run_fraction, ttfa


STEPS_PER_AUDIO_SECOND = 86.13


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
    first decoder layer's projections (fastdia.bench.roofline)."""
    step = _step_projections(model)
    layer = model.decoder.layers[0]
    first = [layer.self_attn.qkv, layer.self_attn.o, layer.cross_attn.q, layer.cross_attn.o, layer.mlp.gate_up,
             layer.mlp.down]
    macs = roofline.macs_by_format(step, rows)
    rates = roofline.kernel_rates(first, rows, step_modules=step)
    return {"macs_per_step": macs, "kernel_rates": rates, "roofline_rows": rows}


def child_fastdia(spec: dict) -> dict:
    import torch

    from ..backends.device import resolve_device, resolve_dtype
    from ..dia1.checkpoint import load_model, source_parameters
    from ..dia1.generation import Dia1Generator
    from ..dia1.options import GenerationConfig
    from ..text import tokenize

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
            gen.step(state)
            _sync(dev)
            times.append(time.perf_counter())
    per_step = [b - a for a, b in zip([t2] + times[:-1], times)]
    steady = per_step[1:] or per_step
    peak_rss = peak_rss_bytes()  # before the codec exists: the decoder's own memory
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
BENCH_CODECS = {"tiny-random": "tiny-random", "dia-1.6b-random": "dac-44khz-random"}


def time_to_first_audio(loaded, dev, dt, spec: dict) -> dict:
    """Seconds from `Dia.stream(...)` to its first chunk (default 0.5 s chunks), as a user calls it.

    Includes text encoding, prefill, the 15 + chunk + codec-context decoder steps the first chunk
    needs, and its DAC decode. The codec is loaded (and warmed on one frame) first: it is loaded
    once per process, not per request.
    """
    import warnings

    import numpy as np

    from ..dia1.api import Dia

    tts = Dia(loaded, dev, dt, codec=spec.get("codec") or BENCH_CODECS.get(str(spec["model"])))
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
    from ..dia1.checkpoint import source_quantization

    return spec.get("quantize") or source_quantization(spec["model"])


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def child_transformers(spec: dict) -> dict:
    """transformers' DiaForConditionalGeneration.generate, float32, same weights, EOS blocked."""
    import torch
    from transformers import DiaConfig as HFConfig
    from transformers import (
        DiaForConditionalGeneration,
        StoppingCriteria,
        StoppingCriteriaList,
    )

    from ..dia1.layouts import export_state_dict, load_dir_state
    from ..dia1.checkpoint import _choose_files, random_state
    from ..hub import resolve_dir
    from ..dia1.config import PRESETS, load_config
    from ..text import tokenize

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
    peak_rss = peak_rss_bytes()
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

    from ..nn.delay import UNKNOWN
    from ..dia1.options import GenerationConfig

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


def child_quality(spec: dict) -> dict:
    import torch

    from ..backends.device import resolve_device, resolve_dtype
    from ..dia1.checkpoint import load_model, source_parameters
    from ..dia1.generation import Dia1Generator
    from ..text import tokenize

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


def label(r: dict) -> str:
    if r["impl"] == "transformers":
        return "transformers float32"
    q = r["quantize"]
    ort = " onnxruntime" if r["impl"] == "onnxruntime" else ""
    return f"fastdia{ort} {r['dtype']}" + ("" if q == "none" else f" {q}")


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


def print_table(out: dict) -> None:
    print(f"{'variant':34s} {'steps/s':>8s} {'x realtime':>10s} {'vs HF':>6s} {'ceiling':>8s} {'% ceil':>6s} "
          f"{'% after':>7s} {'prefill ms':>10s} {'1st step ms':>11s} {'TTFA s':>6s} {'GB/step':>7s} "
          f"{'peak RSS GB':>11s}")
    for r in out["results"]:
        vs = r.get("vs_transformers")
        pre = r.get("prefill_ms")
        print(f"{label(r):34s} {r['steps_per_s']:8.2f} {r['realtime_factor']:10.3f} "
              f"{'-' if vs is None else f'{vs:.2f}x':>6s} {r['ceiling_steps_per_s']:8.2f} "
              f"{100 * r['fraction_of_ceiling']:5.0f}% {pct(r.get('fraction_of_ceiling_after_run')):>7s} "
              f"{'-' if pre is None else f'{pre:.0f}':>10s} "
              f"{r['ttfs_ms']:11.0f} {ttfa(r):>6s} {gb(r['weight_bytes_per_step']):>7s} {gb(r['peak_rss_bytes']):>11s}")
    for r in out["results"]:
        line = roofline.summary(label(r), r)
        if line:
            print(line)
    for q in out.get("quality", []):
        print(f"quality {q['dtype']} {q['quantize']}: top-1 agreement {100 * q['top1_agreement']:.1f}% of "
              f"{q['steps']} teacher-forced steps x channels, relative logit error {q['rel_logit_error']:.4f}")


def run_bench_dia1(args, base: dict, bw: dict, out: dict, variants, backends, compare, log=print) -> dict:
    """Speed (and quality) of each Dia-1 variant on each backend, appended to `out`
    (fastdia.bench.runner's report); `compare` may hold "transformers" (run first)."""
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
        log(f"bench: {label(r):28s} {r['steps_per_s']:7.2f} steps/s  (x{r['realtime_factor']:.3f} realtime, "
            f"{100 * r['fraction_of_ceiling']:.0f}% of the {ceiling:.1f} steps/s bandwidth ceiling), "
            f"first step {r['ttfs_ms']:.0f} ms, first audio {ttfa(r)} s, peak RSS {gb(r['peak_rss_bytes'])} GB"
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
