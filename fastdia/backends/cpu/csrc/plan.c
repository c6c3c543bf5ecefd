/* A prepared layer plan run by one C call (fastdia.backends.cpu.layer_plan.Program).

   A plan is ~9 kernel calls per layer: ~37 per Dia2 depformer stage, ~1,100 per 2B step. Made
   one by one through ctypes, each cost ~1-1.5 us of argument conversion on top of the kernel
   (2 Zen 4 cores), ~1.5 ms per step. Here the calls are a table of fixed-size records, built
   once per plan: the kernel's id, then its arguments as 64-bit words in their order (pointers and
   ints as integers, a float's value as a double's bits). The same functions run with the same
   arguments in the same order, so results are bitwise those of the calls made from Python. */
#include <stdint.h>
#include <string.h>

#define PROGRAM_WORDS 16 /* per call: the id and up to 15 arguments */

enum { OP_Q8 = 1, OP_Q4, OP_ADD_RMSNORM, OP_QK_NORM, OP_SELF_ATTN, OP_SILU_MUL, OP_CROSS_ATTN, OP_ROPE };

/* The kernels are those of wonly.c and decode.c, which come first in the one compilation unit
   (fastdia.backends.cpu.kernels._SOURCES). */

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
        default:
            return c + 1;
        }
    }
    return 0;
}

#undef P
#undef I
