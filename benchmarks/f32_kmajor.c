/* A float32 weight layout for batches: would output-major panels beat the dot-product kernel?
   (benchmarks/README.md, "A float32 layout for many rows")

   fastdia's float32 GEMV (csrc/wonly.c) keeps the weight as stored, [out][in], and computes dot
   products: each output is a sum of 16-lane partial sums, reduced across lanes at the end. That
   layout streams the weight well for one or two rows, but at many rows its reductions and its
   register blocking (2 weight rows x 8 activation rows) hold it at 40-57 G multiply-adds/s on a
   Xeon core whose FMA peak is ~110.

   This prototype packs the weight in panels of 16 outputs, [out / 16][in][16], so one vector
   holds 16 outputs and each output is accumulated over `in` in order, one fused multiply-add a
   term, with no reduction at all. A block of R rows x P panels keeps R x P accumulators; every
   block shape sums each output in the same order, so results do not depend on the row count
   (nor on the vector width: an AVX2 version would compute the same bits). Each output's sum runs
   in sequence, so its latency is hidden only by the R x P independent accumulators.

     gcc -O3 -mavx512f -mfma -ffp-contract=off -fopenmp -shared -fPIC benchmarks/f32_kmajor.c -o f32_kmajor.so
     (driven by benchmarks/f32_kmajor.py)
*/
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

/* w: (n, k) row-major -> wp: (n / 16 panels, k, 16); n a multiple of 16 */
void kmajor_pack(const float *w, int64_t n, int64_t k, float *wp) {
    for (int64_t p = 0; p < n / 16; p++)
        for (int64_t j = 0; j < k; j++)
            for (int64_t l = 0; l < 16; l++)
                wp[(p * k + j) * 16 + l] = w[(p * 16 + l) * k + j];
}

/* R rows x P panels a block, R * P <= 24 accumulators */
#define BLOCK(R, P)                                                                             \
    static void block_##R##_##P(const float *x, int64_t k, const float *wp, float *y, int64_t n, \
                                int64_t m0, int64_t p0) {                                       \
        __m512 acc[R][P];                                                                       \
        for (int r = 0; r < R; r++)                                                             \
            for (int q = 0; q < P; q++) acc[r][q] = _mm512_setzero_ps();                        \
        const float *wq = wp + p0 * k * 16;                                                     \
        for (int64_t j = 0; j < k; j++) {                                                       \
            __m512 w[P];                                                                        \
            for (int q = 0; q < P; q++) w[q] = _mm512_loadu_ps(wq + ((int64_t)q * k + j) * 16);  \
            for (int r = 0; r < R; r++) {                                                       \
                __m512 a = _mm512_set1_ps(x[(m0 + r) * k + j]);                                \
                for (int q = 0; q < P; q++) acc[r][q] = _mm512_fmadd_ps(a, w[q], acc[r][q]);     \
            }                                                                                   \
        }                                                                                       \
        for (int r = 0; r < R; r++)                                                             \
            for (int q = 0; q < P; q++) _mm512_storeu_ps(y + (m0 + r) * n + (p0 + q) * 16, acc[r][q]); \
    }
BLOCK(1, 8)
BLOCK(2, 8)
BLOCK(4, 4)
BLOCK(8, 2)
BLOCK(6, 4)

/* y (m, n) = x (m, k) @ w.T, w packed; n a multiple of 128, any m. threads over panel groups. */
void kmajor_gemm(const float *x, int64_t m, int64_t k, const float *wp, int64_t n, float *y, int nthreads) {
    int64_t panels = n / 16;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t g = 0; g < panels / 8; g++) {
        int64_t p0 = g * 8;
        int64_t m0 = 0;
        for (; m0 + 6 <= m; m0 += 6) { block_6_4(x, k, wp, y, n, m0, p0); block_6_4(x, k, wp, y, n, m0, p0 + 4); }
        if (m - m0 >= 4) { block_4_4(x, k, wp, y, n, m0, p0); block_4_4(x, k, wp, y, n, m0, p0 + 4); m0 += 4; }
        if (m - m0 >= 2) { block_2_8(x, k, wp, y, n, m0, p0); m0 += 2; }
        if (m - m0 >= 1) { block_1_8(x, k, wp, y, n, m0, p0); m0 += 1; }
    }
}
