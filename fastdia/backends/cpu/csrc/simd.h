/* The kernels' vector layer: 16 float32 / int32 lanes (32 int16 lanes), one zmm register on
   AVX-512 and a pair of ymm registers (lanes 0-7, 8-15) on AVX2. wonly.c and decode.c are written
   against it once and compiled once per ISA variant (fastdia/backends/cpu/kernel_build.py).

   Why 16 lanes on AVX2 too, rather than each ISA's natural width: every lane holds the same
   numbers on both. Integer sums are exact either way, but the int4 kernel flushes its int32 lane
   sums to float every few blocks, and every float reduction adds lanes in a fixed tree
   (v_reduce8 below): with the same lanes and the same tree, and no contraction of separate
   multiplies and adds into FMAs (-ffp-contract=off for every variant), a variant's results are
   bit for bit those of the others. A request's audio then does not depend on the CPU kind that
   served it, and the tests compare the variants exactly.

   AVX2 has 16 vector registers against AVX-512's 32, so the kernels use fewer activation rows per
   register block there (V_ROW_BLOCK); that changes which rows share a weight load, never a row's
   arithmetic. Dot products of int16 pairs use vpdpwssd (AVX-512 VNNI, or AVX-VNNI on ymm) or,
   without VNNI, vpmaddwd + vpaddd: the same int32 results, as no product pair here can overflow
   (activations are within +-16383, weights within int8 or 0..3825). */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define V_INLINE static inline __attribute__((always_inline))

#if defined(__AVX512F__)
#define V_ISA_AVX512 1
#define V_ROW_BLOCK 8
typedef __m512 vf;
typedef __m512i vi;
typedef __mmask16 vmask;
#else
#define V_ROW_BLOCK 2
typedef struct { __m256 lo, hi; } vf;
typedef struct { __m256i lo, hi; } vi;
typedef struct { __m256i lo, hi; int n; } vmask; /* the first n lanes (n >= 16: all) */
#endif

/* The fixed reduction tree of 8 lanes: (0+4, 1+5, 2+6, 3+7), then (0+2, 1+3), then 0+1 (the
   order GCC's _mm512_reduce_add_ps uses after adding the two halves). */
V_INLINE float v_reduce8(__m256 s) {
    __m128 q = _mm_add_ps(_mm256_extractf128_ps(s, 1), _mm256_castps256_ps128(s));
    __m128 d = _mm_add_ps(q, _mm_shuffle_ps(q, q, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm_cvtss_f32(d) + _mm_cvtss_f32(_mm_shuffle_ps(d, d, _MM_SHUFFLE(0, 0, 0, 1)));
}

#ifdef V_ISA_AVX512
/* ---------------------------------------------------------------- AVX-512: one zmm */
V_INLINE vf vf_zero(void) { return _mm512_setzero_ps(); }
V_INLINE vf vf_set1(float a) { return _mm512_set1_ps(a); }
V_INLINE vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
V_INLINE void vf_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
V_INLINE vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
V_INLINE vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
V_INLINE vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
V_INLINE vf vf_div(vf a, vf b) { return _mm512_div_ps(a, b); }
V_INLINE vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
V_INLINE vf vf_min(vf a, vf b) { return _mm512_min_ps(a, b); } /* b where either is NaN */
V_INLINE vf vf_abs(vf a) { return _mm512_abs_ps(a); }
V_INLINE vf vf_fmadd(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }   /* a b + c */
V_INLINE vf vf_fnmadd(vf a, vf b, vf c) { return _mm512_fnmadd_ps(a, b, c); } /* c - a b */
V_INLINE vf vf_round(vf a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
V_INLINE vf vf_scalef(vf p, vf n) { return _mm512_scalef_ps(p, n); } /* p 2^n, n integral */
V_INLINE float vf_reduce_add(vf v) {
    return v_reduce8(_mm256_add_ps(_mm512_castps512_ps256(v),
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
}
V_INLINE vf vf_in_reg(vf v) { __asm__("" : "+v"(v)); return v; } /* see float_rows (wonly.c) */
/* vf_reduce_add of 16 vectors at once, each sum formed by the same additions in the same order
   (lanes j + j+8, then j + j+4, then j + j+2, then 0 + 1), so the same bits: a level of the tree
   at a time for all 16, 30 shuffles and 15 adds in all instead of ~8 operations per vector. Where rows
   are short (a small model's 128 inputs: 8 FMAs per accumulator) the reductions were a third of
   a block's time; in a loop over L1-resident weights, 2 x 8 rows: 51 -> 62 G MAC/s at K = 128,
   64 -> 71 at K = 256 (2-vCPU Xeon). */
#define V_REDUCE_GROUP 16
V_INLINE void vf_reduce_group(const vf *a, float *out) {
    vf t[8], u[4], v[2];
    for (int i = 0; i < 8; i++) /* [a(2i) j+j8 .. | a(2i+1) j+j8 ..] */
        t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int i = 0; i < 4; i++) /* 128-bit block b: a(4i + b)'s four partial sums */
        u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    for (int i = 0; i < 2; i++) /* block b: a(8i + b)'s two, then a(8i + 4 + b)'s two */
        v[i] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    /* block b: the sums of a(b), a(4 + b), a(8 + b), a(12 + b) */
    vf f = _mm512_add_ps(_mm512_shuffle_ps(v[0], v[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_ps(v[0], v[1], _MM_SHUFFLE(3, 1, 3, 1)));
    float o[16];
    _mm512_storeu_ps(o, f);
    for (int b = 0; b < 4; b++) {
        out[b] = o[4 * b]; out[4 + b] = o[4 * b + 1]; out[8 + b] = o[4 * b + 2]; out[12 + b] = o[4 * b + 3];
    }
}
V_INLINE float vf_reduce_max(vf v) { return _mm512_reduce_max_ps(v); }
V_INLINE vf vf_from_vi(vi a) { return _mm512_cvtepi32_ps(a); }

V_INLINE vmask v_tail(int remaining) {
    return remaining >= 16 ? (vmask)0xFFFF : remaining <= 0 ? (vmask)0 : (vmask)((1u << remaining) - 1u);
}
V_INLINE vf vf_loadz(vmask m, const float *p) { return _mm512_maskz_loadu_ps(m, p); }
V_INLINE vf vf_load_or(vf fill, vmask m, const float *p) { return _mm512_mask_loadu_ps(fill, m, p); }
V_INLINE void vf_storem(float *p, vmask m, vf v) { _mm512_mask_storeu_ps(p, m, v); }
V_INLINE vf vf_keep(vmask m, vf v) { return _mm512_maskz_mov_ps(m, v); } /* lanes outside m zeroed */
V_INLINE vf vf_load_i8(vmask m, const int8_t *p) { /* 16 int8 as floats */
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)));
}
V_INLINE vf vf_load_h(vmask m, const uint16_t *p) { /* 16 float16 as floats */
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

V_INLINE vf vf_load_bf16(const uint16_t *p) { /* 16 bfloat16 widened to float32 (exact) */
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

V_INLINE vi vi_zero(void) { return _mm512_setzero_si512(); }
V_INLINE vi vi_load(const void *p) { return _mm512_loadu_si512(p); }           /* 64 bytes */
V_INLINE vi vi_i8_to_i16(const int8_t *p) { return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)p)); }
V_INLINE vi vi_u8_to_i16(const uint8_t *p) { return _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)p)); }
V_INLINE vi vi_set1_16(int16_t a) { return _mm512_set1_epi16(a); }
V_INLINE vi vi_and(vi a, vi b) { return _mm512_and_si512(a, b); }
V_INLINE vi vi_mullo16(vi a, vi b) { return _mm512_mullo_epi16(a, b); }
#define vi_srli16(a, imm) _mm512_srli_epi16((a), (imm))
/* 16 floats rounded to nearest even, saturated to int16, stored */
V_INLINE void vf_store_i16(int16_t *q, vf v) {
    _mm256_storeu_si256((__m256i *)q, _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(v)));
}
/* acc += pairwise int16 dot products. Through the intrinsic GCC copies each accumulator to a
   scratch register and back around every vpdpwssd (the instruction overwrites its accumulator)
   and, with 16 accumulators, spills one to the stack inside the loop; the "+v" constraint keeps
   each in its register (measured: 134 -> 158 G int16 MAC/s on 2 Zen 4 cores with 2-row blocks). */
#define V_DPWSSD(acc, x, w) __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w))
/* An exact int32 sum whose lanes need not match the other builds' (the int8 kernel reduces its
   sums only once, and integer sums do not depend on the order): one register here. */
typedef vi vsum;
#define V_SUM_ROW_BLOCK 8
V_INLINE vsum vsum_zero(void) { return vi_zero(); }
V_INLINE int32_t vsum_reduce(vsum a) { return _mm512_reduce_add_epi32(a); }
#define V_DPWSSD_SUM(acc, x, w) V_DPWSSD(acc, x, w)

#else
/* ---------------------------------------------------------------- AVX2: two ymm */
V_INLINE vf vf_zero(void) { return (vf){_mm256_setzero_ps(), _mm256_setzero_ps()}; }
V_INLINE vf vf_set1(float a) { __m256 s = _mm256_set1_ps(a); return (vf){s, s}; }
V_INLINE vf vf_load(const float *p) { return (vf){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
V_INLINE void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v.lo); _mm256_storeu_ps(p + 8, v.hi); }
V_INLINE vf vf_add(vf a, vf b) { return (vf){_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
V_INLINE vf vf_sub(vf a, vf b) { return (vf){_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)}; }
V_INLINE vf vf_mul(vf a, vf b) { return (vf){_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
V_INLINE vf vf_div(vf a, vf b) { return (vf){_mm256_div_ps(a.lo, b.lo), _mm256_div_ps(a.hi, b.hi)}; }
V_INLINE vf vf_max(vf a, vf b) { return (vf){_mm256_max_ps(a.lo, b.lo), _mm256_max_ps(a.hi, b.hi)}; }
V_INLINE vf vf_min(vf a, vf b) { return (vf){_mm256_min_ps(a.lo, b.lo), _mm256_min_ps(a.hi, b.hi)}; }
V_INLINE vf vf_abs(vf a) {
    __m256 m = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    return (vf){_mm256_and_ps(a.lo, m), _mm256_and_ps(a.hi, m)};
}
V_INLINE vf vf_fmadd(vf a, vf b, vf c) { return (vf){_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
V_INLINE vf vf_fnmadd(vf a, vf b, vf c) { return (vf){_mm256_fnmadd_ps(a.lo, b.lo, c.lo), _mm256_fnmadd_ps(a.hi, b.hi, c.hi)}; }
V_INLINE vf vf_round(vf a) {
    return (vf){_mm256_round_ps(a.lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                _mm256_round_ps(a.hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
}
/* p 2^n for integral n, as vscalefps: 2^n in two factors 2^(n/2) and 2^(n - n/2), each a normal
   float for n in [-150, 256], so p 2^a is exact and the product rounds once, as vscalefps does
   (subnormal results included); larger n overflow to inf, smaller are clamped (exp's argument
   is clamped above that anyway). */
V_INLINE __m256 v_pow2i(__m256 k) { /* 2^k for integral k in [-126, 128] (128: inf) */
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23));
}
V_INLINE __m256 v_scalef8(__m256 p, __m256 n) {
    n = _mm256_min_ps(_mm256_max_ps(n, _mm256_set1_ps(-150.f)), _mm256_set1_ps(256.f));
    __m256 a = _mm256_floor_ps(_mm256_mul_ps(n, _mm256_set1_ps(0.5f)));
    return _mm256_mul_ps(_mm256_mul_ps(p, v_pow2i(a)), v_pow2i(_mm256_sub_ps(n, a)));
}
V_INLINE vf vf_scalef(vf p, vf n) { return (vf){v_scalef8(p.lo, n.lo), v_scalef8(p.hi, n.hi)}; }
V_INLINE float vf_reduce_add(vf v) { return v_reduce8(_mm256_add_ps(v.lo, v.hi)); }
V_INLINE vf vf_in_reg(vf v) { __asm__("" : "+v"(v.lo), "+v"(v.hi)); return v; } /* see float_rows (wonly.c) */
/* vf_reduce_add of 4 vectors at once, the same additions in the same order (as the AVX-512 group
   of 16 above; 4 is what AVX2's blocks of 2 rows x 2 weight rows hold) */
#define V_REDUCE_GROUP 4
V_INLINE void vf_reduce_group(const vf *a, float *out) {
    __m256 s[4];
    for (int i = 0; i < 4; i++) s[i] = _mm256_add_ps(a[i].lo, a[i].hi);
    /* j + j+4: [a0's four | a1's four], [a2's | a3's] */
    __m256 t0 = _mm256_add_ps(_mm256_permute2f128_ps(s[0], s[1], 0x31), _mm256_permute2f128_ps(s[0], s[1], 0x20));
    __m256 t1 = _mm256_add_ps(_mm256_permute2f128_ps(s[2], s[3], 0x31), _mm256_permute2f128_ps(s[2], s[3], 0x20));
    /* j + j+2: [a0 two, a2 two | a1 two, a3 two] */
    __m256 u = _mm256_add_ps(_mm256_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm256_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));
    /* 0 + 1: [a0 a2 a0 a2 | a1 a3 a1 a3] */
    __m256 f = _mm256_add_ps(_mm256_shuffle_ps(u, u, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm256_shuffle_ps(u, u, _MM_SHUFFLE(3, 1, 3, 1)));
    float o[8];
    _mm256_storeu_ps(o, f);
    out[0] = o[0]; out[2] = o[1]; out[1] = o[4]; out[3] = o[5];
}
V_INLINE float vf_reduce_max(vf v) {
    __m256 s = _mm256_max_ps(v.lo, v.hi);
    __m128 q = _mm_max_ps(_mm256_extractf128_ps(s, 1), _mm256_castps256_ps128(s));
    q = _mm_max_ps(q, _mm_shuffle_ps(q, q, _MM_SHUFFLE(1, 0, 3, 2)));
    q = _mm_max_ps(q, _mm_shuffle_ps(q, q, _MM_SHUFFLE(0, 0, 0, 1)));
    return _mm_cvtss_f32(q);
}
V_INLINE vf vf_from_vi(vi a) { return (vf){_mm256_cvtepi32_ps(a.lo), _mm256_cvtepi32_ps(a.hi)}; }

V_INLINE vmask v_tail(int remaining) {
    __m256i n = _mm256_set1_epi32(remaining);
    return (vmask){_mm256_cmpgt_epi32(n, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
                   _mm256_cmpgt_epi32(n, _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15)), remaining};
}
V_INLINE vf vf_loadz(vmask m, const float *p) {
    if (m.n >= 16) return vf_load(p);
    return (vf){_mm256_maskload_ps(p, m.lo), _mm256_maskload_ps(p + 8, m.hi)};
}
V_INLINE vf vf_load_or(vf fill, vmask m, const float *p) {
    vf v = vf_loadz(m, p);
    return (vf){_mm256_blendv_ps(fill.lo, v.lo, _mm256_castsi256_ps(m.lo)),
                _mm256_blendv_ps(fill.hi, v.hi, _mm256_castsi256_ps(m.hi))};
}
V_INLINE void vf_storem(float *p, vmask m, vf v) {
    if (m.n >= 16) { vf_store(p, v); return; }
    _mm256_maskstore_ps(p, m.lo, v.lo);
    _mm256_maskstore_ps(p + 8, m.hi, v.hi);
}
V_INLINE vf vf_keep(vmask m, vf v) {
    return (vf){_mm256_and_ps(v.lo, _mm256_castsi256_ps(m.lo)), _mm256_and_ps(v.hi, _mm256_castsi256_ps(m.hi))};
}
V_INLINE vf vf_load_i8(vmask m, const int8_t *p) {
    __m128i b;
    if (m.n >= 16) {
        b = _mm_loadu_si128((const __m128i *)p);
    } else { /* no byte-masked loads on AVX2: the tail through a zeroed buffer */
        int8_t buf[16] = {0};
        if (m.n > 0) memcpy(buf, p, (size_t)m.n);
        b = _mm_loadu_si128((const __m128i *)buf);
    }
    return (vf){_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)))};
}
V_INLINE vf vf_load_h(vmask m, const uint16_t *p) {
    __m128i a, b;
    if (m.n >= 16) {
        a = _mm_loadu_si128((const __m128i *)p);
        b = _mm_loadu_si128((const __m128i *)(p + 8));
    } else {
        uint16_t buf[16] = {0};
        if (m.n > 0) memcpy(buf, p, 2 * (size_t)m.n);
        a = _mm_loadu_si128((const __m128i *)buf);
        b = _mm_loadu_si128((const __m128i *)(buf + 8));
    }
    return (vf){_mm256_cvtph_ps(a), _mm256_cvtph_ps(b)};
}

V_INLINE vf vf_load_bf16(const uint16_t *p) {
    return (vf){_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16)),
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 8))), 16))};
}

V_INLINE vi vi_zero(void) { return (vi){_mm256_setzero_si256(), _mm256_setzero_si256()}; }
V_INLINE vi vi_load(const void *p) {
    return (vi){_mm256_loadu_si256((const __m256i *)p), _mm256_loadu_si256((const __m256i *)p + 1)};
}
V_INLINE vi vi_i8_to_i16(const int8_t *p) {
    return (vi){_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p)),
                _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 16)))};
}
V_INLINE vi vi_u8_to_i16(const uint8_t *p) {
    return (vi){_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p)),
                _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(p + 16)))};
}
V_INLINE vi vi_set1_16(int16_t a) { __m256i s = _mm256_set1_epi16(a); return (vi){s, s}; }
V_INLINE vi vi_and(vi a, vi b) { return (vi){_mm256_and_si256(a.lo, b.lo), _mm256_and_si256(a.hi, b.hi)}; }
V_INLINE vi vi_mullo16(vi a, vi b) { return (vi){_mm256_mullo_epi16(a.lo, b.lo), _mm256_mullo_epi16(a.hi, b.hi)}; }
#define vi_srli16(a, imm) ((vi){_mm256_srli_epi16((a).lo, (imm)), _mm256_srli_epi16((a).hi, (imm))})
V_INLINE void vf_store_i16(int16_t *q, vf v) {
    /* packs interleaves 128-bit halves (a0-3 b0-3 a4-7 b4-7); the permute restores lane order */
    __m256i p = _mm256_packs_epi32(_mm256_cvtps_epi32(v.lo), _mm256_cvtps_epi32(v.hi));
    _mm256_storeu_si256((__m256i *)q, _mm256_permute4x64_epi64(p, _MM_SHUFFLE(3, 1, 2, 0)));
}
/* The int8 kernel's sums on AVX2 fold both halves into one ymm (exact, any order), so an
   accumulator is one register and blocks of 4 activation rows fit in the 16. */
typedef __m256i vsum;
#define V_SUM_ROW_BLOCK 4
V_INLINE vsum vsum_zero(void) { return _mm256_setzero_si256(); }
V_INLINE int32_t vsum_reduce(vsum s) {
    __m128i q = _mm_add_epi32(_mm256_extracti128_si256(s, 1), _mm256_castsi256_si128(s));
    q = _mm_add_epi32(q, _mm_shuffle_epi32(q, _MM_SHUFFLE(1, 0, 3, 2)));
    q = _mm_add_epi32(q, _mm_shuffle_epi32(q, _MM_SHUFFLE(0, 0, 0, 1)));
    return _mm_cvtsi128_si32(q);
}
#if defined(__AVXVNNI__)
#define V_DPWSSD_SUM(acc, x, w) do { \
    (acc) = _mm256_dpwssd_avx_epi32((acc), (x).lo, (w).lo); \
    (acc) = _mm256_dpwssd_avx_epi32((acc), (x).hi, (w).hi); } while (0)
#else
#define V_DPWSSD_SUM(acc, x, w) \
    ((acc) = _mm256_add_epi32((acc), _mm256_add_epi32(_mm256_madd_epi16((x).lo, (w).lo), _mm256_madd_epi16((x).hi, (w).hi))))
#endif
#if defined(__AVXVNNI__)
#define V_DPWSSD(acc, x, w) do { \
    (acc).lo = _mm256_dpwssd_avx_epi32((acc).lo, (x).lo, (w).lo); \
    (acc).hi = _mm256_dpwssd_avx_epi32((acc).hi, (x).hi, (w).hi); } while (0)
#else
#define V_DPWSSD(acc, x, w) do { \
    (acc).lo = _mm256_add_epi32((acc).lo, _mm256_madd_epi16((x).lo, (w).lo)); \
    (acc).hi = _mm256_add_epi32((acc).hi, _mm256_madd_epi16((x).hi, (w).hi)); } while (0)
#endif
#endif
