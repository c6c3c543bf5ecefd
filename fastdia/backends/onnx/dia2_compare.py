"""How closely a (quantized) Dia2 export follows a reference: teacher-forced top-1 agreement.

The reference generates greedily; at every decoder call and depformer stage the candidate runs on
the very same inputs (its own caches, its own decoder hidden for its depformer), so one early
difference does not derail the rest of the comparison. Agreement is the fraction of (row, head)
argmaxes that match: the action head, codebook 0, and every depformer stage, both CFG rows.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

SCRIPTS = (
    "[S1] Hello there, how are you today? [S2] Fine, thanks (laughs).",
    "[S2] I never thought it would rain this much. [S1] Neither did I!",
)


def _model(model):
    if isinstance(model, (str, os.PathLike)):
        from .dia2_runtime import OrtDia2Model

        return OrtDia2Model(Path(model))
    return model


def _steps(model):
    if hasattr(model, "step_functions"):
        return model.step_functions()
    return model.transformer, model.depformer.stage


class _Tee:
    """Step functions that return the reference's outputs and score the candidate's on the same inputs."""

    def __init__(self, reference, candidate) -> None:
        self.ref_decoder, self.ref_stage = _steps(reference)
        self.cand_decoder, self.cand_stage = _steps(candidate)
        self.candidate = candidate
        self.codebook = reference.config.data.codebook_size
        self.same = self.total = 0
        self.worst = 0.0
        self.cache = self.dep_cache = self.hidden = None

    def _score(self, ref: torch.Tensor, got: torch.Tensor) -> None:
        self.same += int((ref.argmax(-1) == got.argmax(-1)).sum())
        self.total += ref[..., 0].numel()
        self.worst = max(self.worst, float((ref - got).abs().max()))

    def transformer(self, tokens, positions, cache, slots=None, kv_len=None):
        out = self.ref_decoder(tokens, positions, cache, slots=slots, kv_len=kv_len)
        if self.cache is None or int(slots[0, 0]) == 0:  # a new run: fresh candidate caches
            self.cache = self.candidate.new_decoder_cache(tokens.shape[0], cache.k[0].shape[2])
            self.dep_cache = self.candidate.new_depformer_cache(tokens.shape[0])
        got = self.cand_decoder(tokens, positions, self.cache, slots=slots, kv_len=kv_len)
        self.hidden = got.hidden[:, 0]
        self._score(out.action_logits, got.action_logits)
        self._score(out.cb0_logits[..., : self.codebook], got.cb0_logits[..., : self.codebook])
        return out

    def stage(self, s, hidden, prev_token, cache, text=None):
        out = self.ref_stage(s, hidden, prev_token, cache, text)
        self._score(out, self.cand_stage(s, self.hidden, prev_token, self.dep_cache, text))
        return out


@torch.inference_mode()
def top1_agreement_dia2(reference, candidate, scripts=SCRIPTS, max_steps: int = 64, tokenizer=None) -> dict:
    """Agreement of `candidate`'s argmaxes with `reference`'s along the reference's greedy generations.

    Args:
        reference, candidate: export folders, `OrtDia2Model`s or `Dia2Model`s of one config.
        tokenizer: parses `scripts` (default: the reference export's, else the builtin one).

    Returns:
        {"top1": fraction in [0, 1], "positions": compared (row, head) cells,
         "max_abs_logit_diff": largest |difference| of the logits}.
    """
    from ...dia2.generation import Dia2Generator
    from ...dia2.options import Dia2GenerationConfig
    from ...dia2.text import builtin_tokenizer, parse_script
    from .dia2_runtime import ort_tokenizer

    reference, candidate = _model(reference), _model(candidate)
    if tokenizer is None:
        info = getattr(reference, "info", None)
        tokenizer = ort_tokenizer(reference.folder, info) if info else builtin_tokenizer()
    data = reference.config.data
    ids = tokenizer.text_ids(data.text_pad_token_id, data.text_new_word_token_id, data.text_zero_token_id)
    generator = Dia2Generator(reference, torch.device("cpu"), ids)
    tee = _Tee(reference, candidate)
    generator.transformer, generator.stage = tee.transformer, tee.stage
    gen = Dia2GenerationConfig(temperature=0, text_temperature=0, max_steps=max_steps)
    for script in scripts:
        generator.generate(parse_script(script, tokenizer, ids), gen)
    return {"top1": tee.same / max(tee.total, 1), "positions": tee.total, "max_abs_logit_diff": tee.worst}
