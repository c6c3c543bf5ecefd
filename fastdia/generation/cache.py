"""Static, preallocated self-attention KV cache, written by index.

Allocated once for `rows x max_len` and never resized, so its tensors keep their addresses
across steps (what CUDA graphs and torch.compile need). Rows are independent slots: each row
has its own positions, and a row can be reset for a new sequence without touching the others.
"""

from __future__ import annotations

import torch

from ..config import DiaConfig
from ..models.layers import zeroed


class KVCache:
    """Per-layer K and V tensors of shape `(rows, Hkv, max_len, D)`."""

    def __init__(self, cfg: DiaConfig, rows: int, max_len: int, device: torch.device, dtype: torch.dtype) -> None:
        d = cfg.decoder
        kv = zeroed(2 * d.n_layer, (rows, d.n_kv_head, max_len, d.head_dim), dtype, device)
        self.k, self.v = kv[:d.n_layer], kv[d.n_layer:]
