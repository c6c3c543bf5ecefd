/* Codec activations: DAC's Snake in one pass.

   Snake(x) = x + sin(alpha x)^2 / (alpha + 1e-9), alpha one per channel. In torch it is five
   operations over the whole activation (multiply, sin, square, scale, add) with a temporary each;
   on a full-size DAC window that is five trips through tens of megabytes, on the tiny test codec
   five calls' overhead on a few thousand samples. Here it is one read and one write.

   The sine is this file's own, so results agree with torch's to a few ulp, not bit for bit (the
   codec is checked against its reference to float32 rounding). Every build computes the same bits:
   the same operations on every lane, fused multiply-adds written out where they are used. */

#include <stdint.h>
#include <omp.h>

/* sin(x)^2: n = round(x / pi), r = x - n pi in three parts (each fnmadd exact enough for |n| up
   to ~2^12), sin r = r + r^3 P(r^2) on [-pi/2, pi/2] with P fitted for relative error (below 1e-7
   in float32 arithmetic). sin^2 x = sin^2 r whatever n's parity, so the sign is never needed.
   Infinities and NaN give NaN, as sinf does; huge finite x give some value in [0, 1]. */
static inline __attribute__((always_inline)) vf sin2_16(vf x) {
    vf n = vf_round(vf_mul(x, vf_set1(0.318309886183790672f)));
    vf r = vf_fnmadd(n, vf_set1(3.14159274101257324f), x);
    r = vf_fnmadd(n, vf_set1(-8.742277657e-08f), r);
    r = vf_fnmadd(n, vf_set1(-3.430249020e-15f), r);
    vf s = vf_mul(r, r);
    vf p = vf_set1(-2.388906495e-08f);
    p = vf_fmadd(p, s, vf_set1(2.752539331e-06f));
    p = vf_fmadd(p, s, vf_set1(-1.984086848e-04f));
    p = vf_fmadd(p, s, vf_set1(8.333330974e-03f));
    p = vf_fmadd(p, s, vf_set1(-1.666666716e-01f));
    vf sn = vf_fmadd(vf_mul(r, s), p, r);
    /* past |x| ~ 1e7 the reduction loses r and the polynomial runs away: a square of a sine is at
       most 1 (min keeps NaN: it returns its second operand where either is NaN) */
    return vf_min(vf_set1(1.0f), vf_mul(sn, sn));
}

#define SNAKE_PIECE 4096 /* samples a task: rows of one channel and 30k samples still split */

/* x, y: (rows, length) contiguous, row i of channel i % channels; alpha: (channels,). y may be x. */
void fd_snake(const float *x, const float *alpha, int64_t rows, int64_t channels, int64_t length, float *y,
              int nthreads) {
    int64_t pieces = (length + SNAKE_PIECE - 1) / SNAKE_PIECE, tasks = rows * pieces;
    /* below ~64k samples a parallel region costs more than it saves */
    int nt = rows * length < 65536 ? 1 : nthreads;
    #pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t task = 0; task < tasks; task++) {
        int64_t row = task / pieces, start = (task % pieces) * SNAKE_PIECE;
        int64_t stop = start + SNAKE_PIECE < length ? start + SNAKE_PIECE : length;
        float a = alpha[row % channels];
        /* torch: (alpha + 1e-9).reciprocal(), each rounded to float32 */
        float shifted = a + 1e-9f;
        vf va = vf_set1(a), inv = vf_set1(1.0f / shifted);
        const float *xr = x + row * length;
        float *yr = y + row * length;
        int64_t t = start;
        for (; t + 16 <= stop; t += 16) {
            vf v = vf_load(xr + t);
            vf_store(yr + t, vf_add(v, vf_mul(inv, sin2_16(vf_mul(va, v)))));
        }
        if (t < stop) {
            vmask m = v_tail((int)(stop - t));
            vf v = vf_loadz(m, xr + t);
            vf_storem(yr + t, m, vf_add(v, vf_mul(inv, sin2_16(vf_mul(va, v)))));
        }
    }
}

/* A narrow convolution, directly: y[o, t] = bias[o] + sum over c, then j, of w[o, c, j] x[c, t + j d]
   (one fused multiply-add per term, in that order, so every build and every batch computes the
   same bits). For the codecs' narrow, long layers (1-16 channels over tens of thousands of
   samples, or many channels into one): there a matrix product either copies its shifted inputs or
   runs k thin products, and both cost more than the arithmetic.
   x: (ci, t_in) contiguous, already padded; w: (co, ci, k); bias: (co,) or NULL; y: (co, length),
   length = t_in - d (k - 1). Four vectors (64 samples) of one output channel a task. */
#define CONV_BLOCK 64
void fd_conv1d_narrow(const float *x, int64_t ci, int64_t t_in, const float *w, int64_t co, int64_t k, int64_t d,
                      const float *bias, float *y, int nthreads) {
    int64_t length = t_in - d * (k - 1);
    if (length <= 0) return;
    int64_t blocks = (length + CONV_BLOCK - 1) / CONV_BLOCK, tasks = co * blocks;
    int nt = co * ci * k * length < (1 << 20) ? 1 : nthreads;
    #pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t task = 0; task < tasks; task++) {
        int64_t o = task / blocks, t0 = (task % blocks) * CONV_BLOCK;
        int64_t n = length - t0 < CONV_BLOCK ? length - t0 : CONV_BLOCK;
        const float *wo = w + o * ci * k;
        float *yo = y + o * length + t0;
        vf b = vf_set1(bias ? bias[o] : 0.0f);
        if (n == CONV_BLOCK) {
            vf a0 = b, a1 = b, a2 = b, a3 = b;
            for (int64_t c = 0; c < ci; c++) {
                const float *xc = x + c * t_in + t0;
                for (int64_t j = 0; j < k; j++) {
                    vf wj = vf_set1(wo[c * k + j]);
                    const float *p = xc + j * d;
                    a0 = vf_fmadd(wj, vf_load(p), a0);
                    a1 = vf_fmadd(wj, vf_load(p + 16), a1);
                    a2 = vf_fmadd(wj, vf_load(p + 32), a2);
                    a3 = vf_fmadd(wj, vf_load(p + 48), a3);
                }
            }
            vf_store(yo, a0); vf_store(yo + 16, a1); vf_store(yo + 32, a2); vf_store(yo + 48, a3);
        } else {  /* the last, partial block: 16 samples at a time, masked */
            for (int64_t s = 0; s < n; s += 16) {
                vmask m = v_tail((int)(n - s));
                vf a = b;
                for (int64_t c = 0; c < ci; c++) {
                    const float *xc = x + c * t_in + t0 + s;
                    for (int64_t j = 0; j < k; j++)
                        a = vf_fmadd(vf_set1(wo[c * k + j]), vf_loadz(m, xc + j * d), a);
                }
                vf_storem(yo + s, m, a);
            }
        }
    }
}
