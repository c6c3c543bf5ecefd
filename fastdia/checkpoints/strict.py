"""Strict loading, shared by every checkpoint reader: one way to say what does not match."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence, TypeVar

import torch
from torch import nn

from ..errors import CheckpointError

M = TypeVar("M", bound=nn.Module)

SHOWN = 8  # names listed per kind of problem; the rest are counted


def shape_problems(expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]],
                   label: Callable[[str], str] = str) -> list[str]:
    """Every missing, unexpected or mis-shaped tensor, grouped by kind ("missing tensors: a; b",
    "unexpected tensors: ...", "wrong shapes: x has shape [..], expected [..]"); empty if they match.

    Args:
        expected / found: tensor name -> shape.
        label: how to name an expected tensor (e.g. with its name in another layout).
    """
    missing = [label(k) for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{label(k)} has shape {list(found[k])}, expected {list(expected[k])}"
             for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    problems = []
    for title, items in (("missing tensors", missing), ("unexpected tensors", unexpected), ("wrong shapes", wrong)):
        if items:
            more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
            problems.append(f"{title}: {'; '.join(items[:SHOWN])}{more}")
    return problems


def build_on_meta(make: Callable[[], M], state: Mapping[str, torch.Tensor], device: torch.device | str,
                  dtype: torch.dtype | None = None) -> M:
    """`make()` on the meta device, then adopt `state` (strict, assign=True: no second copy of
    the weights is ever allocated); eval mode, no grads.

    Args:
        make: builds the empty module (called under the meta device).
        state: exactly the module's tensors (check them with `shape_problems` first for a
            message that names each problem; a mismatch here is still a CheckpointError).
        device: where the tensors go.
        dtype: cast floating tensors to it; None keeps each tensor's dtype (e.g. fp32 norms).
    """
    with torch.device("meta"):
        net = make()
    cast = {k: v.to(device=device, dtype=dtype if dtype is not None and v.is_floating_point() else v.dtype)
            for k, v in state.items()}
    try:
        net.load_state_dict(cast, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the checkpoint does not match the model: {exc}") from None
    return net.eval().requires_grad_(False)
