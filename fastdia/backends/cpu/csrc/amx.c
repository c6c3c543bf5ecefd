/* AMX (Sapphire Rapids and later) for the int8 and bfloat16 kernels of wonly.c; switched by
   fastdia/backends/cpu/kernels.py (`amx_status`, `set_amx`, `amx_self_check`).

   AMX multiplies tiles: A (up to 16 rows x 64 bytes) times B (16 rows x 64 bytes, each row
   four consecutive inputs of 16 columns) into C (16 x 16 int32 or float32). One TDPBSSD is
   16 x 16 x 64 multiply-adds, against 32 for one vpdpwssd, so it wins where the multiplies bind:
   blocks of many activation rows (batched decode, prefill). One utterance (2 rows) streams its
   weights from DRAM either way; the int8 kernel keeps it on AVX-512 below AMX_MIN_ROWS rows.

   int8, bitwise the AVX-512 kernel. The AVX-512 kernel multiplies int16 activations by int8
   weights into exact int32 sums. AMX multiplies bytes, so each int16 activation v is split into
   hi = v >> 8 (signed, -64..63 for |v| <= 16383) and lo = v & 255 (unsigned): v = 256 hi + lo,
   TDPBSSD sums hi * w and TDPBSUD lo * w, and 256 * hi-sum + lo-sum is the same int32 sum
   (integer sums are exact and wrap alike), so either path returns the same bits and a request's
   numbers do not depend on the CPU feature that served its batch.
   The weights stay in the AVX-512 layout (fastdia.quant.formats.kernel_layout): a row pair's 32
   inputs are 64 bytes, row 2p's 32 then row 2p+1's, so one A tile row is a pair's chunk and 16
   pairs (32 weight rows) make a tile. B's column 2m holds activation row m's chunk against the
   first 32 bytes (zeros against the second), column 2m + 1 the other way round: C[pair][2m + h]
   is weight row 2 pair + h times activation row m. Half of each B column is zeros, the price of
   not keeping a second copy of the weights in an AMX layout.

   bfloat16: weights [N, K] row-major are A tiles directly (16 rows, 32 inputs); B holds up to 16
   activation rows in pairs of inputs. Rounding differs from vdpbf16ps, so when AMX is on every
   bfloat16 call runs its whole blocks of 16 weight rows on it, whatever the row count (a row's
   numbers still do not depend on the batch); the last N % 16 weight rows stay on AVX-512.

   Every tile operation goes through the T_* macros below, which either run the AMX instruction or
   an emulation of it in C (fd_set_amx(2)): the kernels' tiling, layouts and tails are tested
   bit for bit on CPUs without AMX; only the instructions themselves need the hardware. On
   hardware, kernels.py compares the two paths on first use and turns AMX off if they differ. */
#include <string.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <cpuid.h>

#ifdef V_ISA_AVX512 /* every AMX CPU has AVX-512: the AVX2 variants carry no AMX path (stubs at the end) */

#define AMX_MIN_ROWS 4
#define AMX_PAIRS 16 /* weight row pairs per int8 A tile */
#define AMX_C_TILES 6 /* tiles 2..7 accumulate; A is tile 0, B tile 1 */

static int amx_mode; /* 0: off, 1: the instructions, 2: their emulation */
static int amx_usable; /* fd_amx_probe's answer */
static int amx_kinds = 3; /* bit 0: int8, bit 1: bfloat16 (tests hold one of them off) */

struct tilecfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed, aligned(64)));

/* The emulated tile unit, one per thread: eight 16 x 64-byte tiles. All tiles here are 16 rows
   of 64 bytes, so no shapes are kept. */
static __thread uint8_t emu_tile[8][16][64] __attribute__((aligned(64)));
static long emu_products; /* emulated dot-product instructions so far: tests check what ran */
long fd_amx_emulated(void) { return __atomic_load_n(&emu_products, __ATOMIC_RELAXED); }

static void emu_load(int t, const void *base, long stride) {
    for (int r = 0; r < 16; r++) memcpy(emu_tile[t][r], (const uint8_t *)base + r * stride, 64);
}
static void emu_store(int t, void *base, long stride) {
    for (int r = 0; r < 16; r++) memcpy((uint8_t *)base + r * stride, emu_tile[t][r], 64);
}
/* C[m][n] += sum_k A[m][4k + j] * B[k][4n + j], bytes signed or not (TDPB{S,U}{S,U}D) */
static void emu_dpb(int c, int a, int b, int a_signed, int b_signed) {
    __atomic_fetch_add(&emu_products, 1, __ATOMIC_RELAXED);
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 16; n++) {
            uint32_t acc;
            memcpy(&acc, &emu_tile[c][m][4 * n], 4);
            for (int k = 0; k < 16; k++)
                for (int j = 0; j < 4; j++) {
                    int32_t x = a_signed ? (int8_t)emu_tile[a][m][4 * k + j] : emu_tile[a][m][4 * k + j];
                    int32_t y = b_signed ? (int8_t)emu_tile[b][k][4 * n + j] : emu_tile[b][k][4 * n + j];
                    acc += (uint32_t)(x * y);
                }
            memcpy(&emu_tile[c][m][4 * n], &acc, 4);
        }
}
static float bf16_f32(const uint8_t *p) {
    uint32_t u = (uint32_t)(p[0] | p[1] << 8) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* TDPBF16PS: C[m][n] += A[m][2k] * B[k][2n] + A[m][2k + 1] * B[k][2n + 1] in float32 */
static void emu_dpbf16(int c, int a, int b) {
    __atomic_fetch_add(&emu_products, 1, __ATOMIC_RELAXED);
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 16; n++) {
            float acc;
            memcpy(&acc, &emu_tile[c][m][4 * n], 4);
            for (int k = 0; k < 16; k++) {
                acc += bf16_f32(&emu_tile[a][m][4 * k]) * bf16_f32(&emu_tile[b][k][4 * n]);
                acc += bf16_f32(&emu_tile[a][m][4 * k + 2]) * bf16_f32(&emu_tile[b][k][4 * n + 2]);
            }
            memcpy(&emu_tile[c][m][4 * n], &acc, 4);
        }
}

/* Tile numbers must be literals (they are encoded in the instruction). The memory clobbers keep
   the compiler from moving stores of B tiles or loads of C results across the tile operations. */
#define T_LOAD(emu, t, base, stride) do { if (emu) emu_load(t, base, stride); else \
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t :: "r"((const void *)(base)), "r"((long)(stride)) : "memory"); } while (0)
#define T_STORE(emu, t, base, stride) do { if (emu) emu_store(t, base, stride); else \
    __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" :: "r"((void *)(base)), "r"((long)(stride)) : "memory"); } while (0)
#define T_ZERO(emu, t) do { if (emu) memset(emu_tile[t], 0, 1024); else __asm__ volatile("tilezero %%tmm" #t ::: "memory"); } while (0)
#define T_DPBSSD(emu, c, a, b) do { if (emu) emu_dpb(c, a, b, 1, 1); else \
    __asm__ volatile("tdpbssd %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::: "memory"); } while (0)
#define T_DPBSUD(emu, c, a, b) do { if (emu) emu_dpb(c, a, b, 1, 0); else \
    __asm__ volatile("tdpbsud %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::: "memory"); } while (0)
#define T_DPBF16PS(emu, c, a, b) do { if (emu) emu_dpbf16(c, a, b); else \
    __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::: "memory"); } while (0)

/* Every tile 16 rows of 64 bytes (palette 1). Tile state is per thread: each thread of a
   parallel region configures its own and releases it (so the kernel saves no 8 KB tile state
   on context switches after the call). */
static void tiles_begin(int emu) {
    if (emu) return;
    struct tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) { cfg.colsb[t] = 64; cfg.rows[t] = 16; }
    __asm__ volatile("ldtilecfg %0" :: "m"(cfg) : "memory");
}
static void tiles_end(int emu) {
    if (!emu) __asm__ volatile("tilerelease" ::: "memory");
}

/* The calling thread's scratch for B tiles (a grown, 64-byte aligned buffer): B depends on the
   call's activations and is read by every thread of the call. */
static __thread uint8_t *b_buf;
static __thread size_t b_cap;
static uint8_t *b_scratch(size_t bytes) {
    if (bytes > b_cap) {
        free(b_buf);
        b_cap = 0;
        if (posix_memalign((void **)&b_buf, 64, bytes)) { b_buf = NULL; return NULL; }
        b_cap = bytes;
    }
    return b_buf;
}

/* Bits 0/1: AMX int8 / bfloat16 usable here: the CPU has them, the OS saves tile state (XCR0
   bits 17-18) and grants this process the tile data (Linux's ARCH_REQ_XCOMP_PERM, 5.16 on; it
   refuses a process whose alternate signal stack is too small for the tiles). 0: no AMX in the
   CPU; -1: the OS does not enable tile state; -2: the OS refused the permission. */
int fd_amx_probe(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    int tile = d >> 24 & 1, i8 = d >> 25 & 1, bf = d >> 22 & 1;
    if (!tile) return 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c >> 27 & 1)) return -1; /* OSXSAVE: xgetbv is there */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return -1;
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */)) return -2;
    return amx_usable = i8 | bf << 1;
}

/* 0 off, 1 the AMX instructions, 2 their emulation (tests), for the kinds in the mask (bit 0
   int8, bit 1 bfloat16; -1 keeps them). Returns the mode now in force. 1 is refused (it would be
   an illegal instruction) unless fd_amx_probe found both int8 and bfloat16; a refused or unknown
   mode (-1: a query) changes nothing. */
int fd_set_amx(int mode, int kinds) {
    if (mode == 0 || mode == 2 || (mode == 1 && amx_usable == 3)) {
        amx_mode = mode;
        if (kinds >= 0) amx_kinds = kinds & 3;
    }
    return amx_mode;
}

/* ---- int8 ---- */

/* B tiles of one call: for each block of 8 activation rows and each chunk of 32 inputs, hi then
   lo, 1 KB each (layout in the comment at the top). Row m's 32 values are 8 dwords of 4 bytes
   per tile; each goes to one row of column 2m (zeros below) and of column 2m + 1 (zeros above),
   so every cell of a present row's columns is written and only absent rows' columns are zeroed.
   Vectorised: this runs once per call for every row (64 rows x K in a prefill block). */
static inline void put_dwords(uint8_t *tile, int col, const uint8_t *bytes) {
    const uint32_t zero = 0;
    for (int r = 0; r < 8; r++) {
        memcpy(tile + r * 64 + 8 * col, bytes + 4 * r, 4);
        memcpy(tile + (8 + r) * 64 + 8 * col, &zero, 4);
        memcpy(tile + r * 64 + 8 * col + 4, &zero, 4);
        memcpy(tile + (8 + r) * 64 + 8 * col + 4, bytes + 4 * r, 4);
    }
}
static void q8_amx_b(const int16_t *xq, int M, int K, uint8_t *bt) {
    int chunks = K / 32, blocks = (M + 7) / 8;
    for (int m = M; m < 8 * blocks; m++) /* absent rows of the last block */
        for (int c = 0; c < chunks; c++)
            for (int part = 0; part < 2; part++) {
                uint8_t *t = bt + ((size_t)(m / 8) * chunks + c) * 2048 + part * 1024;
                for (int r = 0; r < 16; r++) memset(t + r * 64 + 8 * (m % 8), 0, 8);
            }
    for (int m = 0; m < M; m++)
        for (int c = 0; c < chunks; c++) {
            uint8_t *hi = bt + ((size_t)(m / 8) * chunks + c) * 2048, *lo = hi + 1024;
            __m512i v = _mm512_loadu_si512((const void *)(xq + (int64_t)m * K + 32 * c));
            uint8_t hb[32], lb[32];
            _mm256_storeu_si256((__m256i *)hb, _mm512_cvtepi16_epi8(_mm512_srai_epi16(v, 8)));
            _mm256_storeu_si256((__m256i *)lb, _mm512_cvtepi16_epi8(v)); /* truncation: the low byte */
            put_dwords(hi, m % 8, hb);
            put_dwords(lo, m % 8, lb);
        }
}

/* A tile of 16 pairs from p0 at chunk c: where the layout puts them 2K bytes apart it is read in
   place; grouped layouts (four pairs chunk-major, wonly.c "Long int8 rows") are gathered first. */
static const int8_t *q8_amx_a(const int8_t *w, int K, int p0, int c, int is_grouped, int8_t *gather, long *stride) {
    if (!is_grouped) { *stride = 2L * K; return w + (int64_t)p0 * 2 * K + 64 * c; }
    int k0 = 32 * c / GROUP_CHUNK * GROUP_CHUNK;
    for (int i = 0; i < AMX_PAIRS; i++) {
        int p = p0 + i, g = p / GROUP_PAIRS, q = p % GROUP_PAIRS;
        const int8_t *gw = w + (int64_t)g * GROUP_PAIRS * 2 * K;
        memcpy(gather + 64 * i, gw + ((int64_t)k0 * GROUP_PAIRS + (int64_t)q * GROUP_CHUNK) * 2 + 2 * (32 * c - k0), 64);
    }
    *stride = 64;
    return gather;
}

#define Q8_DP(C_HI, C_LO) do { \
        T_LOAD(emu, 1, b, 64); T_DPBSSD(emu, C_HI, 0, 1); \
        T_LOAD(emu, 1, b + 1024, 64); T_DPBSUD(emu, C_LO, 0, 1); } while (0)

/* Pairs [0, 16 * (pairs / 16)) of fd_q8_gemv on AMX; returns how many pairs it did (the caller
   runs the rest on AVX-512). xq and sx as quant_rows left them. */
static int q8_amx(const int16_t *xq, const float *sx, int M, int K, const int8_t *w, const float *scale, int N,
                  float *y, int ldy, int nthreads) {
    int pairs = (N + 1) / 2, blocks = pairs / AMX_PAIRS, chunks = K / 32, rbs = (M + 7) / 8;
    if (!amx_mode || !(amx_kinds & 1) || M < AMX_MIN_ROWS || blocks == 0 || K % 32) return 0;
    uint8_t *bt = b_scratch((size_t)rbs * chunks * 2048);
    if (!bt) return 0;
    q8_amx_b(xq, M, K, bt);
    int emu = amx_mode == 2, is_grouped = grouped(K);
    #pragma omp parallel num_threads(nthreads)
    {
        int8_t gather[AMX_PAIRS * 64] __attribute__((aligned(64)));
        int32_t ch[16][16], cl[16][16];
        tiles_begin(emu);
        #pragma omp for schedule(static)
        for (int blk = 0; blk < blocks; blk++) {
            int p0 = blk * AMX_PAIRS;
            for (int r0 = 0; r0 < rbs; r0 += AMX_C_TILES / 2) { /* up to 3 blocks of 8 rows at a time */
                int nrb = rbs - r0 < AMX_C_TILES / 2 ? rbs - r0 : AMX_C_TILES / 2;
                T_ZERO(emu, 2); T_ZERO(emu, 3); T_ZERO(emu, 4); T_ZERO(emu, 5); T_ZERO(emu, 6); T_ZERO(emu, 7);
                for (int c = 0; c < chunks; c++) {
                    long stride;
                    const int8_t *a = q8_amx_a(w, K, p0, c, is_grouped, gather, &stride);
                    T_LOAD(emu, 0, a, stride);
                    const uint8_t *b = bt + ((size_t)r0 * chunks + c) * 2048;
                    Q8_DP(2, 3);
                    if (nrb > 1) { b += (size_t)chunks * 2048; Q8_DP(4, 5); }
                    if (nrb > 2) { b += (size_t)chunks * 2048; Q8_DP(6, 7); }
                }
                for (int rb = 0; rb < nrb; rb++) {
                    switch (rb) {
                        case 0: T_STORE(emu, 2, ch, 64); T_STORE(emu, 3, cl, 64); break;
                        case 1: T_STORE(emu, 4, ch, 64); T_STORE(emu, 5, cl, 64); break;
                        default: T_STORE(emu, 6, ch, 64); T_STORE(emu, 7, cl, 64); break;
                    }
                    for (int mi = 0; mi < 8; mi++) {
                        int m = 8 * (r0 + rb) + mi;
                        if (m >= M) break;
                        for (int i = 0; i < AMX_PAIRS; i++)
                            for (int h = 0; h < 2; h++) {
                                int n = 2 * (p0 + i) + h;
                                if (n >= N) continue;
                                /* unsigned arithmetic: the int32 wrap of the AVX-512 sums, without C's signed overflow */
                                int32_t s = (int32_t)((uint32_t)ch[i][2 * mi + h] * 256u + (uint32_t)cl[i][2 * mi + h]);
                                y[(int64_t)m * ldy + n] = (float)s * sx[m] * scale[n];
                            }
                    }
                }
            }
        }
        tiles_end(emu);
    }
    return blocks * AMX_PAIRS;
}

/* ---- bfloat16 ---- */
#ifdef __AVX512BF16__
/* B tiles: for each block of 16 activation rows and each chunk of 32 inputs, row r holds inputs
   2r, 2r + 1 of the 16 rows side by side (one dword each); absent rows' columns are zeroed. */
static void bf16_amx_b(const uint16_t *x, int M, int K, uint16_t *bt) {
    int chunks = K / 32, blocks = (M + 15) / 16;
    for (int m = 0; m < 16 * blocks; m++)
        for (int c = 0; c < chunks; c++) {
            uint8_t *t = (uint8_t *)(bt + ((size_t)(m / 16) * chunks + c) * 512) + 4 * (m % 16);
            const uint8_t *v = (const uint8_t *)(x + (int64_t)m * K + 32 * c);
            for (int r = 0; r < 16; r++) {
                if (m < M) memcpy(t + r * 64, v + 4 * r, 4);
                else memset(t + r * 64, 0, 4);
            }
        }
}

/* Weight rows [0, 16 * (N / 16)) of fd_bf16_gemv on AMX; returns how many it did. */
static int bf16_amx(const uint16_t *x, int M, int K, const uint16_t *w, int N, float *y, int ldy, int nthreads) {
    int blocks = N / 16, chunks = K / 32, rbs = (M + 15) / 16;
    if (!amx_mode || !(amx_kinds & 2) || blocks == 0 || K % 32 || rbs > AMX_C_TILES) return 0;
    uint16_t *bt = (uint16_t *)b_scratch((size_t)rbs * chunks * 1024);
    if (!bt) return 0;
    bf16_amx_b(x, M, K, bt);
    int emu = amx_mode == 2;
    #pragma omp parallel num_threads(nthreads)
    {
        float cf[16][16];
        tiles_begin(emu);
        #pragma omp for schedule(static)
        for (int blk = 0; blk < blocks; blk++) {
            int n0 = 16 * blk;
            T_ZERO(emu, 2); T_ZERO(emu, 3); T_ZERO(emu, 4); T_ZERO(emu, 5); T_ZERO(emu, 6); T_ZERO(emu, 7);
            for (int c = 0; c < chunks; c++) {
                T_LOAD(emu, 0, w + (int64_t)n0 * K + 32 * c, 2L * K);
                for (int rb = 0; rb < rbs; rb++) {
                    T_LOAD(emu, 1, bt + ((size_t)rb * chunks + c) * 512, 64);
                    switch (rb) {
                        case 0: T_DPBF16PS(emu, 2, 0, 1); break;
                        case 1: T_DPBF16PS(emu, 3, 0, 1); break;
                        case 2: T_DPBF16PS(emu, 4, 0, 1); break;
                        case 3: T_DPBF16PS(emu, 5, 0, 1); break;
                        case 4: T_DPBF16PS(emu, 6, 0, 1); break;
                        default: T_DPBF16PS(emu, 7, 0, 1); break;
                    }
                }
            }
            for (int rb = 0; rb < rbs; rb++) {
                switch (rb) {
                    case 0: T_STORE(emu, 2, cf, 64); break;
                    case 1: T_STORE(emu, 3, cf, 64); break;
                    case 2: T_STORE(emu, 4, cf, 64); break;
                    case 3: T_STORE(emu, 5, cf, 64); break;
                    case 4: T_STORE(emu, 6, cf, 64); break;
                    default: T_STORE(emu, 7, cf, 64); break;
                }
                for (int mi = 0; mi < 16 && 16 * rb + mi < M; mi++)
                    for (int i = 0; i < 16; i++) y[(int64_t)(16 * rb + mi) * ldy + n0 + i] = cf[i][mi];
            }
        }
        tiles_end(emu);
    }
    return 16 * blocks;
}
#endif

#else
long fd_amx_emulated(void) { return 0; }
int fd_amx_probe(void) { return 0; }
int fd_set_amx(int mode, int kinds) { (void)mode; (void)kinds; return 0; } /* always off */
static int q8_amx(const int16_t *xq, const float *sx, int M, int K, const int8_t *w, const float *scale, int N,
                  float *y, int ldy, int nthreads) {
    (void)xq; (void)sx; (void)M; (void)K; (void)w; (void)scale; (void)N; (void)y; (void)ldy; (void)nthreads;
    return 0;
}
#endif
