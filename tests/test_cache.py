"""Static KV caches: zeros that take memory only where they are written."""

from __future__ import annotations

import os

import pytest
import torch

from fastdia.dia1.config import PRESETS
from fastdia.nn.cache import KVCache
from fastdia.dia2.model import Dia2KVCache


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_static_caches_take_memory_only_where_written():
    """Cache tensors start as zeros and separate, and the memory of a slot is taken when it is
    written: a cache sized for the longest script costs little for a short one."""
    from fastdia.nn.layers import zeroed

    for dtype in (torch.float32, torch.bfloat16):
        small = zeroed(3, (2, 4, 5, 8), dtype, "cpu")
        assert all(t.shape == (2, 4, 5, 8) and t.dtype == dtype and t.is_contiguous() for t in small)
        small[1][0, 0, 0, 0] = 1
        assert float(small[0].abs().sum()) == 0 and float(small[2].abs().sum()) == 0
    before = _rss_bytes()
    cache = Dia2KVCache(n_layer=8, rows=2, n_kv_head=4, slots=8192, head_dim=128)  # 256 MiB
    for i in range(8):
        cache.k[i][:, :, 0] = 1.0  # the first slot of every head: one page per head
        cache.v[i][:, :, 0] = 1.0
    assert _rss_bytes() - before < 32 << 20
    assert float(cache.k[3][:, :, 1:].abs().sum()) == 0 and float(cache.v[7][1, 3, 0].sum()) == 128
    dia1 = KVCache(PRESETS["dia-1.6b-random"], 2, 3072, torch.device("cpu"), torch.float32)  # 0.45 GB
    assert _rss_bytes() - before < 64 << 20
    assert dia1.k[0].shape == (2, PRESETS["dia-1.6b-random"].decoder.n_kv_head, 3072,
                               PRESETS["dia-1.6b-random"].decoder.head_dim)
