"""Dia2's decoder step and depformer stage on fastdia's CPU kernels.

Same math as `Dia2Decoder.forward` (one position per row) and `Dia2Depformer.stage`, with every
norm, the QK-norm, RoPE, the cache write, attention and the gated activation done by one C call
each (fastdia/backends/cpu/csrc/decode.c) instead of ~25 small torch ops per layer. A 2B step runs
the decoder's 28 layers once and the depformer's 4 layers 31 times: ~3,500 torch ops in all,
whose dispatch alone was a large share of a step. The matrix products are the model's own modules
(whatever the module swap made them: fastdia's float GEMV, int8 or int4 kernels), so quantization
stays outside. Anything this path does not cover (several positions per row, a non-float32 cache,
activations other than SiLU x linear) goes to the model's own forward.
"""

from __future__ import annotations

import torch

from ...dia2.model import DecoderOutput, Dia2Model
from . import kernels as cpu_kernels
from . import layer_plan


def supported(model: Dia2Model, device: torch.device) -> bool:
    cfg = model.config
    return (device.type == "cpu" and cpu_kernels.available()
            and tuple(cfg.decoder.mlp_activations) == ("silu", "linear")
            and tuple(cfg.depformer.mlp_activations) == ("silu", "linear")
            and model.transformer.norm.weight.dtype == torch.float32)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class _Tables:
    """Embedding tables whose rows one `fd_embed_add` call looks up and adds in order (csrc/decode.c):
    int8 ones (fastdia.quant.modules.Int8Embedding, float32 output) or float32 `nn.Embedding`s. The
    tables' tensors are held here, so the pointers stay valid whatever happens to the modules."""

    def __init__(self, tables: list) -> None:
        # (weights, scales): int8 rows and their scales, or float32 rows and None
        self.held = [(t.qweight, t.scales) if hasattr(t, "qweight") else (t.weight, None) for t in tables]
        self.n, self.vocab, self.dim = len(tables), tables[0].num_embeddings, tables[0].embedding_dim
        self.qptr = torch.tensor([q.data_ptr() for q, _ in self.held], dtype=torch.int64)
        self.sptr = torch.tensor([0 if s is None else s.data_ptr() for _, s in self.held], dtype=torch.int64)

    @staticmethod
    def of(tables) -> "_Tables | None":
        from ...quant.modules import Int8Embedding

        def usable(t) -> bool:
            if isinstance(t, Int8Embedding):
                return t.dtype == torch.float32 and t.qweight.is_contiguous() and t.scales.is_contiguous()
            # a plain lookup (fastdia.nn.layers.Embedding changes only its initialisation)
            return isinstance(t, torch.nn.Embedding) and type(t).forward is torch.nn.Embedding.forward \
                and t.max_norm is None and t.weight.dtype == torch.float32 and t.weight.is_contiguous()

        tables = list(tables)
        if not tables or not all(usable(t) for t in tables) \
                or len({(t.num_embeddings, t.embedding_dim) for t in tables}) != 1:
            return None
        return _Tables(tables)

    def add(self, lib, x: torch.Tensor, base: torch.Tensor | None, ids: torch.Tensor) -> None:
        """x (B, D) = base (or x) + the tables' rows for ids (B, n), table i's at column i."""
        if self.n == 1:
            ids = ids.reshape(-1, 1)
        ids = ids.contiguous()
        if ids.dtype != torch.int64 or ids.shape != (x.shape[0], self.n):
            raise ValueError(f"embedding ids must be int64 of shape {(x.shape[0], self.n)}")
        if lib.fd_embed_add(x.data_ptr(), _ptr(base), self.n, self.qptr.data_ptr(), self.sptr.data_ptr(),
                            ids.data_ptr(), self.n, x.shape[0], self.dim, self.vocab):
            raise ValueError(f"embedding ids must lie in 0..{self.vocab - 1}")


class FusedDia2:
    """`transformer(...)` and `stage(...)` with the signatures of the model's own."""

    def __init__(self, model: Dia2Model, plans: bool = True) -> None:
        self.model = model
        self.lib = cpu_kernels._library()
        self._in_memo = None  # (hidden, {group: depformer_in[group](hidden)}) of the current frame
        # Prepared layer stacks (fastdia.backends.cpu.layer_plan) per part and KV cache:
        # "decoder": {(None, rows, threads): plan or None}, "depformer": {(stage, rows, threads): ...},
        # one dict per cache.
        self.use_plans = plans
        self._plans = {"decoder": layer_plan.PlansByCache(), "depformer": layer_plan.PlansByCache()}
        self._frames = layer_plan.PlansByCache()  # `frame`'s pointers: {(first, rows, threads): dict or None}
        dep = model.depformer
        d = model.config.depformer
        # RoPE of stage s is the same every frame: cos/sin (1, hd/2) per stage, computed once.
        # Without RoPE, cos 1 and sin 0 make the rotation an exact identity.
        stages = torch.arange(model.config.n_stages)[:, None]
        if dep.apply_rope:
            cos, sin = dep.rope.tables(stages)
            self._stage_rope = [(c.reshape(1, -1).contiguous(), s_.reshape(1, -1).contiguous())
                                for c, s_ in zip(cos, sin)]
        else:
            ones, zeros = torch.ones(1, d.head_dim // 2), torch.zeros(1, d.head_dim // 2)
            self._stage_rope = [(ones, zeros)] * model.config.n_stages
        # embedding tables (int8 or float32) looked up and added by one C call (None: torch's lookup).
        self._dec_tables = _Tables.of(model.transformer.audio_embeds)
        self._stage_tables = [_Tables.of([e]) for e in dep.audio_embeds]

    # ------------------------------------------------------------------ decoder
    def transformer(self, tokens: torch.Tensor, positions: torch.Tensor, cache, slots: torch.Tensor | None = None,
                    kv_len: int | None = None) -> DecoderOutput:
        dec = self.model.transformer
        b, length, _ = tokens.shape
        if length != 1 or cache.k[0].dtype != torch.float32:
            return dec(tokens, positions, cache, slots=slots, kv_len=kv_len)
        slots = positions if slots is None else slots
        total = cache.k[0].shape[2]
        slot = slots[:, 0].contiguous()
        if int(slot.min()) < 0 or int(slot.max()) >= total:  # the C code writes the slot unchecked
            raise ValueError(f"decoder cache slots must lie in 0..{total - 1}")
        cos, sin = (t.reshape(b, -1).contiguous() for t in dec.rope.tables(positions))
        x = self._embed(dec, tokens)
        layer0 = dec.layers[0]
        att = layer0.attn
        d = att.q_norm.weight.shape[0]
        plan = self._plan("decoder", None, b, cache, lambda: [
            layer_plan.LayerSpec(ly.pre_norm, (ly.attn.q_proj, ly.attn.k_proj, ly.attn.v_proj), ly.attn.q_norm,
                                 ly.attn.k_norm, ly.attn.o_proj, ly.post_norm, ly.mlp.wi, ly.mlp.wo, ly.mlp.hidden)
            for ly in dec.layers], dec.norm, att.n_head, att.n_kv_head, d)
        if plan is not None:
            hidden = self._run_plan(plan, x, cos, sin, slot).clone()  # the plan's buffer is reused next step
        else:
            hidden = self._run_layers(x, dec.layers, cos, sin, slot, cache, total, att.n_head, att.n_kv_head, d,
                                      self._decoder_attention, dec.norm)
        hidden = hidden.view(b, 1, -1)
        return DecoderOutput(hidden, dec.action_head(hidden).float(), dec.cb0_head(hidden).float())

    def _embed(self, dec, tokens: torch.Tensor) -> torch.Tensor:
        """`dec.embed(tokens)` for one position per row, as (B, D) float32."""
        b = tokens.shape[0]
        if self._dec_tables is None:
            return dec.embed(tokens).reshape(b, -1).float().contiguous()
        x = dec.text_embed(tokens[..., 0], tokens[..., 1]).reshape(b, -1)
        x = x.contiguous() if x.dtype == torch.float32 else x.float().contiguous()
        self._dec_tables.add(self.lib, x, None, tokens[:, 0, 2:])
        return x

    @staticmethod
    def _decoder_attention(layer, h):
        a = layer.attn
        return torch.cat((a.q_proj(h), a.k_proj(h), a.v_proj(h)), dim=-1), a.o_proj, a.q_norm, a.k_norm

    # ------------------------------------------------------------------ depformer
    def stage(self, s: int, hidden: torch.Tensor, prev_token: torch.Tensor, cache,
              text: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        dep = self.model.depformer
        if cache.k[0].dtype != torch.float32:
            return dep.stage(s, hidden, prev_token, cache, text)
        group = dep.schedule[s]
        if s == 0 and dep.text_embed is not None and text is None:
            raise ValueError("this depformer has a text embedding: stage 0 needs text=(main, second)")
        b = hidden.shape[0]
        plan = self._stage_plan(s, group, b, cache)
        base = self._depformer_in(s, group, hidden)
        tables = self._stage_tables[s]
        if plan is not None and tables is not None and base.dtype == torch.float32:
            tables.add(self.lib, plan.x, base.contiguous(), prev_token)  # plan.x = base + embedding
            x = plan.x
        else:
            x = base + dep.audio_embeds[s](prev_token)
        if s == 0 and dep.text_embed is not None:
            x = x + dep.text_embed(text[0][:, None], text[1][:, None])[:, 0]
        if plan is not None:
            if x is not plan.x:
                plan.x.copy_(x)
            return plan.run()[:, : dep.codebook_size].clone()  # the plan's buffer is reused next stage
        c, s_ = self._stage_rope[s]
        sa = dep.layers[0].self_attention
        x = x.float().contiguous()
        cos, sin = c.expand(b, -1).contiguous(), s_.expand(b, -1).contiguous()
        slot = torch.full((b,), s, dtype=torch.long)

        def attention(layer, h):
            a = layer.self_attention
            return a.in_proj[group](h), a.out_proj[group], a.q_norm, a.k_norm

        h = self._run_layers(x, dep.layers, cos, sin, slot, cache, cache.k[0].shape[2], sa.n_head, sa.n_head,
                             sa.head_dim, attention, dep.norm)
        return dep.logits[s](h)[:, : dep.codebook_size].float()

    def frame(self, first: int, hidden: torch.Tensor, token: torch.Tensor, cache, draws: list, uniforms):
        """Stages `first`.. of this frame, each followed by its draws, in one C call
        (`fd_depformer_frame`, csrc/plan.c): what `stage` then a draw per script do, stage by
        stage, without the Python around each stage (6-12 ms of a 2B int8 step in paired A/B
        rounds, benchmarks/dia2_ab.py).

        `token` (rows,) int64: the token each row's first stage reads (updated in place). `draws`:
        per script, (its first row, cfg_scale, cfg_filter_k, temperature, top_k); temperature 0
        takes the greedy pick (csrc/sample.c fd_cfg_greedy: torch's argmax, bit for bit).
        `uniforms()` gives their (len(draws), stages) float64 uniforms (a greedy script's row is
        unused) and is called only when the C frame runs. Returns the picked tokens
        (len(draws), stages), or None where this setup has no C frame (nothing was computed or
        drawn; the caller runs the stages one by one)."""
        dep = self.model.depformer
        rows = hidden.shape[0]
        last = self.model.config.n_stages
        if not self.use_plans or cache.k[0].dtype != torch.float32 or not 1 <= first < last \
                or token.dtype != torch.int64:
            return None
        prepared = self._frame_plan(first, rows, cache)
        if prepared is None:
            return None
        bases = [self._depformer_in(s, dep.schedule[s], hidden) for s in range(first, last)]
        if any(b.dtype != torch.float32 for b in bases):
            return None
        bases = [b.contiguous() for b in bases]
        stages = last - first
        u = uniforms().to(torch.float64).contiguous()
        if u.shape != (len(draws), stages):
            raise ValueError(f"uniforms must be ({len(draws)}, {stages}), got {tuple(u.shape)}")
        draw_rows = torch.tensor([d[0] for d in draws], dtype=torch.int32)
        scale = torch.tensor([d[1] for d in draws], dtype=torch.float32)
        cfg_k = torch.tensor([d[2] for d in draws], dtype=torch.int32)
        temperature = torch.tensor([d[3] for d in draws], dtype=torch.float32)
        top_k = torch.tensor([d[4] for d in draws], dtype=torch.int32)
        if bool(((draw_rows < 0) | (draw_rows + 1 >= rows)).any()):
            raise ValueError("frame draws pick from a script's two rows")
        out = torch.empty(len(draws), stages, dtype=torch.int64)
        base_ptr = torch.tensor([b.data_ptr() for b in bases], dtype=torch.int64)
        p = torch.Tensor.data_ptr
        token_in = token.contiguous()
        status = self.lib.fd_depformer_frame(
            stages, rows, prepared["dim"], prepared["vocab"], dep.codebook_size, p(prepared["programs"]),
            p(prepared["ncalls"]), p(prepared["x"]), p(base_ptr), p(prepared["qptr"]), p(prepared["sptr"]),
            p(prepared["logits"]), prepared["ld"], len(draws), p(draw_rows), p(scale), p(cfg_k), p(temperature),
            p(top_k), p(u), p(token_in), p(out))
        if status == -1:
            raise ValueError(f"depformer tokens must lie in 0..{prepared['vocab'] - 1}")
        if status:
            raise RuntimeError(f"the depformer frame failed in C (status {status})")
        if token_in is not token:
            token.copy_(token_in)
        return out

    def _frame_plan(self, first: int, rows: int, cache):
        """The pointers `frame` hands to C for stages first.. at this row count and cache, or None
        where a stage has no prepared plan or no embedding table the C lookup takes, or the plans' shapes differ."""
        plans = self._frames.for_cache(cache)
        key = (first, rows, torch.get_num_threads())
        if key not in plans:
            dep = self.model.depformer
            last = self.model.config.n_stages
            stage_plans = [self._stage_plan(s, dep.schedule[s], rows, cache) for s in range(first, last)]
            tables = self._stage_tables[first:last]
            ok = all(sp is not None and sp.logits is not None for sp in stage_plans) \
                and all(t is not None for t in tables)
            if ok:
                x, lg = stage_plans[0].x, stage_plans[0].logits
                ok = all(sp.x is x and sp.logits.shape == lg.shape for sp in stage_plans) \
                    and lg.shape[1] >= dep.codebook_size and len({(t.vocab, t.dim) for t in tables}) == 1 \
                    and tables[0].dim == x.shape[1]
            plans[key] = None if not ok else {
                "plans": stage_plans,  # holds the programs and buffers the pointers below point into
                "programs": torch.tensor([sp.program.table.data_ptr() for sp in stage_plans], dtype=torch.int64),
                "ncalls": torch.tensor([sp.program.table.shape[0] for sp in stage_plans], dtype=torch.int32),
                "logits": torch.tensor([sp.logits.data_ptr() for sp in stage_plans], dtype=torch.int64),
                "qptr": torch.cat([t.qptr for t in tables]), "sptr": torch.cat([t.sptr for t in tables]),
                "tables": tables, "x": x, "ld": lg.shape[1], "dim": x.shape[1], "vocab": tables[0].vocab,
            }
        return plans[key]

    def _depformer_in(self, s: int, group: int, hidden: torch.Tensor) -> torch.Tensor:
        """`depformer_in[group](hidden)`, computed once per frame and group: the 2B schedule gives
        stages 4..30 one group, so 26 of a step's 31 projections (2 M weights each) would repeat
        the same product. A frame always starts at stage 0, which clears the memo; the memo also
        holds `hidden` itself and is used only for that very tensor (its identity cannot pass to
        another tensor while the memo keeps it alive)."""
        if s == 0 or self._in_memo is None or self._in_memo[0] is not hidden:
            self._in_memo = (hidden, {})
        done = self._in_memo[1]
        if group not in done:
            done[group] = self.model.depformer.depformer_in[group](hidden)
        return done[group]

    def _stage_plan(self, s: int, group: str, rows: int, cache):
        """Stage `s`'s prepared calls (layers, final norm, its head) for this cache and row count, or
        None. One plan per stage, all of a row count in one set of buffers (`LayerPlan`'s `share`):
        a stage's RoPE position, cache slot and head are bound once, so a call only copies its input."""
        if not self.use_plans:
            return None
        plans = self._plans["depformer"].for_cache(cache)
        threads = torch.get_num_threads()
        key = (s, rows, threads)
        if key not in plans:
            dep = self.model.depformer
            sa = dep.layers[0].self_attention
            share = next((p for (_, r, n), p in plans.items() if (r, n) == (rows, threads) and p is not None), None)
            specs = [layer_plan.LayerSpec(ly.pre_norm, (ly.self_attention.in_proj[group],), ly.self_attention.q_norm,
                                          ly.self_attention.k_norm, ly.self_attention.out_proj[group], ly.post_norm,
                                          ly.mlp.wi, ly.mlp.wo, ly.mlp.hidden) for ly in dep.layers]
            plan = layer_plan.build(self.lib, specs, dep.norm, cache, rows, sa.n_head, sa.n_head, sa.head_dim, threads,
                                    head=dep.logits[s], share=share)
            if plan is not None:
                c, s_ = self._stage_rope[s]
                plan.cos.copy_(c.expand_as(plan.cos))
                plan.sin.copy_(s_.expand_as(plan.sin))
                plan.slot.fill_(s)
            plans[key] = plan
        return plans[key]

    # ------------------------------------------------------------------ shared
    def _plan(self, part: str, group, rows: int, cache, specs, final_norm, hq: int, hkv: int, d: int):
        """The prepared layer stack for this part, group, row count and cache, or None where the
        projections are not all kernel modules (then `_run_layers` runs it)."""
        if not self.use_plans:
            return None
        plans = self._plans[part].for_cache(cache)
        key = (group, rows, torch.get_num_threads())
        if key not in plans:
            plans[key] = layer_plan.build(self.lib, specs(), final_norm, cache, rows, hq, hkv, d, key[2])
        return plans[key]

    @staticmethod
    def _run_plan(plan, x, cos, sin, slot) -> torch.Tensor:
        plan.x.copy_(x)
        plan.cos.copy_(cos.expand_as(plan.cos))
        plan.sin.copy_(sin.expand_as(plan.sin))
        if isinstance(slot, int):
            plan.slot.fill_(slot)
        else:
            plan.slot.copy_(slot)
        return plan.run()

    def _run_layers(self, x, layers, cos, sin, slot, cache, total, hq, hkv, d, attention, final_norm):
        """Pre-norm residual layers over `x (B, E)` (updated in place); returns the final norm's output."""
        lib, nthreads = self.lib, torch.get_num_threads()
        b, width = x.shape
        h = torch.empty_like(x)
        out = torch.empty((b, hq * d))
        scratch = torch.empty(b * hq * (total + d))
        iscratch = torch.empty(b * hkv * total, dtype=torch.int32)
        delta = None
        for i, layer in enumerate(layers):
            lib.fd_add_rmsnorm(_ptr(x), _ptr(delta), _ptr(layer.pre_norm.weight), float(layer.pre_norm.eps), b, width,
                               _ptr(h))
            qkv, o_proj, q_norm, k_norm = attention(layer, h)
            qkv = qkv.float().contiguous()
            lib.fd_qk_norm(_ptr(qkv), _ptr(q_norm.weight), _ptr(k_norm.weight), float(q_norm.eps), b, hq, hkv, d)
            lib.fd_self_attn(_ptr(qkv), _ptr(cos), _ptr(sin), _ptr(cache.k[i]), _ptr(cache.v[i]), _ptr(slot), b, hq,
                             hkv, d, total, _ptr(out), _ptr(scratch), _ptr(iscratch), nthreads)
            delta = o_proj(out).float().contiguous()
            lib.fd_add_rmsnorm(_ptr(x), _ptr(delta), _ptr(layer.post_norm.weight), float(layer.post_norm.eps), b,
                               width, _ptr(h))
            mlp = layer.mlp
            gate_up = mlp.wi(h).float().contiguous()
            act = torch.empty((b, mlp.hidden))
            lib.fd_silu_mul(_ptr(gate_up), b, mlp.hidden, _ptr(act))
            delta = mlp.wo(act).float().contiguous()
        lib.fd_add_rmsnorm(_ptr(x), _ptr(delta), _ptr(final_norm.weight), float(final_norm.eps), b, width, _ptr(h))
        return h
