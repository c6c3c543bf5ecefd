"""A stack of pre-norm layers as a prepared list of C calls: the fused Dia2 step's inner loop.
(`projection_calls` also serves the Dia-1 step's plan, fastdia.backends.cpu.dia1_fused.)

`FusedDia2._run_layers` makes ~9 C calls per layer, and around each it ran Python: module calls,
output allocations, `.float().contiguous()`, pointer lookups. On a quantized 2B model that was
~650 us per depformer stage: a frame of 31 stages took ~85 ms, of which ~22 ms remained with
every matrix-vector call stubbed out (2 Zen 4 cores).

When every projection of a stack is one of fastdia's kernel modules (int8, int4, float32), `build()` binds
everything once for a row count and a KV cache: the weights' pointers, buffers for the residual
stream, the norms' output, QKV (the projections of one input write side by side into one buffer),
the attention output and the MLP activations, and the scratch the kernels use. `LayerPlan.run()`
is then one C call that runs them all (`Program`, csrc/plan.c). The calls and their order are
those of the unprepared path, so the results are bitwise the same.

A depformer stage's plan also binds its RoPE position, cache slot and output head (`head`), and
the 31 stage plans of one row count share their buffers (`share`). On an int8 2B model (2 Zen 4
cores, ~90-120 ms steps) the Python around the plans took ~17 ms of a step; the head and
position bound here, and the embedding lookups done in C (fastdia.backends.cpu.dia2_fused),
leave ~9 ms, most of it sampling. `FusedDia2.frame` now runs stages 1..30 of a frame, their
embeddings and draws, in one C call over these plans' programs (csrc/plan.c).
"""

from __future__ import annotations

import struct
import weakref
from dataclasses import dataclass

import torch

from ...quant.modules import Int4Linear, Int8Linear
from .packed import GemvLinear


def blocks(module) -> list | None:
    """The kernel modules that compute `module`'s outputs, in output order, or None when one is
    not a fastdia kernel module: int8, int4 or a float32 GEMV (not bfloat16 weights, torch's int4
    packing, oneDNN's packed float32)."""
    first, rest = getattr(module, "first", None), getattr(module, "rest", None)
    if first is not None and rest is not None:
        a, b = blocks(first), blocks(rest)
        return None if a is None or b is None else a + b
    if isinstance(module, (Int8Linear, Int4Linear)) and module.use_kernel:
        return [module]
    if isinstance(module, GemvLinear) and module.weight.dtype == torch.float32:  # (made only where the kernels run)
        return [module]
    return None


class PlansByCache:
    """Prepared plans keyed by the KV cache their calls point into.

    Caches are held weakly: a finished run's cache (up to ~1 GB for a long script) is freed when
    its run ends, and its plans with it the next time a new cache arrives. The plans of the last
    `keep` live caches are kept, so streams or requests advanced in turn each keep theirs."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._held: list = []  # [(weakref to a cache, {key: plan or None})]

    def for_cache(self, cache) -> dict:
        """The dict of plans (any keys) for `cache`, empty for a new one."""
        plans = next((p for ref, p in self._held if ref() is cache), None)
        if plans is None:
            self._held[:] = [(ref, p) for ref, p in self._held if ref() is not None][-(self.keep - 1):]
            plans = {}
            self._held.append((weakref.ref(cache), plans))
        return plans

    @property
    def entries(self) -> list:
        """[(weakref to a cache, its plans)], oldest first."""
        return list(self._held)


class Program:
    """A list of (ctypes kernel function, arguments) as one table that `fd_run_program`
    (csrc/plan.c) runs in C: one ctypes call instead of one per kernel call (~0.5 us each of
    argument conversion, measured; ~1,100 calls in a Dia2-2B step). The same functions with the same
    arguments in the same order: bitwise the results of making the calls one by one.

    An argument is an int (or a pointer as one), None (a NULL pointer), or a float, which the
    kernels take as a C float: stored as a double, rounded to float in C as ctypes rounds it."""

    WORDS = 16  # per call, as PROGRAM_WORDS in csrc/plan.c: the id and up to 15 arguments
    OPS = {"fd_q8_gemv": 1, "fd_q4_gemv": 2, "fd_add_rmsnorm": 3, "fd_qk_norm": 4, "fd_self_attn": 5,
           "fd_silu_mul": 6, "fd_cross_attn": 7, "fd_rope": 8, "fd_f32_gemv": 9}

    def __init__(self, lib, calls: list) -> None:
        table = torch.zeros(len(calls), self.WORDS, dtype=torch.int64)
        for c, (fn, args) in enumerate(calls):
            op = self.OPS.get(fn.__name__)
            if op is None or len(args) != len(fn.argtypes) or len(args) >= self.WORDS:
                raise ValueError(f"{fn.__name__} with {len(args)} arguments cannot be a program call")
            words = [op]
            for a in args:
                if a is None:
                    words.append(0)
                elif isinstance(a, float):
                    words.append(struct.unpack("<q", struct.pack("<d", a))[0])
                else:
                    words.append(int(a))
            table[c, : len(words)] = torch.tensor(words, dtype=torch.int64)
        self.table = table
        self._run = lib.fd_run_program
        self._args = (table.data_ptr(), len(calls))

    def run(self) -> None:
        if self._run(*self._args):
            raise RuntimeError("a prepared program holds an unknown call")  # cannot happen: ids checked above


def projection_calls(lib, modules, x: torch.Tensor, y: torch.Tensor, ldy: int, rows: int, xq: torch.Tensor,
                     xsum: torch.Tensor, nthreads: int, calls: list, keep: list) -> int:
    """Append the kernel calls of `x @ W.T` for the blocks `modules` (see `blocks`), their outputs
    side by side in `y` (rows of `ldy` floats); return the number of output columns. `xq` and
    `xsum` are the kernels' scratch (room for rows x in_features); `keep` collects the modules,
    whose buffers the calls point to."""
    p = torch.Tensor.data_ptr
    col = 0
    for m in modules:
        keep.append(m)
        dst = p(y) + 4 * col
        if isinstance(m, GemvLinear):
            calls.append((lib.fd_f32_gemv, (p(x), rows, m.in_features, p(m.weight), m.out_features, dst, ldy,
                                            nthreads)))
        elif isinstance(m, Int8Linear):
            calls.append((lib.fd_q8_gemv, (p(x), rows, m.in_features, p(m.qweight), p(m.scales), m.out_features, dst,
                                           ldy, p(xq), nthreads)))
        else:
            calls.append((lib.fd_q4_gemv, (p(x), rows, m.in_features, p(m.qweight), p(m.tscale), p(m.rscale),
                                           p(m.offsets), p(m.oscale), m.group_size, m.out_features, dst, ldy, p(xq),
                                           p(xsum), nthreads)))
        col += m.out_features
    return col


@dataclass(frozen=True)
class LayerSpec:
    """One pre-norm layer: attention then a SiLU x linear MLP. Given to `build` with modules as
    the projections; `build` hands `LayerPlan` each projection as the tuple of its kernel blocks."""
    pre_norm: torch.nn.Module
    qkv: tuple  # projections of the normed input whose outputs, side by side, are Q, K, V
    q_norm: torch.nn.Module
    k_norm: torch.nn.Module
    o_proj: object
    post_norm: torch.nn.Module
    wi: object  # gate and up, side by side
    wo: object
    hidden: int


class LayerPlan:
    """Prepared calls for `rows` rows. Fill `x` (the input, updated in place as the residual
    stream), `cos`, `sin` and `slot`, then `run()`; it returns `h`, the final norm's output, or
    with a `head` the head's output `logits` (buffers the next run overwrites).

    `share`, a plan of the same layer shapes and rows, lends its buffers: the depformer's 31
    stage plans (one per stage, since each has its own head and RoPE position) then work in one
    set of buffers that stays in cache, and only `cos`, `sin` and `slot` are the plan's own."""

    _SHARED = ("x", "h", "qkv", "out", "delta", "gate_up", "act", "scratch", "iscratch", "xq", "xsum")

    def __init__(self, lib, specs: list[LayerSpec], final_norm, cache, rows: int, hq: int, hkv: int, d: int,
                 nthreads: int, head: tuple | None = None, share: "LayerPlan | None" = None) -> None:
        width = final_norm.weight.shape[0]
        total = cache.k[0].shape[2]
        f32 = torch.float32
        # The calls point into `cache`, which the caller keeps alive and checks (FusedDia2._plan).
        self.cos = torch.empty(rows, d // 2, dtype=f32)
        self.sin = torch.empty(rows, d // 2, dtype=f32)
        self.slot = torch.empty(rows, dtype=torch.long)
        n_qkv = (hq + 2 * hkv) * d
        hidden = max(s.hidden for s in specs)
        kmax = max(width, hq * d, hidden)
        if share is not None:
            for name in self._SHARED:
                setattr(self, name, getattr(share, name))
            if self.x.shape != (rows, width) or self.qkv.shape[1] != n_qkv or self.act.shape[1] < hidden \
                    or self.xq.numel() < rows * kmax or self.scratch.numel() < rows * hq * (total + d):
                raise ValueError("the plan to share buffers with has other shapes")
        else:
            self.x = torch.empty(rows, width, dtype=f32)
            self.h = torch.empty(rows, width, dtype=f32)
            self.qkv = torch.empty(rows, n_qkv, dtype=f32)
            self.out = torch.empty(rows, hq * d, dtype=f32)
            self.delta = torch.empty(rows, width, dtype=f32)
            self.gate_up = torch.empty(rows, 2 * hidden, dtype=f32)
            self.act = torch.empty(rows, hidden, dtype=f32)
            self.scratch = torch.empty(rows * hq * (total + d), dtype=f32)
            self.iscratch = torch.empty(rows * hkv * total, dtype=torch.int32)
            self.xq = torch.empty(rows * kmax, dtype=torch.int16)
            self.xsum = torch.empty(rows * kmax, dtype=f32)  # groups of >= 1 input: room for any
        self.logits = None
        self._keep = []  # the modules whose buffers the calls point to
        calls = []
        p = torch.Tensor.data_ptr

        def proj(modules, x, y, ldy):
            return projection_calls(lib, modules, x, y, ldy, rows, self.xq, self.xsum, nthreads, calls, self._keep)

        delta = None
        for i, s in enumerate(specs):
            calls.append((lib.fd_add_rmsnorm, (p(self.x), delta, p(s.pre_norm.weight), float(s.pre_norm.eps), rows,
                                               width, p(self.h))))
            if proj(s.qkv, self.h, self.qkv, n_qkv) != n_qkv:
                raise ValueError("the QKV projections do not give (hq + 2 hkv) x head_dim outputs")
            calls.append((lib.fd_qk_norm, (p(self.qkv), p(s.q_norm.weight), p(s.k_norm.weight), float(s.q_norm.eps),
                                           rows, hq, hkv, d)))
            calls.append((lib.fd_self_attn, (p(self.qkv), p(self.cos), p(self.sin), p(cache.k[i]), p(cache.v[i]),
                                             p(self.slot), rows, hq, hkv, d, total, p(self.out), p(self.scratch),
                                             p(self.iscratch), nthreads)))
            proj(s.o_proj, self.out, self.delta, width)
            calls.append((lib.fd_add_rmsnorm, (p(self.x), p(self.delta), p(s.post_norm.weight), float(s.post_norm.eps),
                                               rows, width, p(self.h))))
            proj(s.wi, self.h, self.gate_up, 2 * s.hidden)
            calls.append((lib.fd_silu_mul, (p(self.gate_up), rows, s.hidden, p(self.act))))
            proj(s.wo, self.act, self.delta, width)
            delta = p(self.delta)
        calls.append((lib.fd_add_rmsnorm, (p(self.x), delta, p(final_norm.weight), float(final_norm.eps), rows, width,
                                           p(self.h))))
        if head is not None:
            n_out = sum(m.out_features for m in head)
            self.logits = torch.empty(rows, n_out, dtype=f32)
            proj(head, self.h, self.logits, n_out)
        self._keep += [final_norm, *specs]
        self.calls = calls  # kept for tools that time each call (benchmarks/dia2_batch_profile.py)
        self.program = Program(lib, calls)

    def run(self) -> torch.Tensor:
        self.program.run()
        return self.h if self.logits is None else self.logits


def build(lib, specs: list[LayerSpec], final_norm, cache, rows: int, hq: int, hkv: int, d: int,
          nthreads: int, head=None, share: LayerPlan | None = None) -> LayerPlan | None:
    """A plan when every projection (and `head`, a module, if given) is a kernel module and the
    cache is float32, else None. Any row count: the kernels take a batch's rows 64 at a time, each
    row with the arithmetic it has alone."""
    if cache.k[0].dtype != torch.float32 or not all(t.is_contiguous() for t in (*cache.k, *cache.v)):
        return None
    resolved = []
    for s in specs:
        parts = [blocks(m) for m in (*s.qkv, s.o_proj, s.wi, s.wo)]
        if any(b is None for b in parts):
            return None
        n = len(s.qkv)
        qkv = [m for b in parts[:n] for m in b]
        resolved.append(LayerSpec(s.pre_norm, tuple(qkv), s.q_norm, s.k_norm, tuple(parts[n]), s.post_norm,
                                  tuple(parts[n + 1]), tuple(parts[n + 2]), s.hidden))
    head_blocks = None
    if head is not None:
        head_blocks = blocks(head)
        if head_blocks is None:
            return None
        head_blocks = tuple(head_blocks)
    return LayerPlan(lib, resolved, final_norm, cache, rows, hq, hkv, d, nthreads, head=head_blocks, share=share)
