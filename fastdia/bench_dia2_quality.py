"""`fastdia bench --quality` for Dia2: teacher-forced agreement of each variant with float32.

A greedy float32 run records its decoder inputs and delayed codes (`record_greedy`); every variant
is then fed those same inputs (`teacher_forced_dia2`: the decoder gets each step's tokens, stage s
of the depformer the frame's code of codebook s), and its CFG-guided logits are compared with
float32's (`compare_dia2`): top-1 agreement of the action, codebook 0 and every depformer stage
(codebook s + 1), and the relative logit error of each part. With `--compare original` the
original Dia2 runtime is fed the same inputs too (fastdia.bench_original.child_original_quality):
two float32 implementations, which should differ only by summation order.
"""

from __future__ import annotations


def record_greedy(tts, text: str, steps: int):
    """A greedy (temperature 0) run's decoder inputs per step and its delayed codes.

    Returns (inputs: list of (tokens (2, 1, C+2), positions, slots)), buffer (C, total))."""
    import torch

    from .generation.dia2 import Dia2GenerationConfig

    g = tts._generator
    inputs = []
    real = g.inputs

    def spy(run, t):
        out = real(run, t)
        inputs.append(tuple(x.clone() for x in out))
        return out

    run = g.start(Dia2GenerationConfig(temperature=0, text_temperature=0, max_steps=steps + 2),
                  None, entries=tts._entries(text))
    g.inputs = spy  # this instance only: the generator's own loop, recorded
    try:
        with torch.inference_mode():
            for _ in g.steps(run):
                if len(inputs) > steps:
                    break
    finally:
        del g.inputs
    return inputs, run.buffer.clone()


def teacher_forced_dia2(model, inputs, buffer, steps: int, cfg_scale: float = 2.0) -> dict:
    """CFG-guided logits of `steps` teacher-forced steps: the decoder fed the recorded `inputs`,
    the depformer fed the recorded codes of each frame (stage s reads codebook s of column t+1).

    Returns {"action": (T, 2), "cb0": (T, 2048), "stages": (T, S, 2048)} float32 CPU tensors,
    guided = uncond + cfg_scale * (cond - uncond).
    """
    import torch

    cfg = model.config
    size = cfg.data.codebook_size
    steps = min(steps, len(inputs) - 1)
    total = int(inputs[steps][2].max()) + 2
    cache = model.new_decoder_cache(2, total)
    dep_cache = model.new_depformer_cache(2)
    dep = model.depformer

    def guided(x):
        return torch.lerp(x[1].float(), x[0].float(), cfg_scale)

    action, cb0, stages = [], [], []
    with torch.inference_mode():
        for i in range(steps):
            tokens, pos, slots = inputs[i]
            t = int(pos[0, 0])
            dec = model.transformer(tokens, pos, cache, slots=slots, kv_len=int(slots[0, 0]) + 1)
            action.append(guided(dec.action_logits[:, 0]).cpu())
            cb0.append(guided(dec.cb0_logits[:, 0])[:size].cpu())
            hidden = dec.hidden[:, 0]
            text = None
            if dep.text_embed is not None:  # the text the state machine chose at step t (next input)
                nxt = inputs[i + 1][0]
                text = (nxt[0, 0, 0].expand(2), nxt[0, 0, 1].expand(2))
            row = []
            for s in range(cfg.n_stages):
                prev = buffer[s, t + 1].expand(2)
                row.append(guided(dep.stage(s, hidden, prev, dep_cache, text if s == 0 else None)).cpu())
            stages.append(torch.stack(row))
    return {"action": torch.stack(action), "cb0": torch.stack(cb0), "stages": torch.stack(stages)}


def compare_dia2(test: dict, ref: dict) -> dict:
    """Top-1 agreement of guided logits with the reference: action, codebook 0, each stage
    (codebook s + 1), the mean over all codebooks, and the relative logit error of each part."""
    def agree(a, b):
        return (a.argmax(-1) == b.argmax(-1)).float().mean().item()

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    per_stage = [agree(test["stages"][:, s], ref["stages"][:, s]) for s in range(ref["stages"].shape[1])]
    codebooks = [agree(test["cb0"], ref["cb0"])] + per_stage
    return {"action_top1": agree(test["action"], ref["action"]), "cb0_top1": codebooks[0],
            "codebook_top1": codebooks, "mean_codebook_top1": sum(codebooks) / len(codebooks),
            "min_codebook_top1": min(codebooks), "rel_error_cb0": rel(test["cb0"], ref["cb0"]),
            "rel_error_stages": rel(test["stages"], ref["stages"]), "rel_error_action": rel(test["action"], ref["action"])}


def child_quality(spec: dict) -> dict:
    """Teacher-forced guided logits of one variant, saved to `spec["out"]`; the reference run
    (no `ref`) also records the greedy float32 inputs to `spec["out"]`."""
    import torch

    from .bench_dia2 import load_tts

    tts, quantize = load_tts(spec)
    if spec.get("ref"):
        rec = torch.load(spec["ref"])
        inputs, buffer = rec["inputs"], rec["buffer"]
    else:
        inputs, buffer = record_greedy(tts, spec["text"], spec["steps"])
    logits = teacher_forced_dia2(tts.model, inputs, buffer, spec["steps"])
    torch.save({"logits": logits, "inputs": inputs, "buffer": buffer}, spec["out"])
    return {"out": spec["out"], "dtype": str(tts.dtype).removeprefix("torch."), "quantize": quantize or "none",
            "steps": int(logits["cb0"].shape[0])}


def run_quality_dia2(base: dict, variants, log=print, original=None) -> list[dict]:
    """Each variant's agreement with fastdia's float32 (teacher-forced on its greedy inputs); with
    `original` (the folder the original runtime reads), first the original runtime's own float32
    agreement with fastdia's: two float32 implementations, differing only in summation order."""
    import tempfile

    import torch

    from .bench import run_child

    steps = base.get("quality_steps") or 64
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        spec = dict(base, kind="dia2_quality", steps=steps, dtype="float32", quantize=None, out=f"{tmp}/ref.pt")
        log(f"bench: quality reference (Dia2 float32, {steps} teacher-forced steps) ...")
        run_child(spec)
        ref = torch.load(f"{tmp}/ref.pt")
        if original is not None:
            log("bench: quality of the original Dia2 runtime (float32) against fastdia float32 ...")
            info = run_child(dict(spec, kind="dia2_original_quality", directory=str(original), out=f"{tmp}/orig.pt",
                                  ref=f"{tmp}/ref.pt"))
            got = torch.load(f"{tmp}/orig.pt")
            r = {"impl": "dia2-original", "dtype": "float32", "quantize": "none", "steps": info["steps"]} \
                | compare_dia2(got["logits"], ref["logits"])
            results.append(r)
            _log_quality(r, "original runtime float32", log)
        for i, (d, q) in enumerate(variants):
            out = f"{tmp}/v{i}.pt"
            info = run_child(dict(spec, dtype=d, quantize=q, out=out, ref=f"{tmp}/ref.pt"))
            got = torch.load(out)
            r = {"dtype": info["dtype"], "quantize": info["quantize"], "steps": int(ref["logits"]["cb0"].shape[0])} \
                | compare_dia2(got["logits"], ref["logits"])
            results.append(r)
            _log_quality(r, f"{r['dtype']} {q or ''}", log)
    return results


def _log_quality(r: dict, what: str, log) -> None:
    log(f"bench: quality {what}: top-1 agreement action {100 * r['action_top1']:.1f}%, "
        f"codebook 0 {100 * r['cb0_top1']:.1f}%, codebooks mean {100 * r['mean_codebook_top1']:.1f}% "
        f"(min {100 * r['min_codebook_top1']:.1f}%), relative logit error cb0 {r['rel_error_cb0']:.3g}, "
        f"stages {r['rel_error_stages']:.3g}")
