"""Counter-based random numbers: each draw a pure function of (seed, step, stream, index).

A generator object's draws depend on how many came before, so a request that shares a batch, or
reaches a step through another path (one-shot, stream, long-form chunk, server slot), could
consume its stream in another order. Here nothing is consumed: the uniform for a request's `step`,
its `stream` (which choice of the step: a codebook, the action, ...) and `index` (an id in the
vocabulary, a stage) is a hash of those numbers and its seed, computed for all rows at once
(`uniform`). A request's audio therefore depends on its seed and script only, never on its batch
companions, its slot or the batch size, by construction.

The hash is Chris Wellons' "lowbias32" integer finaliser, chained over the 64-bit seed's halves,
the step, the stream and the index: 32-bit arithmetic done in int64 tensors, with every product
kept below 2**63 (multiplying by a constant's 16-bit halves), so it is exact on every device.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
_M1, _M2 = 0x7FEB352D, 0x846CA68B


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x in [0, 2**32): each partial product stays below 2**48."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """The lowbias32 finaliser on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, _M1)
    x = x ^ (x >> 15)
    x = _mul32(x, _M2)
    return x ^ (x >> 16)


def keys(seeds: torch.Tensor, steps: torch.Tensor | int, stream: int) -> torch.Tensor:
    """One 32-bit key per row from its seed (int64, any value), its step and a stream number."""
    seeds = seeds.to(torch.int64)
    k = mix32(seeds & MASK32)
    k = mix32(k ^ ((seeds >> 32) & MASK32))
    steps = torch.as_tensor(steps, dtype=torch.int64, device=seeds.device)
    k = mix32(k ^ (steps & MASK32))
    return mix32(k ^ (stream & MASK32))


def uniform_at(seeds: torch.Tensor, steps: torch.Tensor | int, stream: int, index: torch.Tensor,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniforms in (0, 1) shaped like `index` `(rows, ...)`: element [r, ...] is a function of
    seeds[r], steps[r] (or one step for all), `stream` and index[r, ...] alone (an id in the
    vocabulary, say, so a draw over any subset of ids is the same wherever it is made)."""
    k = keys(seeds, steps, stream).view(-1, *([1] * (index.dim() - 1)))
    h = mix32(mix32(k ^ (index.to(torch.int64) & MASK32)) ^ 0x9E3779B9)
    return ((h.to(torch.float64) + 0.5) / 4294967296.0).to(dtype)


def uniform(seeds: torch.Tensor, steps: torch.Tensor | int, stream: int, shape: tuple[int, ...],
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniforms in (0, 1) of shape `(rows, *shape)`, element [r, i...] keyed by its flat index."""
    n = 1
    for d in shape:
        n *= d
    index = torch.arange(n, dtype=torch.int64, device=seeds.device).view(1, *shape).expand(seeds.shape[0], *shape)
    return uniform_at(seeds, steps, stream, index, dtype)


def exponential_at(seeds: torch.Tensor, steps: torch.Tensor | int, stream: int, index: torch.Tensor) -> torch.Tensor:
    """Exp(1) noise (float32) shaped like `index`, counter-based as `uniform_at`: argmax(p / noise)
    over any set of ids is then an exact draw from p restricted to them (the exponential race)."""
    return -torch.log(uniform_at(seeds, steps, stream, index, torch.float64)).to(torch.float32)


def _mix32_int(x: int) -> int:
    x ^= x >> 16
    x = (x * _M1) & MASK32
    x ^= x >> 15
    x = (x * _M2) & MASK32
    return x ^ (x >> 16)


def uniform_one(seed: int, step: int, stream: int, index: int = 0) -> float:
    """`uniform_at` for one row and one index, in Python integers (a few microseconds instead of
    a few dozen tensor ops): bit for bit the same float64 value."""
    seed &= (1 << 64) - 1  # int64 two's complement, as the tensor path holds it
    k = _mix32_int(seed & MASK32)
    k = _mix32_int(k ^ ((seed >> 32) & MASK32))
    k = _mix32_int(k ^ (step & MASK32))
    k = _mix32_int(k ^ (stream & MASK32))
    h = _mix32_int(_mix32_int(k ^ (index & MASK32)) ^ 0x9E3779B9)
    return (h + 0.5) / 4294967296.0
