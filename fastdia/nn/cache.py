"""Static, preallocated self-attention KV cache, written by index.

Allocated once for `rows x max_len` and never resized, so its tensors keep their addresses
across steps (what CUDA graphs and torch.compile need). Rows are independent slots: each row
has its own positions, and a row can be reset for a new sequence without touching the others.
"""

from __future__ import annotations

import torch

from .layers import zeroed


class KVCache:
    """Per-layer K and V tensors of shape `(rows, Hkv, max_len, D)`, for a model config whose
    `decoder` section gives n_layer, n_kv_head and head_dim (Dia-1's DiaConfig)."""

    def __init__(self, cfg, rows: int, max_len: int, device: torch.device, dtype: torch.dtype) -> None:
        d = cfg.decoder
        kv = zeroed(2 * d.n_layer, (rows, d.n_kv_head, max_len, d.head_dim), dtype, device)
        self.k, self.v = kv[:d.n_layer], kv[d.n_layer:]


# Batched rows on a BLAS (which picks its kernel, and its rounding, by the row count) come in
# multiples of this many, so a request never meets a row count its numbers differ under.
ROW_GRANULE = 8


def round_rows(needed: int, capacity: int, granule: int) -> int:
    """Rows a step computes: `needed` rounded up to the granule; a store of at most one granule
    always computes all of its rows (one fixed count)."""
    if granule <= 2:
        return needed
    if capacity <= granule:
        return capacity
    return -(-needed // granule) * granule
