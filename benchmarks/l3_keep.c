/* Can a part of the depformer's per-stage weights be kept in L3 while the rest streams past?
   (benchmarks/README.md, "Can the depformer live in L3?")

   Each round reads a "keep" buffer K, then a "stream" buffer S, on 2 threads as the kernels do
   (64 KB chunks, software prefetch 8 KB ahead). K is always read with a T1 prefetch (as the int8
   kernels do); S with the hint given:
     0 no software prefetch      1 T1 (the kernels' hint)      2 NTA (non-temporal)
     4 T1, and each line flushed (clflushopt) 4 KB after it is read, so S cannot stay anywhere.
   If K's lines survived S, K would read at the cache's rate (its rate with S = 0). The second
   mode re-reads K after an idle spin instead of S: how long the L3 holds data on its own.

     gcc -O2 -mavx512f -mclflushopt -fopenmp benchmarks/l3_keep.c -o ./l3_keep
     ./l3_keep stream KEEP_MB STREAM_MB HINT     e.g. 16 40 2
     ./l3_keep idle KEEP_MB GAP_MS               e.g. 8 2
*/
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PF 8192
#define CHUNK 65536
#define ROUNDS 16

static volatile long long sink; /* keeps the reads from being optimised away */

static void read_buffer(const char *p, size_t n, int hint) {
    long long total = 0;
    #pragma omp parallel for schedule(static) reduction(+ : total) num_threads(2)
    for (long c = 0; c < (long)(n / CHUNK); c++) {
        const char *b = p + (size_t)c * CHUNK;
        __m512i acc = _mm512_setzero_si512();
        for (int i = 0; i < CHUNK; i += 64) {
            if (hint == 1 || hint == 4) _mm_prefetch(b + i + PF, _MM_HINT_T1);
            else if (hint == 2) _mm_prefetch(b + i + PF, _MM_HINT_NTA);
            acc = _mm512_add_epi32(acc, _mm512_load_si512((const void *)(b + i)));
            if (hint == 4 && i >= 4096) _mm_clflushopt((void *)(b + i - 4096));
        }
        total += _mm512_reduce_add_epi32(acc);
    }
    sink += total;
}

static char *buffer(size_t n) {
    char *p = aligned_alloc(4096, n < CHUNK ? CHUNK : n);
    memset(p, 1, n < CHUNK ? CHUNK : n);
    return p;
}

int main(int argc, char **argv) {
    if (argc == 5 && !strcmp(argv[1], "stream")) {
        size_t k = (size_t)(atof(argv[2]) * (1 << 20)), s = (size_t)(atof(argv[3]) * (1 << 20));
        int hint = atoi(argv[4]);
        char *K = buffer(k), *S = buffer(s);
        double tk = 0, ts = 0;
        for (int r = 0; r < ROUNDS + 2; r++) {
            double t0 = omp_get_wtime();
            read_buffer(K, k, 1);
            double t1 = omp_get_wtime();
            read_buffer(S, s, hint);
            double t2 = omp_get_wtime();
            if (r >= 2) { tk += t1 - t0; ts += t2 - t1; }
        }
        printf("keep %.0f MB: %.1f GB/s; stream %.0f MB (hint %d): %.1f GB/s\n", k / 1048576., k / (tk / ROUNDS) / 1e9,
               s / 1048576., hint, s ? s / (ts / ROUNDS) / 1e9 : 0.0);
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "idle")) {
        size_t k = (size_t)(atof(argv[2]) * (1 << 20));
        double gap = atof(argv[3]) * 1e-3, tk = 0;
        char *K = buffer(k);
        for (int r = 0; r < ROUNDS + 2; r++) {
            double t0 = omp_get_wtime();
            read_buffer(K, k, 1);
            double t1 = omp_get_wtime();
            if (r >= 2) tk += t1 - t0;
            while (omp_get_wtime() - t1 < gap) {
            }
        }
        printf("keep %.0f MB re-read after %.1f ms idle: %.1f GB/s\n", k / 1048576., gap * 1e3, k / (tk / ROUNDS) / 1e9);
        return 0;
    }
    fprintf(stderr, "usage: %s stream KEEP_MB STREAM_MB HINT | idle KEEP_MB GAP_MS\n", argv[0]);
    return 2;
}
