"""fastdia's weight-only quantization formats as pure tensor transforms (what `fastdia convert`
stores and the modules in fastdia.quant.modules hold):

* int8 per output channel, symmetric (`quantize_int8`);
* int4 group-wise with integer step multipliers and int8 offsets (`quantize_int4`, format 3);
* row pairs tiled for the CPU kernels (`tile_pairs`).
"""

from __future__ import annotations

import torch


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`[N, K]` float -> (int8 `[N, K]`, float32 scales `[N]`), symmetric per output channel."""
    n, k = w.shape
    scale = torch.maximum(w.amax(dim=1), -w.amin(dim=1)).float().clamp(min=1e-12) / 127.0  # no |w| copy
    q = torch.empty((n, k), dtype=torch.int8)
    rows = max(1, _QUANT_BLOCK // max(k, 1))
    for r0 in range(0, n, rows):  # row blocks: no weight-sized float temporaries
        r1 = min(n, r0 + rows)
        q[r0:r1] = torch.round(w[r0:r1].float() / scale[r0:r1, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale[:, None].float()


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, ...]:
    """`[N, K]` float -> fastdia's int4 format (`fastdia.quant.Int4Linear`), G = K / group_size groups
    per row:

    * `qweight` uint8 `[N, K/2]`: codes 0..15 packed in blocks of 64 inputs (`pack_int4`);
    * `tscale` uint8 `[N, G]` and `rscale` float32 `[N]`: the group's step is `rscale[n] * tscale[n, g]`
      (an integer multiple of a per-row unit, which is what lets the kernel stay in integers);
    * `offsets` int8 `[N, G]` and `oscale` float32 `[N]`: the group's offset is
      `oscale[n] * offsets[n, g]`, so `W = step * q + offset`.

    Each group's step and offset are chosen to minimise its squared error: its range is clipped by
    each ratio of `_CLIP_RATIOS` in turn (outliers otherwise waste levels), step and offset are
    refit by least squares for the codes, and the best candidate is kept (~15% lower error than
    plain min/max on Gaussian weights). Offsets in 8 bits per row (format 3; float16 before) cost
    nothing measurable: an offset's rounding error is ~3% of the codes' own (benchmarks/README.md)
    and saves 0.25 bit per weight, 28 MB on the 1.6B model.
    """
    n, k = w.shape
    if k % group_size or k % 64 or group_size % 32:
        raise ValueError(f"int4 needs in_features ({k}) a multiple of 64 and of the group size ({group_size})")
    g = k // group_size
    packed = torch.empty((n, k // 2), dtype=torch.uint8)
    tscale = torch.empty((n, g), dtype=torch.uint8)
    rscale = torch.empty(n, dtype=torch.float32)
    offsets = torch.empty((n, g), dtype=torch.int8)
    oscale = torch.empty(n, dtype=torch.float32)
    rows = max(1, _QUANT_BLOCK // k)
    for r0 in range(0, n, rows):  # row blocks keep the temporaries small (and out of mmap)
        r1 = min(n, r0 + rows)
        # (group_size, rows * G): per-group values broadcast along the outer dimension, so every
        # elementwise op runs over long contiguous rows (32-element inner loops are ~10x slower).
        wt = w[r0:r1].float().reshape(-1, group_size).T.contiguous()
        lo, hi = wt.amin(dim=0), wt.amax(dim=0)
        unit = ((hi - lo).view(r1 - r0, g).amax(dim=1) / (15.0 * 255.0)).clamp(min=1e-30)  # (rows,): t = 1
        unit_g = unit.repeat_interleave(g)
        mw = wt.mean(dim=0)
        best_err = best_t = best_z = None
        for ratio in _CLIP_RATIOS:
            t = torch.round((hi - lo) * (ratio / 15.0) / unit_g).clamp_(1, 255)
            z = (hi + lo) / 2 - 7.5 * t * unit_g  # 16 levels centred on the group's range
            for _ in range(2):
                step = t * unit_g
                q = torch.round((wt - z) / step).clamp_(0, 15)
                # least-squares step and offset for these codes (the step kept a whole multiple
                # of the row's unit), then the codes again for them
                mq = q.mean(dim=0)
                dq = q - mq
                var = dq.square().mean(dim=0)
                fit = (dq * (wt - mw)).mean(dim=0) / var.clamp(min=1e-12)
                t = torch.where(var > 0, torch.round(fit / unit_g).clamp_(1, 255), t)
                z = mw - t * unit_g * mq
            step = t * unit_g
            q = torch.round((wt - z) / step).clamp_(0, 15)
            err = (step * q + z - wt).square_().sum(dim=0)
            if best_err is None:
                best_err, best_t, best_z = err, t, z
            else:
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_t = torch.where(better, t, best_t)
                best_z = torch.where(better, z, best_z)
        zrow = best_z.view(r1 - r0, g)
        osc = (zrow.abs().amax(dim=1) / 127.0).clamp(min=1e-30)
        zq = torch.round(zrow / osc[:, None]).clamp_(-127, 127)
        z = (zq * osc[:, None]).reshape(-1)
        step = best_t * unit_g
        q = torch.round((wt - z) / step).clamp_(0, 15)  # codes for the offset as stored
        packed[r0:r1] = pack_int4(q.T.to(torch.uint8).reshape(r1 - r0, k))
        tscale[r0:r1] = best_t.to(torch.uint8).view(r1 - r0, g)
        rscale[r0:r1] = unit
        offsets[r0:r1] = zq.to(torch.int8)
        oscale[r0:r1] = osc
    return packed, tscale, rscale, offsets, oscale


_CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)
# Elements per block: 2 MB float temporaries stay under the 4 MiB mmap threshold that
# fastdia.loading sets, where each larger one would cost a fresh mapping and its page faults.
_QUANT_BLOCK = 1 << 19


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes 0..15 `[N, K]` -> `[N, K/2]` in blocks of 64 inputs."""
    n, k = q.shape
    blocks = q.view(n, k // 64, 2, 32)
    return (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(n, k // 2).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """`[N, K/2]` (blocks of 64 inputs) -> uint8 codes `[N, K]`."""
    n, half = packed.shape
    blocks = packed.view(n, half // 32, 32)
    return torch.stack((blocks & 0xF, blocks >> 4), dim=2).view(n, 2 * half)


def int4_steps(tscale: torch.Tensor, rscale: torch.Tensor) -> torch.Tensor:
    """Per-group step `[N, G]` float32 of the int4 format."""
    return tscale.float() * rscale.float()[:, None]


def int4_offsets(offsets: torch.Tensor, oscale: torch.Tensor) -> torch.Tensor:
    """Per-group offset `[N, G]` float32 of the int4 format."""
    return offsets.float() * oscale.float()[:, None]


def dequantize_int4(packed: torch.Tensor, tscale: torch.Tensor, rscale: torch.Tensor, offsets: torch.Tensor,
                    oscale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    q = unpack_int4(packed).to(dtype)
    n, k = q.shape
    g = tscale.shape[1]
    w = (q.view(n, g, k // g) * int4_steps(tscale, rscale)[..., None].to(dtype)
         + int4_offsets(offsets, oscale)[..., None].to(dtype))
    return w.view(n, k)


def tile_pairs(q: torch.Tensor, chunk: int) -> torch.Tensor:
    """`[N, B]` -> `[ceil(N/2), 2B]`: rows 2p and 2p+1 interleaved in chunks of `chunk` elements.

    The kernels multiply two weight rows per pass; stored this way a pass reads one sequential
    stream (two rows side by side halve this CPU kind's DRAM bandwidth, see csrc/wonly.c). An
    odd N gets a zero row.
    """
    n, b = q.shape
    if n % 2:
        q = torch.cat((q, q.new_zeros(1, b)))
    return q.reshape(-1, 2, b // chunk, chunk).transpose(1, 2).reshape(-1, 2 * b).contiguous()


def untile_pairs(t: torch.Tensor, chunk: int) -> torch.Tensor:
    """Inverse of `tile_pairs` (padding row included)."""
    p, b2 = t.shape
    return t.view(p, b2 // (2 * chunk), 2, chunk).transpose(1, 2).reshape(2 * p, b2 // 2)


# Long int8 rows in chunk-major groups (csrc/wonly.c, "Long int8 rows"): from K = 4096 inputs on,
# a kernel pass over one row pair no longer finds its activations in L1, so the int8 kernel runs
# GROUP_PAIRS pairs a chunk of GROUP_CHUNK inputs at a time, and the pair-tiled weights of each
# group are stored chunk by chunk to keep one sequential stream. The rule is the C kernel's own;
# int4 weights keep plain pair tiles.
GROUP_PAIRS = 4
GROUP_CHUNK = 1024
_WHOLE_ROWS = 3072


def grouped(in_features: int) -> bool:
    """Whether an int8 weight with `in_features` inputs is held in chunk-major groups of pairs."""
    return in_features > _WHOLE_ROWS and in_features % GROUP_CHUNK == 0


def _regroup(t: torch.Tensor, in_features: int, inverse: bool) -> torch.Tensor:
    p, b2 = t.shape
    chunks = in_features // GROUP_CHUNK
    out = torch.empty_like(t)
    whole = p - p % GROUP_PAIRS
    # the whole groups at once, then the last one, which may hold fewer pairs (its bytes are its own)
    for g0, groups, size in ((0, whole // GROUP_PAIRS, GROUP_PAIRS), (whole, 1, p - whole)):
        if groups and size:
            shape = (groups, chunks, size, b2 // chunks) if inverse else (groups, size, chunks, b2 // chunks)
            out[g0:g0 + groups * size] = t[g0:g0 + groups * size].reshape(shape).transpose(1, 2).reshape(-1, b2)
    return out


def kernel_layout(q: torch.Tensor, chunk: int, in_features: int) -> torch.Tensor:
    """`[N, B]` codes -> the kernels' layout: `tile_pairs`, then chunk-major groups of pairs for
    long rows (`grouped`). `[ceil(N/2), 2B]`, as `tile_pairs`."""
    t = tile_pairs(q, chunk)
    return _regroup(t, in_features, inverse=False) if grouped(in_features) else t


def kernel_rows(t: torch.Tensor, chunk: int, in_features: int, r0: int = 0, r1: int | None = None) -> torch.Tensor:
    """Rows r0 .. r1 of the `[N, B]` codes held in the kernels' layout `t` (inverse of `kernel_layout`;
    by default every row, the padding row of an odd N included)."""
    p = t.shape[0]
    r1 = 2 * p if r1 is None else r1
    p0, p1 = r0 // 2, (r1 + 1) // 2
    if grouped(in_features):  # whole groups around the pairs asked for
        g0, g1 = p0 // GROUP_PAIRS * GROUP_PAIRS, min(p, -(-p1 // GROUP_PAIRS) * GROUP_PAIRS)
        rows = untile_pairs(_regroup(t[g0:g1], in_features, inverse=True), chunk)
        return rows[r0 - 2 * g0: r1 - 2 * g0]
    return untile_pairs(t[p0:p1], chunk)[r0 - 2 * p0: r1 - 2 * p0]
