"""Strict loading, shared by every checkpoint reader: one way to say what does not match."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

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
