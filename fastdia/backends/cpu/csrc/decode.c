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
#include <immintrin.h>
#include <stdint.h>
#include <math.h>
#include <float.h>
#include <omp.h>

#define INLINE static inline __attribute__((always_inline))

/* exp(x) to ~2 ulp: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r, 2^n by scalef
   (which also flushes very negative inputs to 0 and overflows to +inf like expf). */
INLINE __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
    __m512 r2 = _mm512_mul_ps(r, r);
    p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
    return _mm512_scalef_ps(p, n);
}

INLINE __mmask16 tail_mask(int remaining) {
    return remaining >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << remaining) - 1u);
}

INLINE float dot(const float *a, const float *b, int n) {
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

/* dot / axpy against a float16 row (a quantized model's cross-attention K/V, stored half size) */
INLINE __m512 load_h(const uint16_t *p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

INLINE float dot_h(const float *a, const uint16_t *b, int n) {
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), load_h(b + i, m), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

INLINE void axpy_h(float *out, float p, const uint16_t *v, int n) {
    __m512 pv = _mm512_set1_ps(p);
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 o = _mm512_maskz_loadu_ps(m, out + i);
        _mm512_mask_storeu_ps(out + i, m, _mm512_fmadd_ps(pv, load_h(v + i, m), o));
    }
}

/* out[i] += p * v[i] for i < n */
INLINE void axpy(float *out, float p, const float *v, int n) {
    __m512 pv = _mm512_set1_ps(p);
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 o = _mm512_maskz_loadu_ps(m, out + i);
        _mm512_mask_storeu_ps(out + i, m, _mm512_fmadd_ps(pv, _mm512_maskz_loadu_ps(m, v + i), o));
    }
}

void fd_add_rmsnorm(float *x, const float *d, const float *w, float eps, int M, int E, float *y) {
    for (int m = 0; m < M; m++) {
        float *xr = x + (int64_t)m * E;
        __m512 ss = _mm512_setzero_ps();
        for (int k = 0; k < E; k += 16) {
            __mmask16 mk = tail_mask(E - k);
            __m512 v = _mm512_maskz_loadu_ps(mk, xr + k);
            if (d) {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, d + (int64_t)m * E + k));
                _mm512_mask_storeu_ps(xr + k, mk, v);
            }
            ss = _mm512_fmadd_ps(v, v, ss);
        }
        float r = 1.f / sqrtf(_mm512_reduce_add_ps(ss) / (float)E + eps);
        __m512 rv = _mm512_set1_ps(r);
        float *yr = y + (int64_t)m * E;
        for (int k = 0; k < E; k += 16) {
            __mmask16 mk = tail_mask(E - k);
            __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, xr + k), rv);
            _mm512_mask_storeu_ps(yr + k, mk, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(mk, w + k)));
        }
    }
}

void fd_silu_mul(const float *gu, int M, int F, float *out) {
    for (int m = 0; m < M; m++) {
        const float *g = gu + (int64_t)m * 2 * F, *u = g + F;
        float *o = out + (int64_t)m * F;
        for (int k = 0; k < F; k += 16) {
            __mmask16 mk = tail_mask(F - k);
            __m512 gv = _mm512_maskz_loadu_ps(mk, g + k);
            __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv));
            __m512 s = _mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.f), e));
            _mm512_mask_storeu_ps(o + k, mk, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(mk, u + k)));
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
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int s = 0; s < n; s += 16)
        mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail_mask(n - s), sc + s));
    __m512 mv = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int s = 0; s < n; s += 16) {
        __mmask16 mk = tail_mask(n - s);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, sc + s), mv));
        e = _mm512_maskz_mov_ps(mk, e);
        _mm512_mask_storeu_ps(sc + s, mk, e);
        sum = _mm512_add_ps(sum, e);
    }
    __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(sum));
    for (int s = 0; s < n; s += 16) {
        __mmask16 mk = tail_mask(n - s);
        _mm512_mask_storeu_ps(sc + s, mk, _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, sc + s), inv));
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
            __m512 ss = _mm512_setzero_ps();
            for (int k = 0; k < D; k += 16) {
                __mmask16 mk = tail_mask(D - k);
                __m512 v = _mm512_maskz_loadu_ps(mk, x + k);
                ss = _mm512_fmadd_ps(v, v, ss);
            }
            __m512 rv = _mm512_set1_ps(1.f / sqrtf(_mm512_reduce_add_ps(ss) / (float)D + eps));
            for (int k = 0; k < D; k += 16) {
                __mmask16 mk = tail_mask(D - k);
                __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, x + k), rv);
                _mm512_mask_storeu_ps(x + k, mk, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(mk, w + k)));
            }
        }
}

/* Rows of int8 embedding tables (each row stored with one float scale), looked up and summed:
   x[r] = base[r] (or x[r] when base is NULL) + t_0[ids[r, 0]] + t_1[ids[r, 1]] + ... in that order,
   each looked-up row dequantized as q * scale first. Dia2 sums 32 such rows per decoder position
   and adds one per depformer stage; through torch each table was ~6 ops. The multiply and the
   add are rounded separately (no FMA), as torch's `table(ids)` then `x + rows` are: bitwise the
   same sums. ids: rows x ld_ids, int64. Returns 0, or -1 (x untouched) when an id is outside
   0 .. vocab - 1. */
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
            const int8_t *q = (const int8_t *)(intptr_t)qptr[c] + id * D;
            __m512 s = _mm512_set1_ps(((const float *)(intptr_t)sptr[c])[id]);
            const float *src = c == 0 ? br : xr;
            for (int k = 0; k < D; k += 16) {
                __mmask16 mk = tail_mask(D - k);
                __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mk, q + k)));
                __m512 t = _mm512_mul_round_ps(w, s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                _mm512_mask_storeu_ps(xr + k, mk, _mm512_add_round_ps(_mm512_maskz_loadu_ps(mk, src + k), t,
                                                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            }
        }
    }
    return 0;
}
