/* Weight-only GEMV kernels (int8, int4, fp32, bf16) for decode-sized inputs; see fastdia/backends/cpu/kernels.py. */
#include <stdint.h>
#include <math.h>
#include <omp.h>
/* (the vector layer, csrc/simd.h, comes first in the compiled source) */

#define MAXM 8 /* the most rows one register kernel instance holds */
/* Rows per call. A call runs the register kernel over blocks of up to 8 rows on each weight row
   pair while that pair (a few KB) is in L1, so DRAM delivers every weight once per call for all
   rows: a batch of requests costs little more bandwidth than one. Each row's arithmetic is the
   same whatever block it is in, so a row's result does not depend on the other rows.
   Blocks of 8 rows: with the accumulators pinned to registers (DPWSSD below) 8 rows fit in the 32
   vector registers, and one widening of a weight chunk to int16 then serves 8 rows instead of 2.
   Measured on 2 Zen 4 cores, L3-resident 3072 x 1024 weights, 8 rows, three rounds each: int8
   181 -> 262-286 G MAC/s (blocks of 4: 247-257), int4 ~146 -> 184-232 (blocks of 4: 158-203),
   bfloat16 ~130 -> 224; 2 rows (one utterance with CFG) run the same code as before. */
#define MAXROWS 64
#define BLOCKS(CASE, B) \
    for (int m0 = 0; m0 < M; m0 += B) { \
        int mm = M - m0 < B ? M - m0 : B; \
        switch (mm) { CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8) } \
    }
/* (AVX2's 16 registers hold fewer rows: V_ROW_BLOCK is 2 there, csrc/simd.h) */
#define Q8_BLOCK V_SUM_ROW_BLOCK
#define Q4_BLOCK V_ROW_BLOCK
#define F_BLOCK V_ROW_BLOCK
/* Software prefetch distance in bytes. The int8/int4 kernels read one tiled stream and prefetch
   8 KB ahead into L2 (measured: 23 -> 29 GB/s streaming the int8 decoder; into L1 it gained
   nothing). The float kernels read two rows side by side and prefetch PF ahead into L1 and 4 PF
   into L2; the benchmarks in benchmarks/README.md were taken with these values. */
#define PF 8192

/* Per-row symmetric quantization of x (M x K float, K a multiple of 32) to int16 in
   [-16383, 16383]: 15 bits keep the int32 accumulators of K <= 16384 products safe from
   overflow. Vectorised: in scalar code this cost ~20 us per call, as much as a small matmul. */
static void quant_rows(const float *x, int M, int K, int16_t *xq, float *sx) {
    for (int m = 0; m < M; m++) {
        const float *r = x + (int64_t)m * K;
        vf amax = vf_zero();
        for (int k = 0; k < K; k += 16) amax = vf_max(amax, vf_abs(vf_load(r + k)));
        float a = vf_reduce_max(amax);
        float s = a > 0.f ? a / 16383.f : 1.f;
        vf inv = vf_set1(1.f / s);
        sx[m] = s;
        int16_t *q = xq + (int64_t)m * K;
        for (int k = 0; k < K; k += 16) /* round to nearest even, as lrintf */
            vf_store_i16(q + k, vf_mul(vf_load(r + k), inv));
    }
}

#define INLINE static inline __attribute__((always_inline))

/* AMX (csrc/amx.c): each does a leading part of the output and returns how much (0 when AMX is
   off or the call is not one it takes); the AVX-512 code below does the rest. */
static int q8_amx(const int16_t *xq, const float *sx, int M, int K, const int8_t *w, const float *scale, int N,
                  float *y, int ldy, int nthreads);
#ifdef __AVX512BF16__
static int bf16_amx(const uint16_t *x, int M, int K, const uint16_t *w, int N, float *y, int ldy, int nthreads);
#endif

#define DPWSSD V_DPWSSD /* acc += pairwise int16 dot products, in place (csrc/simd.h) */

/* Two weight rows at a time share every activation load; M (rows of x) is a compile-time
   constant in each specialisation so the accumulators live in registers.
   Weights are stored in row pairs, tiled (see fastdia.quant.formats.tile_pairs): for each 32-byte chunk j of
   the rows, row 2p's chunk then row 2p+1's, so a pass reads one sequential stream. Reading two
   rows side by side instead halves the DRAM bandwidth of this CPU's hardware prefetchers
   (measured: 17 vs 35 GB/s on 2 Zen 4 cores). */
INLINE void q8_core(const int16_t *xq, int K, int k0, int k1, const int8_t *tile, int M, vsum *a0, vsum *a1) {
    /* tile: the pair's weights from input k0 on */
    const int8_t *w0 = tile - 2 * (int64_t)k0, *w1 = w0 + 32;
    for (int k = k0; k < k1; k += 32) {
        _mm_prefetch((const char *)(w0 + 2 * k + PF), _MM_HINT_T1);
        vi v0 = vi_i8_to_i16(w0 + 2 * k);
        vi v1 = vi_i8_to_i16(w1 + 2 * k);
        for (int m = 0; m < M; m++) {
            vi xv = vi_load(xq + (int64_t)m * K + k);
            V_DPWSSD_SUM(a0[m], xv, v0);
            V_DPWSSD_SUM(a1[m], xv, v1);
        }
    }
}

/* Rows of x against one row pair over all K, the sums returned reduced. */
INLINE void q8_rows(const int16_t *xq, int K, const int8_t *tile, int M, int32_t *out0, int32_t *out1) {
    vsum a0[MAXM], a1[MAXM];
    for (int m = 0; m < M; m++) { a0[m] = vsum_zero(); a1[m] = vsum_zero(); }
    q8_core(xq, K, 0, K, tile, M, a0, a1);
    for (int m = 0; m < M; m++) { out0[m] = vsum_reduce(a0[m]); out1[m] = vsum_reduce(a1[m]); }
}

/* The same over inputs k0 .. k1 (tile from k0 on), the accumulators kept in acc between calls
   (long rows, below).
   Through local arrays: accumulating into acc itself ran 8-14% slower. */
INLINE void q8_part(const int16_t *xq, int K, int k0, int k1, const int8_t *tile, int M, vsum *acc) {
    vsum a0[MAXM], a1[MAXM];
    for (int m = 0; m < M; m++) { a0[m] = acc[2 * m]; a1[m] = acc[2 * m + 1]; }
    q8_core(xq, K, k0, k1, tile, M, a0, a1);
    for (int m = 0; m < M; m++) { acc[2 * m] = a0[m]; acc[2 * m + 1] = a1[m]; }
}

/* Long int8 rows. A pass over one row pair reads the block's whole int16 activation (rows x K x 2
   bytes) while the weights stream through L1. At long rows it no longer stays there (8 rows at
   K = 3072 are 48 KB; 2 rows at K = 8192 are 32 KB, all of L1): every pair re-reads it from L2,
   and the weights stream slower. Measured on 2 Zen 4 cores: 2 rows of 2048 x 8192 (Dia-1's MLP
   down-projection) 22-31 GB/s against 35-47 for 8192 x 2048; 8 rows of 256 x 6144 in cache
   135-160 G MAC/s against 260-280 at K <= 2048.
   So an int8 weight of K > 3072 (`fastdia.quant.formats.grouped`) is held in groups of
   GROUP_PAIRS pairs, each stored chunk-major: GROUP_CHUNK inputs of the group's first pair, of
   its second, ..., then the next GROUP_CHUNK inputs. A call runs a group chunk by chunk, each
   chunk of the activation (at most 8 x 1024 x 2 = 16 KB) serving the group's four pairs from
   L1, and still reads one sequential stream. The pairs' accumulators wait in memory between
   chunks; integer sums are exact, so the results are bitwise those of a whole-row pass.
   Measured against pair tiles in one process: from DRAM, 2 rows 1.13-1.25x at K = 6144-8192,
   8 rows 1.6-1.9x. At K = 3072 (Dia2's depformer) 2 rows ran 0.87-0.90x with the weight in
   cache (where it is compute-bound and the accumulators' round trips cost), so from 4096 on.
   At K <= 2048 groups lost (0.77-0.98x). int4 keeps whole rows: at 2 rows its kernel is bound
   by its multiplies, not by the stream, and groups (int and float accumulators to keep between
   chunks) ran 0.82-0.93x, except 1.07x for 2048 x 8192. */
#define GROUP_PAIRS 4
#define GROUP_CHUNK 1024
#define WHOLE_ROWS 3072
static inline int grouped(int K) { return K > WHOLE_ROWS && K % GROUP_CHUNK == 0; }

/* Runs CASE (a switch over the block's row count mm) for every chunk of every pair of the group
   [pa, pb), rows m0 .. m0 + mm. */
#define GROUPED(CASE) \
    for (int k0 = 0; k0 < K; k0 += GROUP_CHUNK) \
        for (int q = pa; q < pb; q++) switch (mm) { CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8) }

#define Q8_CASE(MM) case MM: q8_rows(xq + (int64_t)m0 * K, K, tile, MM, o0 + m0, o1 + m0); break;
/* a group's chunk k0 of pair q: after k0 / GROUP_CHUNK chunks of every pair of the group, and q - pa of this one */
#define Q8_PART(MM) case MM: q8_part(xq + (int64_t)m0 * K, K, k0, k0 + GROUP_CHUNK, \
                                     gw + ((int64_t)k0 * (pb - pa) + (int64_t)(q - pa) * GROUP_CHUNK) * 2, MM, acc[q - pa]); break;

/* The same chunk order over pair tiles, for blocks of rows whose activations overflow L1 at a
   K that is not grouped: 8 rows at K = 3072 (Dia2's depformer MLP down-projection) are 48 KB,
   and every pair re-read them from L2 (93 G MAC/s against ~145 for the same pass's other
   shapes, 2 Zen 4 cores). A group's pairs are read chunk by chunk from their tiles: four short
   streams instead of one. In one process against whole-row passes, 1024 x 3072, 8-16 rows:
   1.0-1.14x with the weight in cache, 1.05-1.18x from DRAM; in a Dia2 batch-4 pass that shape
   went from 93 to 110 G MAC/s. At K = 2048 (8 rows are 32 KB) the same split gave 0.8-1.16x
   in turns, so K <= 2048 keeps whole rows; fewer than 6 rows always do. */
#define SPLIT_ROWS 6
static inline int split_rows(int M, int K) {
    return !grouped(K) && M >= SPLIT_ROWS && K % GROUP_CHUNK == 0 && K > 2 * GROUP_CHUNK;
}
#define Q8_TILE_PART(MM) case MM: q8_part(xq + (int64_t)m0 * K, K, k0, k0 + GROUP_CHUNK, \
                                          w + (int64_t)q * 2 * K + 2 * (int64_t)k0, MM, acc[q - pa]); break;

static void q8_gemv(const float *x, int M, int K, const int8_t *w, const float *scale, int N,
                    float *y, int ldy, int16_t *xq, int nthreads) {
    float sx[MAXROWS];
    quant_rows(x, M, K, xq, sx);
    int pairs = (N + 1) / 2, groups = (pairs + GROUP_PAIRS - 1) / GROUP_PAIRS;
    int split = split_rows(M, K);
    int done = q8_amx(xq, sx, M, K, w, scale, N, y, ldy, nthreads); /* pairs [0, done): a multiple of GROUP_PAIRS */
    if (done == pairs) return;
    if (!grouped(K) && !split) {
        #pragma omp parallel for schedule(static) num_threads(nthreads)
        for (int p = done; p < pairs; p++) {
            int n0 = 2 * p, n1 = 2 * p + 1; /* an odd N has a zero padding row at N */
            const int8_t *tile = w + (int64_t)p * 2 * K;
            int32_t o0[MAXROWS], o1[MAXROWS];
            BLOCKS(Q8_CASE, Q8_BLOCK)
            for (int m = 0; m < M; m++) {
                y[(int64_t)m * ldy + n0] = (float)o0[m] * sx[m] * scale[n0];
                if (n1 < N) y[(int64_t)m * ldy + n1] = (float)o1[m] * sx[m] * scale[n1];
            }
        }
        return;
    }
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int g = done / GROUP_PAIRS; g < groups; g++) {
        int pa = g * GROUP_PAIRS, pb = pa + GROUP_PAIRS < pairs ? pa + GROUP_PAIRS : pairs;
        const int8_t *gw = w + (int64_t)pa * 2 * K;
        for (int m0 = 0; m0 < M; m0 += Q8_BLOCK) {
            int mm = M - m0 < Q8_BLOCK ? M - m0 : Q8_BLOCK;
            vsum acc[GROUP_PAIRS][2 * MAXM];
            for (int q = 0; q < pb - pa; q++)
                for (int i = 0; i < 2 * mm; i++) acc[q][i] = vsum_zero();
            if (split) {
                GROUPED(Q8_TILE_PART)
            } else {
                GROUPED(Q8_PART)
            }
            for (int q = pa; q < pb; q++) {
                int n0 = 2 * q, n1 = 2 * q + 1; /* an odd N has a zero padding row at N */
                for (int m = 0; m < mm; m++) {
                    float s = sx[m0 + m];
                    y[(int64_t)(m0 + m) * ldy + n0] = (float)vsum_reduce(acc[q - pa][2 * m]) * s * scale[n0];
                    if (n1 < N)
                        y[(int64_t)(m0 + m) * ldy + n1] = (float)vsum_reduce(acc[q - pa][2 * m + 1]) * s * scale[n1];
                }
            }
        }
    }
}

/* int4, two weight rows per pass. Per group g of a row n: W = rscale[n] * t[n, g] * q + offset[n, g],
   q in 0..15, t in 1..255 (uint8). q * t (at most 3825) is formed in int16 lanes, so one vpdpwssd
   multiplies 32 of them by the int16 activations and the per-group scale costs one vpmullw per
   32 weights instead of an int -> float conversion and an FMA per group and activation row.
   Products are exact in int32 for 8 blocks (2 * 8 * 2 * 3825 * 16383 < 2^31), then flushed to
   float. The offsets contribute oscale[n] * sum_g offset[n, g] * (sum of x over group g), in
   float (offset int8). */
#define Q4_FLUSH 8
INLINE void q4_rows(const int16_t *xq, int K, const uint8_t *tile, const uint8_t *tt, int group_shift, int M,
                    float *out0, float *out1) {
    const uint8_t *w0 = tile, *w1 = tile + 32; /* row pairs tiled, as for int8 */
    const uint16_t *tpair = (const uint16_t *)tt;
    const vi lo_mask = vi_set1_16(0x0F), byte_mask = vi_set1_16(0xFF);
    vi a0[MAXM], a1[MAXM];
    vf f0[MAXM], f1[MAXM];
    for (int m = 0; m < M; m++) {
        a0[m] = a1[m] = vi_zero();
        f0[m] = f1[m] = vf_zero();
    }
    int nblk = K / 64;
    for (int blk = 0; blk < nblk; blk++) {
        if (blk % Q4_FLUSH == 0 && blk) {
            for (int m = 0; m < M; m++) {
                f0[m] = vf_add(f0[m], vf_from_vi(a0[m])); a0[m] = vi_zero();
                f1[m] = vf_add(f1[m], vf_from_vi(a1[m])); a1[m] = vi_zero();
            }
        }
        _mm_prefetch((const char *)(w0 + blk * 64 + PF), _MM_HINT_T1);
        int ga = (blk * 64) >> group_shift, gb = (blk * 64 + 32) >> group_shift;
        /* the two rows' multipliers of a group are adjacent bytes: one 16-bit broadcast load
           serves both (low byte row 2p, high byte row 2p+1) */
        vi ta = vi_set1_16((int16_t)tpair[ga]), tb = vi_set1_16((int16_t)tpair[gb]);
        vi b0 = vi_u8_to_i16(w0 + blk * 64);
        vi b1 = vi_u8_to_i16(w1 + blk * 64);
        vi lo0 = vi_mullo16(vi_and(b0, lo_mask), vi_and(ta, byte_mask));
        vi hi0 = vi_mullo16(vi_srli16(b0, 4), vi_and(tb, byte_mask));
        vi lo1 = vi_mullo16(vi_and(b1, lo_mask), vi_srli16(ta, 8));
        vi hi1 = vi_mullo16(vi_srli16(b1, 4), vi_srli16(tb, 8));
        for (int m = 0; m < M; m++) {
            const int16_t *xr = xq + (int64_t)m * K + blk * 64;
            vi xa = vi_load(xr), xb = vi_load(xr + 32);
            DPWSSD(a0[m], xa, lo0);
            DPWSSD(a0[m], xb, hi0);
            DPWSSD(a1[m], xa, lo1);
            DPWSSD(a1[m], xb, hi1);
        }
    }
    for (int m = 0; m < M; m++) {
        out0[m] = vf_reduce_add(vf_add(f0[m], vf_from_vi(a0[m])));
        out1[m] = vf_reduce_add(vf_add(f1[m], vf_from_vi(a1[m])));
    }
}

/* sum_g offset[g] (int8) * xs[g] over G groups */
INLINE float offset_dot(const int8_t *off, const float *xs, int G) {
    vf acc = vf_zero();
    int g = 0;
    for (; g + 16 <= G; g += 16) acc = vf_fmadd(vf_load_i8(v_tail(16), off + g), vf_load(xs + g), acc);
    float s = vf_reduce_add(acc);
    for (; g < G; g++) s += (float)off[g] * xs[g];
    return s;
}

#define Q4_CASE(MM) case MM: q4_rows(xq + (int64_t)m0 * K, K, tile, tt, group_shift, MM, o0 + m0, o1 + m0); break;

static void q4_gemv(const float *x, int M, int K, const uint8_t *w, const uint8_t *tscale, const float *rscale,
                    const int8_t *offset, const float *oscale, int group, int N, float *y, int ldy, int16_t *xq,
                    float *xsum, int nthreads) { /* y as in fd_q8_gemv */
    float sx[MAXROWS];
    quant_rows(x, M, K, xq, sx);
    int G = K / group, group_shift = 0;
    while ((1 << group_shift) < group) group_shift++; /* group sizes are powers of two */
    for (int m = 0; m < M; m++)
        for (int g = 0; g < G; g++) {
            const float *xg = x + (int64_t)m * K + (int64_t)g * group;
            vf s = vf_zero();
            for (int k = 0; k < group; k += 16) s = vf_add(s, vf_load(xg + k));
            xsum[m * G + g] = vf_reduce_add(s);
        }
    int pairs = (N + 1) / 2;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int p = 0; p < pairs; p++) {
        int n0 = 2 * p, n1 = 2 * p + 1; /* an odd N has a zero padding row at N */
        const uint8_t *tile = w + (int64_t)p * K, *tt = tscale + (int64_t)p * 2 * G;
        float o0[MAXROWS], o1[MAXROWS];
        BLOCKS(Q4_CASE, Q4_BLOCK)
        for (int m = 0; m < M; m++) {
            y[(int64_t)m * ldy + n0] = o0[m] * sx[m] * rscale[n0]
                                     + oscale[n0] * offset_dot(offset + (int64_t)n0 * G, xsum + m * G, G);
            if (n1 < N)
                y[(int64_t)m * ldy + n1] = o1[m] * sx[m] * rscale[n1]
                                         + oscale[n1] * offset_dot(offset + (int64_t)n1 * G, xsum + m * G, G);
        }
    }
}

/* Float weights, two rows per pass, one prefetch scheme (PF bytes ahead into L1, 4 PF into L2):
   float32 by FMA; bfloat16 by AVX512-BF16 dot products (vdpbf16ps) where the build has them,
   else widened to float32 in registers. A bfloat16 is the top half of a float32, so widening is a
   16-bit shift, and the product of two bfloat16 values is exact in float32: the widening builds
   agree bit for bit with each other and with vdpbf16ps (which sums the same exact products with
   its own rounding) to float32 rounding. `kind` is a literal at every call, so each inlined copy
   keeps one of the branches. */
enum { W_F32, W_BF16_WIDE, W_BF16_DOT };
#define W_BYTES(kind) ((kind) == W_F32 ? 4 : 2)
#ifdef __AVX512BF16__
#define DPBF16(acc, x, w) __asm__("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w)) /* as DPWSSD */
#endif

INLINE vf load_f32(const char *p, int kind) { /* 16 weights or activations as float32 */
    return kind == W_F32 ? vf_load((const float *)p) : vf_load_bf16((const uint16_t *)p);
}

INLINE void float_rows(const char *x, int K, const char *w0, const char *w1, int M, float *o0, float *o1,
                       int kind) {
    const int es = W_BYTES(kind), per = kind == W_BF16_DOT ? 32 : 16; /* inputs per iteration */
    vf a[2 * MAXM]; /* a[m]: row m times weight row w0; a[M + m]: times w1 */
    for (int i = 0; i < 2 * M; i++) a[i] = vf_zero();
    for (int k = 0; k < K; k += per) {
        int64_t at = (int64_t)k * es;
        if ((at & 63) == 0) { /* once per cache line */
            _mm_prefetch(w0 + at + PF, _MM_HINT_T0);
            _mm_prefetch(w1 + at + PF, _MM_HINT_T0);
            _mm_prefetch(w0 + at + 4 * PF, _MM_HINT_T1);
            _mm_prefetch(w1 + at + 4 * PF, _MM_HINT_T1);
        }
#ifdef __AVX512BF16__
        if (kind == W_BF16_DOT) {
            __m512bh v0 = (__m512bh)_mm512_loadu_si512((const void *)(w0 + at));
            __m512bh v1 = (__m512bh)_mm512_loadu_si512((const void *)(w1 + at));
            for (int m = 0; m < M; m++) {
                __m512bh xv = (__m512bh)_mm512_loadu_si512((const void *)(x + (int64_t)m * K * es + at));
                DPBF16(a[m], xv, v0);
                DPBF16(a[M + m], xv, v1);
            }
            continue;
        }
#endif
        vf v0 = load_f32(w0 + at, kind), v1 = load_f32(w1 + at, kind);
        for (int m = 0; m < M; m++) {
            /* in a register: GCC otherwise folds the load into both FMAs, two loads where one does */
            vf xv = vf_in_reg(load_f32(x + (int64_t)m * K * es + at, kind));
            a[m] = vf_fmadd(xv, v0, a[m]);
            a[M + m] = vf_fmadd(xv, v1, a[M + m]);
        }
    }
    float out[2 * MAXM];
    int i = 0;
    for (; i + V_REDUCE_GROUP <= 2 * M; i += V_REDUCE_GROUP) vf_reduce_group(a + i, out + i);
    for (; i < 2 * M; i++) out[i] = vf_reduce_add(a[i]);
    for (int m = 0; m < M; m++) { o0[m] = out[m]; o1[m] = out[M + m]; }
}

/* Weight row pairs P0 .. of a float GEMV whose rows run CASE (one per kind below: a macro rather
   than a function, so that OpenMP's outlined loop sees the kind as a constant). An odd N repeats
   its last row. */
#define FLOAT_CASE(MM, KIND) case MM: float_rows(xb + (int64_t)m0 * K * es, K, w0, w1, MM, o0 + m0, o1 + m0, KIND); break;
#define F32_CASE(MM) FLOAT_CASE(MM, W_F32)
#define BF16_WIDE_CASE(MM) FLOAT_CASE(MM, W_BF16_WIDE)
#define BF16_DOT_CASE(MM) FLOAT_CASE(MM, W_BF16_DOT)
#define FLOAT_PAIRS(KIND, CASE, P0) do { \
    const char *xb = (const char *)x, *wb = (const char *)w; \
    const int64_t es = W_BYTES(KIND); \
    int pairs = (N + 1) / 2; \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads)") \
    for (int p = (P0); p < pairs; p++) { \
        int n0 = 2 * p, n1 = 2 * p + 1 < N ? 2 * p + 1 : 2 * p; \
        const char *w0 = wb + (int64_t)n0 * K * es, *w1 = wb + (int64_t)n1 * K * es; \
        float o0[MAXROWS], o1[MAXROWS]; \
        BLOCKS(CASE, F_BLOCK) \
        for (int m = 0; m < M; m++) { y[(int64_t)m * ldy + n0] = o0[m]; y[(int64_t)m * ldy + n1] = o1[m]; } \
    } } while (0)

static void f32_gemv(const float *x, int M, int K, const float *w, int N, float *y, int ldy, int nthreads) {
    FLOAT_PAIRS(W_F32, F32_CASE, 0);
}

static void bf16_gemv(const uint16_t *x, int M, int K, const uint16_t *w, int N, float *y, int ldy, int nthreads) {
#ifdef __AVX512BF16__
    int done = bf16_amx(x, M, K, w, N, y, ldy, nthreads) / 2; /* rows [0, 2 done) */
    FLOAT_PAIRS(W_BF16_DOT, BF16_DOT_CASE, done);
#else
    FLOAT_PAIRS(W_BF16_WIDE, BF16_WIDE_CASE, 0);
#endif
}

/* The entry points take any number of rows, MAXROWS at a time: the weights are read once per
   MAXROWS rows, and a row's arithmetic is the same in every chunk and block, so a batch of 64
   requests (128 rows with CFG) gets, row for row, the bits each request gets alone. y is M rows
   of ldy floats (ldy >= N): a caller can write several projections of one input side by side. */
#define ROW_CHUNKS(CALL) \
    for (int m0 = 0; m0 < M; m0 += MAXROWS) { \
        int mm = M - m0 < MAXROWS ? M - m0 : MAXROWS; \
        CALL; \
    }

void fd_q8_gemv(const float *x, int M, int K, const int8_t *w, const float *scale, int N,
                float *y, int ldy, int16_t *xq, int nthreads) { /* xq: room for M x K */
    ROW_CHUNKS(q8_gemv(x + (int64_t)m0 * K, mm, K, w, scale, N, y + (int64_t)m0 * ldy, ldy, xq + (int64_t)m0 * K,
                       nthreads))
}

void fd_q4_gemv(const float *x, int M, int K, const uint8_t *w, const uint8_t *tscale, const float *rscale,
                const int8_t *offset, const float *oscale, int group, int N, float *y, int ldy, int16_t *xq,
                float *xsum, int nthreads) { /* xq: room for M x K; xsum for M x K / group */
    ROW_CHUNKS(q4_gemv(x + (int64_t)m0 * K, mm, K, w, tscale, rscale, offset, oscale, group, N, y + (int64_t)m0 * ldy,
                       ldy, xq + (int64_t)m0 * K, xsum + (int64_t)m0 * (K / group), nthreads))
}

void fd_f32_gemv(const float *x, int M, int K, const float *w, int N, float *y, int ldy, int nthreads) {
    ROW_CHUNKS(f32_gemv(x + (int64_t)m0 * K, mm, K, w, N, y + (int64_t)m0 * ldy, ldy, nthreads))
}

void fd_bf16_gemv(const uint16_t *x, int M, int K, const uint16_t *w, int N, float *y, int ldy, int nthreads) {
    ROW_CHUNKS(bf16_gemv(x + (int64_t)m0 * K, mm, K, w, N, y + (int64_t)m0 * ldy, ldy, nthreads))
}
