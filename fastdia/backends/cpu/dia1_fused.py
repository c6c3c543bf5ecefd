"""A fused float32 CPU decode step for the Dia-1 decoder, applied from outside the model.

`Decoder.forward` is the reference: pure torch, any device, dtype and number of positions. On a
CPU with fastdia's kernels (fastdia.backends.cpu.kernels), a decode step (one position per row) spends as
long in ~2,000 small torch ops (norms, RoPE, cache writes, single-query attention, SiLU: each a
few microseconds of dispatch on a few KB of data) as in its weight matmuls once those are
quantized. `FusedDecodeStep` runs the same math with one C call per norm, attention and SiLU,
and calls the model's own projection modules (float, int8 or int4: whatever quantization put
there) for the matmuls. Anything else (prefill, other dtypes or devices) goes to
`Decoder.forward` unchanged.

When every projection is one of fastdia's kernel modules (int8, int4, float32), the step's ~200 C calls are
bound once per KV cache, cross state and row count (`_StepPlan`, as fastdia.backends.cpu.layer_plan
does for Dia2): the same calls in the same order, so the same numbers, without the Python around
each.
"""

from __future__ import annotations

import weakref

import torch

from ...dia1.model import CrossState, Decoder
from . import kernels as cpu_kernels
from .layer_plan import PlansByCache, Program, blocks, projection_calls


def supported(decoder: Decoder, device: torch.device, dtype: torch.dtype) -> bool:
    """True when `FusedDecodeStep` can serve this decoder (CPU, float32, kernels built)."""
    if device.type != "cpu" or dtype != torch.float32 or not cpu_kernels.available():
        return False
    layer = decoder.layers[0]
    return layer.self_attn.head_dim % 2 == 0 and layer.self_attn.n_head % layer.self_attn.n_kv_head == 0 \
        and layer.cross_attn.n_head % layer.cross_attn.n_kv_head == 0


class FusedDecodeStep:
    """Callable with `Decoder.forward`'s signature; single-position calls take the fused path.
    A prepared step returns its plan's logits buffer, which the next call overwrites: use (or copy)
    the logits before stepping again."""

    def __init__(self, decoder: Decoder, plans: bool = True) -> None:
        self.decoder = decoder
        self.lib = cpu_kernels._library()
        self.use_plans = plans
        self._plans = PlansByCache()  # {(rows, threads): _StepPlan or None} per KV cache
        # A quantized decoder keeps its cross-attention K/V in float16: half their memory (86 MB
        # for a 145-byte script at 1.6B size, 18 layers x 2 CFG rows), an error (2^-11
        # relative) far below its weights' own, read at the same speed.
        self.cross_dtype = torch.float16 if _quantized(decoder) else None

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache, cross: CrossState,
                 kv_len: int | None = None, compute_logits: bool = True) -> torch.Tensor | None:
        dec = self.decoder
        b, length, _ = tokens.shape
        if length != 1 or cache.k[0].dtype != torch.float32 or not compute_logits:
            return dec(tokens, positions, cache, cross, kv_len=kv_len, compute_logits=compute_logits)
        lib, ptr, nthreads = self.lib, torch.Tensor.data_ptr, torch.get_num_threads()
        total = cache.k[0].shape[2]
        pos = positions[:, 0].contiguous()
        # The C code writes cache slot `pos` unchecked: refuse anything outside the cache.
        if int(pos.min()) < 0 or int(pos.max()) >= total:
            raise ValueError(f"decode positions must lie in 0..{total - 1}")
        x = dec.embed(tokens).view(b, -1).contiguous()  # (B, E) float32, updated in place
        cos, sin = (t.contiguous() for t in dec.rope.tables(positions))  # (B, 1, 1, D/2)
        if dec.cross_attn_rope:
            cross_cos, cross_sin = (t.contiguous() for t in dec.cross_rope.tables(positions))
        plan = self._plan(cache, cross, b)
        if plan is not None:
            plan.x.copy_(x)
            plan.cos.copy_(cos.view(b, -1))
            plan.sin.copy_(sin.view(b, -1))
            plan.pos.copy_(pos)
            plan.keep.copy_(cross.allowed.reshape(b, -1))
            if dec.cross_attn_rope:
                plan.cross_cos.copy_(cross_cos.view(b, -1))
                plan.cross_sin.copy_(cross_sin.view(b, -1))
            # The plan's own logits buffer, valid until this step runs again: the generator and
            # the slot batch sample from it at once (no copy: 1.2 MB a step at 16 members).
            return plan.run().view(b, 1, dec.n_channels, dec.vocab)
        width = x.shape[1]
        h = torch.empty_like(x)
        keep = cross.allowed.reshape(b, -1).contiguous()  # (B, S) bool
        half = int(cross.k[0].dtype == torch.float16)
        s_len = keep.shape[1]

        first = dec.layers[0]
        sa0, ca0 = first.self_attn, first.cross_attn
        hq, hkv, d = sa0.n_head, sa0.n_kv_head, sa0.head_dim
        chq, chkv, cd = ca0.n_head, ca0.n_kv_head, ca0.head_dim
        attn = torch.empty((b, hq * d))
        cattn = torch.empty((b, chq * cd))
        hidden = torch.empty((b, first.mlp.hidden))
        scratch = torch.empty(max(b * hq * (total + d), b * chq * s_len))
        iscratch = torch.empty(b * max(hkv * total, chkv * s_len), dtype=torch.int32)
        eps = float(first.pre_sa_norm.eps)

        delta = None
        for i, layer in enumerate(dec.layers):
            lib.fd_add_rmsnorm(ptr(x), _p(delta), ptr(layer.pre_sa_norm.weight), eps, b, width, ptr(h))
            qkv = layer.self_attn.qkv(h).contiguous()
            lib.fd_self_attn(ptr(qkv), ptr(cos), ptr(sin), ptr(cache.k[i]), ptr(cache.v[i]), ptr(pos),
                             b, hq, hkv, d, total, ptr(attn), ptr(scratch), ptr(iscratch), nthreads)
            delta = layer.self_attn.o(attn).contiguous()

            lib.fd_add_rmsnorm(ptr(x), ptr(delta), ptr(layer.pre_ca_norm.weight), eps, b, width, ptr(h))
            q = layer.cross_attn.q(h).float().contiguous()
            if dec.cross_attn_rope:
                lib.fd_rope(ptr(q), ptr(cross_cos), ptr(cross_sin), b, chq, cd)
            lib.fd_cross_attn(ptr(q), ptr(cross.k[i]), ptr(cross.v[i]), half, ptr(keep), b, chq, chkv, cd, s_len,
                              ptr(cattn), ptr(scratch), ptr(iscratch), nthreads)
            delta = layer.cross_attn.o(cattn).contiguous()

            lib.fd_add_rmsnorm(ptr(x), ptr(delta), ptr(layer.pre_mlp_norm.weight), eps, b, width, ptr(h))
            gate_up = layer.mlp.gate_up(h).contiguous()
            lib.fd_silu_mul(ptr(gate_up), b, layer.mlp.hidden, ptr(hidden))
            delta = layer.mlp.down(hidden).contiguous()
        lib.fd_add_rmsnorm(ptr(x), ptr(delta), ptr(dec.norm.weight), float(dec.norm.eps), b, width, ptr(h))
        logits = dec.head(h)
        return logits.view(b, 1, dec.n_channels, dec.vocab).float()

    def _plan(self, cache, cross: CrossState, rows: int):
        """The prepared step for this cache, cross state and row count, or None (plans off, or a
        projection that is not a kernel module)."""
        if not self.use_plans:
            return None
        plans = self._plans.for_cache(cache)
        key = (rows, torch.get_num_threads())
        plan = plans.get(key)
        if key not in plans or (plan is not None and not plan.serves(cross)):
            plan = plans[key] = _StepPlan.build(self.lib, self.decoder, cache, cross, rows, key[1])
        return plan


class _StepPlan:
    """A decode step's C calls for `rows` rows, bound to a KV cache and a cross state. Fill `x`
    (the embedded tokens), `cos`, `sin`, `pos`, `keep` (and `cross_cos`/`cross_sin` where the
    checkpoint rotates cross-attention queries), then `run()`: it returns the logits buffer
    `(rows, channels x vocab)`, overwritten by the next run."""

    @classmethod
    def build(cls, lib, dec: Decoder, cache, cross: CrossState, rows: int, nthreads: int) -> "_StepPlan | None":
        if not all(t.is_contiguous() for t in (*cache.k, *cache.v, *cross.k, *cross.v)):
            return None
        projections = []
        for layer in dec.layers:
            mods = (layer.self_attn.qkv, layer.self_attn.o, layer.cross_attn.q, layer.cross_attn.o,
                    layer.mlp.gate_up, layer.mlp.down)
            projections.append([blocks(m) for m in mods])
        head = blocks(dec.head)
        if head is None or any(b is None for layer in projections for b in layer):
            return None
        return cls(lib, dec, cache, cross, rows, nthreads, projections, head)

    def __init__(self, lib, dec: Decoder, cache, cross: CrossState, rows: int, nthreads: int, projections: list,
                 head: list) -> None:
        first = dec.layers[0]
        sa, ca = first.self_attn, first.cross_attn
        hq, hkv, d = sa.n_head, sa.n_kv_head, sa.head_dim
        chq, chkv, cd = ca.n_head, ca.n_kv_head, ca.head_dim
        width, hidden = dec.norm.weight.shape[0], first.mlp.hidden
        total, s_len = cache.k[0].shape[2], cross.k[0].shape[2]
        half = int(cross.k[0].dtype == torch.float16)
        f32, p = torch.float32, torch.Tensor.data_ptr
        self.x = torch.empty(rows, width, dtype=f32)
        self.cos = torch.empty(rows, d // 2, dtype=f32)
        self.sin = torch.empty(rows, d // 2, dtype=f32)
        self.cross_cos = torch.empty(rows, cd // 2, dtype=f32)
        self.cross_sin = torch.empty(rows, cd // 2, dtype=f32)
        self.pos = torch.empty(rows, dtype=torch.long)
        self.keep = torch.empty(rows, s_len, dtype=torch.bool)
        h = self.h = torch.empty(rows, width, dtype=f32)
        qkv = torch.empty(rows, (hq + 2 * hkv) * d, dtype=f32)
        attn = torch.empty(rows, hq * d, dtype=f32)
        q = torch.empty(rows, chq * cd, dtype=f32)
        cattn = torch.empty(rows, chq * cd, dtype=f32)
        delta = torch.empty(rows, width, dtype=f32)
        gate_up = torch.empty(rows, 2 * hidden, dtype=f32)
        act = torch.empty(rows, hidden, dtype=f32)
        self.logits = torch.empty(rows, dec.n_channels * dec.vocab, dtype=f32)
        scratch = torch.empty(max(rows * hq * (total + d), rows * chq * s_len), dtype=f32)
        iscratch = torch.empty(rows * max(hkv * total, chkv * s_len), dtype=torch.int32)
        kmax = max(width, hq * d, chq * cd, hidden)
        xq = torch.empty(rows * kmax, dtype=torch.int16)
        xsum = torch.empty(rows * kmax, dtype=f32)  # groups of >= 1 input: room for any
        self._buffers = (h, qkv, attn, q, cattn, delta, gate_up, act, scratch, iscratch, xq, xsum)
        self._keep: list = []  # the modules whose buffers the calls point to
        # The calls point into the cross state's K/V: held weakly, checked by `serves`.
        self._cross = weakref.ref(cross)
        self._cross_k0 = p(cross.k[0])
        calls: list = []

        def proj(modules, x, y):
            projection_calls(lib, modules, x, y, y.shape[1], rows, xq, xsum, nthreads, calls, self._keep)

        def norm(residual, norm_module, eps):
            calls.append((lib.fd_add_rmsnorm, (p(self.x), residual, p(norm_module.weight), eps, rows, width, p(h))))

        eps = float(first.pre_sa_norm.eps)
        residual = None
        for i, (layer, (w_qkv, w_o, w_q, w_co, w_gu, w_down)) in enumerate(zip(dec.layers, projections)):
            norm(residual, layer.pre_sa_norm, eps)
            proj(w_qkv, h, qkv)
            calls.append((lib.fd_self_attn, (p(qkv), p(self.cos), p(self.sin), p(cache.k[i]), p(cache.v[i]),
                                             p(self.pos), rows, hq, hkv, d, total, p(attn), p(scratch), p(iscratch),
                                             nthreads)))
            proj(w_o, attn, delta)
            residual = p(delta)
            norm(residual, layer.pre_ca_norm, eps)
            proj(w_q, h, q)
            if dec.cross_attn_rope:
                calls.append((lib.fd_rope, (p(q), p(self.cross_cos), p(self.cross_sin), rows, chq, cd)))
            calls.append((lib.fd_cross_attn, (p(q), p(cross.k[i]), p(cross.v[i]), half, p(self.keep), rows, chq, chkv,
                                              cd, s_len, p(cattn), p(scratch), p(iscratch), nthreads)))
            proj(w_co, cattn, delta)
            norm(residual, layer.pre_mlp_norm, eps)
            proj(w_gu, h, gate_up)
            calls.append((lib.fd_silu_mul, (p(gate_up), rows, hidden, p(act))))
            proj(w_down, act, delta)
        calls.append((lib.fd_add_rmsnorm, (p(self.x), residual, p(dec.norm.weight), float(dec.norm.eps), rows, width,
                                           p(h))))
        proj(head, h, self.logits)
        self.calls = calls
        self.program = Program(lib, calls)

    def serves(self, cross: CrossState) -> bool:
        """Whether the calls point into this cross state's K/V."""
        return self._cross() is cross and cross.k[0].data_ptr() == self._cross_k0

    def run(self) -> torch.Tensor:
        self.program.run()
        return self.logits


def _quantized(decoder: Decoder) -> bool:
    from ...quant.modules import Int4Linear, Int8Linear

    return any(isinstance(m, (Int8Linear, Int4Linear)) for m in decoder.modules())


def _p(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def decode_step(decoder: Decoder, device: torch.device, dtype: torch.dtype):
    """The fastest available callable with `Decoder.forward`'s signature for this setup."""
    if not isinstance(decoder, Decoder):  # a step of its own (fastdia.backends.onnx.dia1_runtime): used as it is
        return decoder
    return FusedDecodeStep(decoder) if supported(decoder, device, dtype) else decoder
