/* Fused float32 glue for one CPU decode step (one query position per row); see fastdia/cpu_decode.py.

   A decode step of the 1.6B model is ~36 weight matmuls plus ~2,000 small torch ops (norms,
   RoPE, cache writes, single-query attention, SiLU) that each cost microseconds of dispatch on
   tensors of a few KB. These functions do the same math in one call each, in float32, in the
   order torch does it (up to float rounding order):
     - fd_add_rmsnorm: x += d (the residual), y = x * rsqrt(mean(x^2) + eps) * w
     - fd_self_attn:   RoPE on q/k, K/V written into the static cache at each row's position,
                       attention over slots 0..position with Dia's scale of 1.0 (spec 1.4), GQA
     - fd_cross_attn:  attention over the text keys a mask allows
     - fd_silu_mul:    silu(gate) * up
     - fd_rope:        RoPE in place on the heads of each row (Dia-1 v0.1's cross-attention queries)
   Layouts: activations (B, width) contiguous; caches (B, Hkv, T, D); query head h reads KV head
   h / (Hq / Hkv). */
#include <stdint.h>
#include <math.h>
#include <float.h>
#include <omp.h>

#define INLINE static inline __attribute__((always_inline))

/* exp(x) to ~2 ulp: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r, 2^n by scalef
   (which also flushes very negative inputs to 0 and overflows to +inf like expf). */
INLINE vf exp16(vf x) {
    x = vf_max(x, vf_set1(-104.f));
    vf n = vf_round(vf_mul(x, vf_set1(1.44269504088896341f)));
    vf r = vf_fnmadd(n, vf_set1(0.693359375f), x);
    r = vf_fnmadd(n, vf_set1(-2.12194440e-4f), r);
    vf p = vf_set1(1.9875691500E-4f);
    p = vf_fmadd(p, r, vf_set1(1.3981999507E-3f));
    p = vf_fmadd(p, r, vf_set1(8.3334519073E-3f));
    p = vf_fmadd(p, r, vf_set1(4.1665795894E-2f));
    p = vf_fmadd(p, r, vf_set1(1.6666665459E-1f));
    p = vf_fmadd(p, r, vf_set1(5.0000001201E-1f));
    vf r2 = vf_mul(r, r);
    p = vf_fmadd(p, r2, vf_add(r, vf_set1(1.f)));
    return vf_scalef(p, n);
}

#define tail_mask v_tail

INLINE float dot(const float *a, const float *b, int n) {
    vf acc = vf_zero();
    for (int i = 0; i < n; i += 16) {
        vmask m = tail_mask(n - i);
        acc = vf_fmadd(vf_loadz(m, a + i), vf_loadz(m, b + i), acc);
    }
    return vf_reduce_add(acc);
}

/* dot / axpy against a float16 row (a quantized model's cross-attention K/V, stored half size) */
INLINE vf load_h(const uint16_t *p, vmask m) { return vf_load_h(m, p); }

INLINE float dot_h(const float *a, const uint16_t *b, int n) {
    vf acc = vf_zero();
    for (int i = 0; i < n; i += 16) {
        vmask m = tail_mask(n - i);
        acc = vf_fmadd(vf_loadz(m, a + i), load_h(b + i, m), acc);
    }
    return vf_reduce_add(acc);
}

INLINE void axpy_h(float *out, float p, const uint16_t *v, int n) {
    vf pv = vf_set1(p);
    for (int i = 0; i < n; i += 16) {
        vmask m = tail_mask(n - i);
        vf o = vf_loadz(m, out + i);
        vf_storem(out + i, m, vf_fmadd(pv, load_h(v + i, m), o));
    }
}

/* out[i] += p * v[i] for i < n */
INLINE void axpy(float *out, float p, const float *v, int n) {
    vf pv = vf_set1(p);
    for (int i = 0; i < n; i += 16) {
        vmask m = tail_mask(n - i);
        vf o = vf_loadz(m, out + i);
        vf_storem(out + i, m, vf_fmadd(pv, vf_loadz(m, v + i), o));
    }
}

void fd_add_rmsnorm(float *x, const float *d, const float *w, float eps, int M, int E, float *y) {
    for (int m = 0; m < M; m++) {
        float *xr = x + (int64_t)m * E;
        vf ss = vf_zero();
        for (int k = 0; k < E; k += 16) {
            vmask mk = tail_mask(E - k);
            vf v = vf_loadz(mk, xr + k);
            if (d) {
                v = vf_add(v, vf_loadz(mk, d + (int64_t)m * E + k));
                vf_storem(xr + k, mk, v);
            }
            ss = vf_fmadd(v, v, ss);
        }
        float r = 1.f / sqrtf(vf_reduce_add(ss) / (float)E + eps);
        vf rv = vf_set1(r);
        float *yr = y + (int64_t)m * E;
        for (int k = 0; k < E; k += 16) {
            vmask mk = tail_mask(E - k);
            vf v = vf_mul(vf_loadz(mk, xr + k), rv);
            vf_storem(yr + k, mk, vf_mul(v, vf_loadz(mk, w + k)));
        }
    }
}

void fd_silu_mul(const float *gu, int M, int F, float *out) {
    for (int m = 0; m < M; m++) {
        const float *g = gu + (int64_t)m * 2 * F, *u = g + F;
        float *o = out + (int64_t)m * F;
        for (int k = 0; k < F; k += 16) {
            vmask mk = tail_mask(F - k);
            vf gv = vf_loadz(mk, g + k);
            vf e = exp16(vf_sub(vf_zero(), gv));
            vf s = vf_div(gv, vf_add(vf_set1(1.f), e));
            vf_storem(o + k, mk, vf_mul(s, vf_loadz(mk, u + k)));
        }
    }
}

/* Half-split RoPE of one head (spec 1.5): dim i pairs with dim i + D/2. */
INLINE void rope(const float *x, const float *c, const float *s, int D, float *out) {
    int half = D / 2;
    for (int i = 0; i < half; i++) {
        float a = x[i], b = x[i + half];
        out[i] = a * c[i] - b * s[i];
        out[i + half] = b * c[i] + a * s[i];
    }
}

/* x: (B, H D), rotated in place by row b's cos/sin (B, D/2); every head of a row alike. */
void fd_rope(float *x, const float *cos, const float *sin, int B, int H, int D) {
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            float *head = x + ((int64_t)b * H + h) * D;
            /* in place: rope reads each pair of dims before it writes them */
            rope(head, cos + (int64_t)b * (D / 2), sin + (int64_t)b * (D / 2), D, head);
        }
}

/* Softmax in place over n scores (n >= 1). */
INLINE void softmax(float *sc, int n) {
    vf mx = vf_set1(-INFINITY);
    for (int s = 0; s < n; s += 16)
        mx = vf_max(mx, vf_load_or(vf_set1(-INFINITY), tail_mask(n - s), sc + s));
    vf mv = vf_set1(vf_reduce_max(mx));
    vf sum = vf_zero();
    for (int s = 0; s < n; s += 16) {
        vmask mk = tail_mask(n - s);
        vf e = exp16(vf_sub(vf_loadz(mk, sc + s), mv));
        e = vf_keep(mk, e);
        vf_storem(sc + s, mk, e);
        sum = vf_add(sum, e);
    }
    vf inv = vf_set1(1.f / vf_reduce_add(sum));
    for (int s = 0; s < n; s += 16) {
        vmask mk = tail_mask(n - s);
        vf_storem(sc + s, mk, vf_mul(vf_loadz(mk, sc + s), inv));
    }
}

#define CHUNK 64 /* key positions per pass: a chunk of K or V rows stays in L1 across the query heads */

/* G query heads `q` (G x D) against keys/values `k`, `v` (rows of D floats, or float16 when
   `half`); `keep` (may be NULL) selects keys; scores is G x S scratch. Writes G x D into out. */
INLINE void attend(const float *q, int G, const void *k, const void *v, int half, int S, const uint8_t *keep,
                   int D, float *scores, int *idx, float *out) {
    /* compact the allowed key indices once (all of 0..S-1 for causal self-attention) */
    int n = 0;
    for (int s = 0; s < S; s++) if (!keep || keep[s]) idx[n++] = s;
    for (int j = 0; j < G * D; j++) out[j] = 0.f;
    if (n == 0) return;
    for (int c0 = 0; c0 < n; c0 += CHUNK) {
        int c1 = c0 + CHUNK < n ? c0 + CHUNK : n;
        for (int g = 0; g < G; g++)
            for (int i = c0; i < c1; i++)
                scores[(int64_t)g * S + i] = half
                    ? dot_h(q + (int64_t)g * D, (const uint16_t *)k + (int64_t)idx[i] * D, D)
                    : dot(q + (int64_t)g * D, (const float *)k + (int64_t)idx[i] * D, D);
    }
    for (int g = 0; g < G; g++) softmax(scores + (int64_t)g * S, n);
    for (int c0 = 0; c0 < n; c0 += CHUNK) {
        int c1 = c0 + CHUNK < n ? c0 + CHUNK : n;
        for (int g = 0; g < G; g++)
            for (int i = c0; i < c1; i++) {
                if (half)
                    axpy_h(out + (int64_t)g * D, scores[(int64_t)g * S + i], (const uint16_t *)v + (int64_t)idx[i] * D, D);
                else
                    axpy(out + (int64_t)g * D, scores[(int64_t)g * S + i], (const float *)v + (int64_t)idx[i] * D, D);
            }
    }
}

/* qkv: (B, (Hq + 2 Hkv) D); cos/sin: (B, D/2); kc/vc: (B, Hkv, T, D); pos: (B,) slot of this step.
   scratch: B * Hq * (T + D) floats + B * Hkv * T ints. out: (B, Hq D). */
void fd_self_attn(const float *qkv, const float *cos, const float *sin, float *kc, float *vc, const int64_t *pos,
                  int B, int Hq, int Hkv, int D, int T, float *out, float *scratch, int *iscratch, int nthreads) {
    int G = Hq / Hkv, W = (Hq + 2 * Hkv) * D;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int u = 0; u < B * Hkv; u++) {
        int b = u / Hkv, h = u % Hkv;
        int64_t p = pos[b];
        const float *row = qkv + (int64_t)b * W, *c = cos + (int64_t)b * (D / 2), *s = sin + (int64_t)b * (D / 2);
        float *kbase = kc + ((int64_t)b * Hkv + h) * T * D, *vbase = vc + ((int64_t)b * Hkv + h) * T * D;
        rope(row + (int64_t)(Hq + h) * D, c, s, D, kbase + p * D);
        const float *vin = row + (int64_t)(Hq + Hkv + h) * D;
        for (int i = 0; i < D; i++) vbase[p * D + i] = vin[i];
        float *qr = scratch + (int64_t)u * G * (T + D), *scores = qr + (int64_t)G * D;
        for (int g = 0; g < G; g++) rope(row + (int64_t)(h * G + g) * D, c, s, D, qr + (int64_t)g * D);
        attend(qr, G, kbase, vbase, 0, (int)(p + 1), NULL, D, scores, iscratch + (int64_t)u * T,
               out + (int64_t)b * Hq * D + (int64_t)h * G * D);
    }
}

/* q: (B, Hq D) (already rotated where the checkpoint uses cross RoPE); kc/vc: (B, Hkv, S, D),
   float32 or (half != 0) float16; keep: (B, S) bool. scratch: B * Hq * S floats + B * Hkv * S
   ints. out: (B, Hq D). */
void fd_cross_attn(const float *q, const void *kc, const void *vc, int half, const uint8_t *keep, int B, int Hq,
                   int Hkv, int D, int S, float *out, float *scratch, int *iscratch, int nthreads) {
    int G = Hq / Hkv;
    int64_t esize = half ? 2 : 4;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int u = 0; u < B * Hkv; u++) {
        int b = u / Hkv, h = u % Hkv;
        int64_t off = ((int64_t)b * Hkv + h) * S * D * esize;
        const char *kbase = (const char *)kc + off, *vbase = (const char *)vc + off;
        /* a literal `half` in each call lets the inlined attend drop the per-key branch */
        if (half)
            attend(q + (int64_t)b * Hq * D + (int64_t)h * G * D, G, kbase, vbase, 1, S, keep + (int64_t)b * S, D,
                   scratch + (int64_t)u * G * S, iscratch + (int64_t)u * S, out + (int64_t)b * Hq * D + (int64_t)h * G * D);
        else
            attend(q + (int64_t)b * Hq * D + (int64_t)h * G * D, G, kbase, vbase, 0, S, keep + (int64_t)b * S, D,
                   scratch + (int64_t)u * G * S, iscratch + (int64_t)u * S, out + (int64_t)b * Hq * D + (int64_t)h * G * D);
    }
}

/* Dia2's QK-norm: per-head RMSNorm over D of the Hq query and Hkv key heads of each row of qkv
   (B, (Hq + 2 Hkv) D), in place, with the gains qw / kw (D) shared by the heads. fd_self_attn
   then rotates them and attends. */
void fd_qk_norm(float *qkv, const float *qw, const float *kw, float eps, int B, int Hq, int Hkv, int D) {
    int W = (Hq + 2 * Hkv) * D;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < Hq + Hkv; h++) {
            float *x = qkv + (int64_t)b * W + (int64_t)h * D;
            const float *w = h < Hq ? qw : kw;
            vf ss = vf_zero();
            for (int k = 0; k < D; k += 16) {
                vmask mk = tail_mask(D - k);
                vf v = vf_loadz(mk, x + k);
                ss = vf_fmadd(v, v, ss);
            }
            vf rv = vf_set1(1.f / sqrtf(vf_reduce_add(ss) / (float)D + eps));
            for (int k = 0; k < D; k += 16) {
                vmask mk = tail_mask(D - k);
                vf v = vf_mul(vf_loadz(mk, x + k), rv);
                vf_storem(x + k, mk, vf_mul(v, vf_loadz(mk, w + k)));
            }
        }
}

/* Rows of embedding tables, looked up and summed: x[r] = base[r] (or x[r] when base is NULL) +
   t_0[ids[r, 0]] + t_1[ids[r, 1]] + ... in that order. A table is int8 with one float scale per
   row (sptr[c] its scales; each looked-up row dequantized as q * scale first) or float32 (sptr[c]
   0). Dia2 sums 32 such rows per decoder position and adds one per depformer stage; through torch
   each table was ~6 ops. The multiply and the add are rounded separately (no FMA), as torch's
   `table(ids)` then `x + rows` are: bitwise the same sums. ids: rows x ld_ids, int64. Returns 0,
   or -1 (x untouched) when an id is outside 0 .. vocab - 1. */
int fd_embed_add(float *x, const float *base, int ntab, const int64_t *qptr, const int64_t *sptr,
                 const int64_t *ids, int ld_ids, int rows, int D, int vocab) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < ntab; c++)
            if (ids[(int64_t)r * ld_ids + c] < 0 || ids[(int64_t)r * ld_ids + c] >= vocab) return -1;
    for (int r = 0; r < rows; r++) {
        float *xr = x + (int64_t)r * D;
        const float *br = base ? base + (int64_t)r * D : xr;
        for (int c = 0; c < ntab; c++) {
            int64_t id = ids[(int64_t)r * ld_ids + c];
            const float *src = c == 0 ? br : xr;
            if (!sptr[c]) { /* a float32 table */
                const float *w = (const float *)(intptr_t)qptr[c] + id * D;
                for (int k = 0; k < D; k += 16) {
                    vmask mk = tail_mask(D - k);
                    vf_storem(xr + k, mk, vf_add(vf_loadz(mk, src + k), vf_loadz(mk, w + k)));
                }
                continue;
            }
            const int8_t *q = (const int8_t *)(intptr_t)qptr[c] + id * D;
            vf s = vf_set1(((const float *)(intptr_t)sptr[c])[id]);
            for (int k = 0; k < D; k += 16) {
                vmask mk = tail_mask(D - k);
                /* separate multiply and add: every variant is built with -ffp-contract=off */
                vf t = vf_mul(vf_load_i8(mk, q + k), s);
                vf_storem(xr + k, mk, vf_add(vf_loadz(mk, src + k), t));
            }
        }
    }
    return 0;
}
