/* A prepared layer plan run by one C call (fastdia.backends.cpu.layer_plan.Program).

   A plan is ~9 kernel calls per layer: ~37 per Dia2 depformer stage, ~1,100 per 2B step. Made
   one by one through ctypes, each cost ~0.5 us of argument conversion on top of the kernel
   (measured on 2 Zen 4 cores; more for calls of many arguments), ~0.6 ms per step. Here the calls are a table of fixed-size records, built
   once per plan: the kernel's id, then its arguments as 64-bit words in their order (pointers and
   ints as integers, a float's value as a double's bits). The same functions run with the same
   arguments in the same order, so results are bitwise those of the calls made from Python. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PROGRAM_WORDS 16 /* per call: the id and up to 15 arguments */

enum { OP_Q8 = 1, OP_Q4, OP_ADD_RMSNORM, OP_QK_NORM, OP_SELF_ATTN, OP_SILU_MUL, OP_CROSS_ATTN, OP_ROPE, OP_F32 };

/* The kernels are those of wonly.c and decode.c, which come first in the one compilation unit
   (fastdia.backends.cpu.kernel_build.SOURCES). */

static inline float as_float(int64_t word) {
    double d;
    memcpy(&d, &word, sizeof d);
    return (float)d;
}

#define P(i) ((void *)(intptr_t)a[i])
#define I(i) ((int)a[i])

/* Runs `n` calls of `program` (n x PROGRAM_WORDS words). Returns 0, or the index + 1 of the
   first call with an unknown id (nothing of it or after it runs). */
int fd_run_program(const int64_t *program, int n) {
    for (int c = 0; c < n; c++) {
        const int64_t *a = program + (int64_t)c * PROGRAM_WORDS + 1;
        switch (program[(int64_t)c * PROGRAM_WORDS]) {
        case OP_Q8:
            fd_q8_gemv(P(0), I(1), I(2), P(3), P(4), I(5), P(6), I(7), P(8), I(9));
            break;
        case OP_Q4:
            fd_q4_gemv(P(0), I(1), I(2), P(3), P(4), P(5), P(6), P(7), I(8), I(9), P(10), I(11), P(12), P(13), I(14));
            break;
        case OP_ADD_RMSNORM:
            fd_add_rmsnorm(P(0), P(1), P(2), as_float(a[3]), I(4), I(5), P(6));
            break;
        case OP_QK_NORM:
            fd_qk_norm(P(0), P(1), P(2), as_float(a[3]), I(4), I(5), I(6), I(7));
            break;
        case OP_SELF_ATTN:
            fd_self_attn(P(0), P(1), P(2), P(3), P(4), P(5), I(6), I(7), I(8), I(9), I(10), P(11), P(12), P(13), I(14));
            break;
        case OP_SILU_MUL:
            fd_silu_mul(P(0), I(1), I(2), P(3));
            break;
        case OP_CROSS_ATTN:
            fd_cross_attn(P(0), P(1), P(2), I(3), P(4), I(5), I(6), I(7), I(8), I(9), P(10), P(11), P(12), I(13));
            break;
        case OP_ROPE:
            fd_rope(P(0), P(1), P(2), I(3), I(4), I(5));
            break;
        case OP_F32:
            fd_f32_gemv(P(0), I(1), I(2), P(3), I(4), P(5), I(6), I(7));
            break;
        default:
            return c + 1;
        }
    }
    return 0;
}

#undef P
#undef I

/* Stages first .. first + S - 1 of a Dia2 depformer frame in one call (FusedDia2.frame): per stage
   s, the input x = base[s] + the stage's embedding of each row's token (fd_embed_add), the stage's
   prepared program (layers, final norm, head into logits[s], rows of ld floats), then one draw
   per drawing script from its two rows (cond, uncond) with the uniform u[j * S + s], or its
   greedy pick at temperature 0 (fd_cfg_greedy, torch's argmax bit for bit; u unused): the
   script's token for the next stage, written to both its rows and to out[j * S + s]. Rows of
   scripts that do not draw keep their tokens. Per stage the Python loop made ~40 ctypes calls
   and ~20 small tensor operations around them: ~3 ms of Python per 2B int8 step, and in paired
   A/B rounds the whole step took 6-12 ms longer (benchmarks/dia2_ab.py; 2 Zen 4 cores).
   Returns 0, -1 for a token outside the embedding tables, -2 for a bad program, -3 out of memory. */
int fd_depformer_frame(int S, int rows, int D, int vocab, int V, const int64_t *programs, const int *ncalls,
                       float *x, const int64_t *base, const int64_t *qptr, const int64_t *sptr,
                       const int64_t *logits, int ld, int ndraw, const int *draw_rows, const float *scale,
                       const int *cfg_k, const float *temperature, const int *top_k, const double *u, int64_t *ids,
                       int64_t *out) {
    float *pair = malloc(sizeof(float) * 2 * (size_t)V);
    if (!pair) return -3;
    int status = 0;
    for (int s = 0; s < S && !status; s++) {
        if (fd_embed_add(x, (const float *)(intptr_t)base[s], 1, qptr + s, sptr + s, ids, 1, rows, D, vocab)) {
            status = -1;
            break;
        }
        if (fd_run_program((const int64_t *)(intptr_t)programs[s], ncalls[s])) {
            status = -2;
            break;
        }
        const float *lg = (const float *)(intptr_t)logits[s];
        for (int j = 0; j < ndraw; j++) {
            int r = draw_rows[j];
            memcpy(pair, lg + (int64_t)r * ld, sizeof(float) * V);
            memcpy(pair + V, lg + (int64_t)(r + 1) * ld, sizeof(float) * V);
            int token = temperature[j] > 0.0f
                ? fd_cfg_draw(pair, V, scale[j], cfg_k[j], temperature[j], top_k[j], u[(int64_t)j * S + s])
                : fd_cfg_greedy(pair, V, scale[j], cfg_k[j]);
            if (token < 0) {
                status = -3;
                break;
            }
            out[(int64_t)j * S + s] = token;
            ids[r] = ids[r + 1] = token;
        }
    }
    free(pair);
    return status;
}
