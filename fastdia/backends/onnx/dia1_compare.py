"""How closely an exported (quantized) model follows a reference: teacher-forced top-1 agreement.

Both models read the same delayed token grid (the reference's own greedy generation), so one
early difference does not derail the rest of the comparison; agreement is the fraction of
(row, position, channel) whose argmax matches, over both CFG rows.
"""

from __future__ import annotations

import torch

from ...nn.cache import KVCache
from ...dia1.generation import Dia1Generator
from ...dia1.options import GenerationConfig
from ...text import tokenize

SCRIPTS = (
    "[S1] Hello there, how are you today? [S2] Fine, thanks (laughs).",
    "[S2] I never thought it would rain this much. [S1] Neither did I!",
)


def teacher_forced_logits(model, text: list[int], grid: torch.Tensor) -> torch.Tensor:
    """`model` (DiaModel or OrtDiaModel) logits `(2, T, C, V)` for the delayed grid `(T, C)`, rows (uncond, cond)."""
    cfg = model.config
    t = grid.shape[0]
    tokens = torch.tensor(text)[None]
    enc_in = torch.cat((torch.zeros_like(tokens), tokens))
    mask = (tokens != 0).expand(2, -1)
    cross = model.decoder.cross_state(model.encoder(enc_in, mask), mask)
    length = getattr(model.decoder, "cache_len", None) or t
    cache = KVCache(cfg, 2, length, torch.device("cpu"), torch.float32)
    return model.decoder(grid[None].expand(2, -1, -1), torch.arange(t).expand(2, t), cache, cross)


@torch.inference_mode()
def top1_agreement(reference, candidate, scripts=SCRIPTS, max_tokens: int = 128) -> dict:
    """Agreement of `candidate`'s argmax with `reference`'s on the reference's greedy grids.

    Returns:
        {"top1": fraction in [0, 1], "positions": compared (row, position, channel) cells,
         "max_abs_logit_diff": largest |difference| of the logits}.
    """
    gen = GenerationConfig(max_tokens=max_tokens, temperature=0.0)
    generator = Dia1Generator(reference, torch.device("cpu"), torch.float32)
    same = total = 0
    worst = 0.0
    for script in scripts:
        text = tokenize(script)
        state = generator.prepare([text], [None], gen)
        for _ in generator.steps(state):
            pass
        grid = state.tokens[0, : state.t]
        ref = teacher_forced_logits(reference, text, grid)
        got = teacher_forced_logits(candidate, text, grid)
        same += int((ref.argmax(-1) == got.argmax(-1)).sum())
        total += ref.shape[0] * ref.shape[1] * ref.shape[2]
        worst = max(worst, float((ref - got).abs().max()))
    return {"top1": same / total, "positions": total, "max_abs_logit_diff": worst}
