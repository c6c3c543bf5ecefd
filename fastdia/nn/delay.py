"""The delay pattern (spec 4.1): channel c of frame t is fed to the decoder at step t + delay[c].

`U` is the undelayed grid (frames x channels, what the codec consumes) and `D` the delayed grid
(what the decoder reads and writes): D[t, c] = U[t - delay[c], c], with BOS before the start.
"""

from __future__ import annotations

import torch

UNKNOWN = -1  # marker for "not generated yet"; never fed to the model


def apply_delay(undelayed: torch.Tensor, delay: torch.Tensor, bos: int) -> torch.Tensor:
    """`(B, T, C)` undelayed -> `(B, T, C)` delayed: D[t, c] = U[t - delay[c], c], BOS where t < delay[c]."""
    b, t, c = undelayed.shape
    src = torch.arange(t, device=undelayed.device)[:, None] - delay[None, :]  # (T, C)
    gathered = undelayed.gather(1, src.clamp(min=0).expand(b, t, c))
    return torch.where(src[None] < 0, torch.full_like(gathered, bos), gathered)


def revert_delay(delayed: torch.Tensor, delay: torch.Tensor) -> torch.Tensor:
    """`(B, T, C)` delayed -> `(B, T - max_delay, C)` undelayed: U[t, c] = D[t + delay[c], c].

    The last max_delay rows are dropped because the upper channels are incomplete there.
    """
    b, t, c = delayed.shape
    n = t - int(delay.max())
    if n <= 0:
        return delayed.new_zeros((b, 0, c))
    src = torch.arange(n, device=delayed.device)[:, None] + delay[None, :]  # (n, C)
    return delayed.gather(1, src.expand(b, n, c))


def prompt_grid(prompts: list[torch.Tensor | None], delay: torch.Tensor, bos: int) -> tuple[torch.Tensor, list[int]]:
    """The delayed start of every item: BOS, then its prompt frames, then "unknown".

    Sized `1 + max_P + max_delay` rows so that every channel gets delay[c] + 1 leading BOS
    (the transformers layout; the original is one row short, spec 4.2).

    Returns:
        (grid `(B, 1 + max_P + max_delay, C)` long with UNKNOWN where the model must generate,
         prefill_steps: per item 1 + P_i, the number of rows known before generation starts)
    """
    c = delay.shape[0]
    max_p = max((p.shape[0] for p in prompts if p is not None), default=0)
    rows = 1 + max_p + int(delay.max())
    undelayed = torch.full((len(prompts), rows, c), UNKNOWN, dtype=torch.long, device=delay.device)
    undelayed[:, 0] = bos
    steps = []
    for i, p in enumerate(prompts):
        n = 0 if p is None else p.shape[0]
        if n:
            undelayed[i, 1:1 + n] = p.to(device=delay.device, dtype=torch.long)
        steps.append(1 + n)
    return apply_delay(undelayed, delay, bos), steps
