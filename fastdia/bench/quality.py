"""`fastdia bench --quality` for Dia2: teacher-forced agreement of each variant with float32.

A greedy float32 run records its decoder inputs and delayed codes (`record_greedy`); every variant
is then fed those same inputs (`teacher_forced_dia2`: the decoder gets each step's tokens, stage s
of the depformer the frame's code of codebook s), and its CFG-guided logits are compared with
float32's (`compare_dia2`): top-1 agreement of the action, codebook 0 and every depformer stage
(codebook s + 1), and the relative logit error of each part. With `--compare original` the
original Dia2 runtime is fed the same inputs too (fastdia.bench.original.child_original_quality):
two float32 implementations, which should differ only by summation order.
"""

from __future__ import annotations
from .common import run_child
from .dia2 import load_tts


def record_greedy(tts, text: str, steps: int):
    """A greedy (temperature 0) run's decoder inputs per step and its delayed codes.

    Returns (inputs: list of (tokens (2, 1, C+2), positions, slots)), buffer (C, total))."""
    import torch

    from ..dia2.options import Dia2GenerationConfig

    g = tts._generator
    inputs = []
    real = g.inputs

    def spy(group, n):
        out = real(group, n)
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


def teacher_forced_dia2(model, inputs, buffer, steps: int, cfg_scale: float | None = None) -> dict:
    """CFG-guided logits of `steps` teacher-forced steps: the decoder fed the recorded `inputs`,
    the depformer fed the recorded codes of each frame (stage s reads codebook s of column t+1).

    Returns {"action": (T, 2), "cb0": (T, 2048), "stages": (T, S, 2048)} float32 CPU tensors,
    guided = uncond + cfg_scale * (cond - uncond) (default: Dia2GenerationConfig's scale), and
    under "pairs" the same parts' raw (cond, uncond) rows, (T, 2, 2), (T, 2, 2048) and
    (T, S, 2, 2048), for the samplers' distributions.
    """
    import torch

    cfg = model.config
    size = cfg.data.codebook_size
    steps = min(steps, len(inputs) - 1)
    total = int(inputs[steps][2].max()) + 2
    cache = model.new_decoder_cache(2, total)
    dep_cache = model.new_depformer_cache(2)
    dep = model.depformer

    parts = Parts(cfg_scale)
    with torch.inference_mode():
        for i in range(steps):
            tokens, pos, slots = inputs[i]
            t = int(pos[0, 0])
            dec = model.transformer(tokens, pos, cache, slots=slots, kv_len=int(slots[0, 0]) + 1)
            parts.add("action", dec.action_logits[:, 0])
            parts.add("cb0", dec.cb0_logits[:, 0, :size])
            hidden = dec.hidden[:, 0]
            text = None
            if dep.text_embed is not None:  # the text the state machine chose at step t (next input)
                nxt = inputs[i + 1][0]
                text = (nxt[0, 0, 0].expand(2), nxt[0, 0, 1].expand(2))
            parts.add_stages([dep.stage(s, hidden, buffer[s, t + 1].expand(2), dep_cache, text if s == 0 else None)
                              for s in range(cfg.n_stages)])
    return parts.result()


class Parts:
    """Collects the raw (cond, uncond) logits rows of teacher-forced steps and returns them as
    `teacher_forced_dia2` does, with the guided logits derived from them at `scale` (default:
    Dia2GenerationConfig's). fastdia.bench.original feeds it the original runtime's logits."""

    def __init__(self, scale: float | None = None) -> None:
        from ..dia2.options import Dia2GenerationConfig

        self.scale = Dia2GenerationConfig().cfg_scale if scale is None else scale
        self.pairs: dict[str, list] = {"action": [], "cb0": [], "stages": []}

    def add(self, part: str, pair) -> None:
        self.pairs[part].append(pair.reshape(2, -1).float().cpu().clone())

    def add_stages(self, pairs: list) -> None:
        import torch

        self.pairs["stages"].append(torch.stack([p.reshape(2, -1).float().cpu() for p in pairs]))  # (S, 2, V)

    def result(self) -> dict:
        import torch

        pairs = {k: torch.stack(v) for k, v in self.pairs.items()}
        out = {k: torch.lerp(v[..., 1, :], v[..., 0, :], self.scale) for k, v in pairs.items()}
        out["pairs"] = pairs
        return out


def sampler_probs(pairs, scale: float, cfg_k: int, temperature: float, top_k: int):
    """The distribution Dia2's sampler draws from, for (..., 2, V) (cond, uncond) rows: the cond
    logits restricted to the cfg_k best guided entries, softmax at `temperature`, restricted to
    its top_k (ties at either cut kept), renormalised (fastdia.dia2.generation cfg_filter + sample)."""
    import torch

    cond, unc = pairs[..., 0, :].double(), pairs[..., 1, :].double()
    V = cond.shape[-1]
    if scale != 1.0:
        guided = torch.lerp(unc, cond, scale)
        cut = guided.topk(min(cfg_k, V), dim=-1).values[..., -1:]
        cond = cond.masked_fill(guided < cut, float("-inf"))
    p = torch.softmax(cond / temperature, dim=-1)
    if 0 < top_k < V:
        p = p.masked_fill(p < p.topk(top_k, dim=-1).values[..., -1:], 0.0)
    return p / p.sum(-1, keepdim=True)


def compare_dia2(test: dict, ref: dict) -> dict:
    """Top-1 agreement of guided logits with the reference: action, codebook 0, each stage
    (codebook s + 1), the mean over all codebooks, and the relative logit error of each part."""
    def agree(a, b):
        return (a.argmax(-1) == b.argmax(-1)).float().mean().item()

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    per_stage = [agree(test["stages"][:, s], ref["stages"][:, s]) for s in range(ref["stages"].shape[1])]
    codebooks = [agree(test["cb0"], ref["cb0"])] + per_stage
    out = {"action_top1": agree(test["action"], ref["action"]), "cb0_top1": codebooks[0],
           "codebook_top1": codebooks, "mean_codebook_top1": sum(codebooks) / len(codebooks),
           "min_codebook_top1": min(codebooks), "rel_error_cb0": rel(test["cb0"], ref["cb0"]),
           "rel_error_stages": rel(test["stages"], ref["stages"]), "rel_error_action": rel(test["action"], ref["action"])}
    if "pairs" in test and "pairs" in ref:
        out |= sampling_distance(test["pairs"], ref["pairs"])
    return out


def sampling_distance(test: dict, ref: dict, gen=None) -> dict:
    """How far each part's sampling distribution moved under `gen`'s sampler settings (default:
    Dia2GenerationConfig's, what a plain generation samples with): the total
    variation distance 0.5 * sum |p - q| between the sampler's distributions (`sampler_probs`), the
    mean over the steps, for the action and every codebook. 0: the same draws; 1: disjoint.
    Top-1 agreement counts a near-tie that flips as a miss; this counts it by how much
    probability actually moved, which is what a sampling decoder hears."""
    from ..dia2.options import Dia2GenerationConfig

    gen = gen or Dia2GenerationConfig()

    def tv(a, b, temp):
        p = sampler_probs(a, gen.cfg_scale, gen.cfg_filter_k, temp, gen.top_k)
        q = sampler_probs(b, gen.cfg_scale, gen.cfg_filter_k, temp, gen.top_k)
        return 0.5 * (p - q).abs().sum(-1)

    stages = tv(test["stages"], ref["stages"], gen.temperature).mean(0)  # (S,)
    codebooks = [tv(test["cb0"], ref["cb0"], gen.temperature).mean().item()] + stages.tolist()
    return {"action_tv": tv(test["action"], ref["action"], gen.text_temperature).mean().item(),
            "codebook_tv": codebooks, "mean_codebook_tv": sum(codebooks) / len(codebooks),
            "max_codebook_tv": max(codebooks)}


def child_quality(spec: dict) -> dict:
    """Teacher-forced guided logits of one variant, saved to `spec["out"]`; the reference run
    (no `ref`) also records the greedy float32 inputs to `spec["out"]`."""
    import torch

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
        f"stages {r['rel_error_stages']:.3g}"
        + (f"; sampling distributions moved (total variation) by {r['mean_codebook_tv']:.3f} on average, "
           f"{r['max_codebook_tv']:.3f} at most over codebooks, action {r['action_tv']:.3f}" if "action_tv" in r else ""))
