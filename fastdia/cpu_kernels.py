"""Weight-only int8 / int4 matrix-vector kernels for x86 CPUs with AVX-512 VNNI (C, built on first use).

Why our own: decoding multiplies 2 rows (one utterance with CFG) by every weight, so each matmul
is bound by how fast weights stream from memory; torch's weight-only CPU kernels convert every
weight to float before multiplying and top out near 12 GB/s of int8 on 2 cores (see
benchmarks/README.md), a third of the memory bandwidth. Here the activations (at most a few
rows) are quantized per row to 15-bit integers (relative error ~1e-4, far below bfloat16's), and
`vpdpwssd` multiplies 32 int16 pairs per instruction straight against the sign/zero-extended
weights, accumulating exactly in int32; scales are applied per output row (int8) or per group
(int4) in float32.

Weight formats:
  * int8: `[N, K]` int8, float32 scale per row.
  * int4: `[N, K/2]` uint8 in blocks of 64 inputs: byte j of block b holds input 64b + j in its
    low nibble and input 64b + 32 + j in its high nibble (so one shift/mask unpacks 32 inputs in
    order); float32 scale and `zero - 8 * scale` per (row, group), groups a multiple of 32.

The library is compiled with the system C compiler into a per-user cache directory and loaded
with ctypes; threads come from the OpenMP runtime torch already loaded (same soname), so the
kernels share torch's thread pool and `torch.set_num_threads`. Without a compiler or without
VNNI, `available()` is False and fastdia.quant falls back to torch's kernels.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

MAX_ROWS = 8  # beyond this many activation rows the caller uses a dense fallback

_SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>
#include <math.h>
#include <omp.h>

#define MAXM 8
#ifndef PF
#define PF 4096
#endif

/* Per-row symmetric quantization of x (M x K float) to int16 in [-16383, 16383]:
   15 bits keep the int32 accumulators of K <= 16384 products safe from overflow. */
static void quant_rows(const float *x, int M, int K, int16_t *xq, float *sx) {
    for (int m = 0; m < M; m++) {
        const float *r = x + (int64_t)m * K;
        float amax = 0.f;
        for (int k = 0; k < K; k++) { float a = fabsf(r[k]); amax = a > amax ? a : amax; }
        float s = amax > 0.f ? amax / 16383.f : 1.f;
        float inv = 1.f / s;
        sx[m] = s;
        int16_t *q = xq + (int64_t)m * K;
        for (int k = 0; k < K; k++) q[k] = (int16_t)lrintf(r[k] * inv);
    }
}

#define INLINE static inline __attribute__((always_inline))

/* Two weight rows at a time share every activation load; M (rows of x) is a compile-time
   constant in each specialisation so the accumulators live in registers. */
INLINE void q8_rows(const int16_t *xq, int K, const int8_t *w0, const int8_t *w1, int M,
                    int32_t *out0, int32_t *out1) {
    __m512i a0[MAXM], a1[MAXM];
    for (int m = 0; m < M; m++) { a0[m] = _mm512_setzero_si512(); a1[m] = _mm512_setzero_si512(); }
    for (int k = 0; k < K; k += 32) {
        if ((k & 63) == 0) {
            /* PF bytes ahead into L1 and 4 PF into L2: without enough loads in flight a core streams
               DRAM at half the bandwidth (measured: ~15 -> 21-30 GB/s on 2 cores) */
            _mm_prefetch((const char *)(w0 + k + PF), _MM_HINT_T0);
            _mm_prefetch((const char *)(w1 + k + PF), _MM_HINT_T0);
            _mm_prefetch((const char *)(w0 + k + 4 * PF), _MM_HINT_T1);
            _mm_prefetch((const char *)(w1 + k + 4 * PF), _MM_HINT_T1);
        }
        __m512i v0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(w0 + k)));
        __m512i v1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(w1 + k)));
        for (int m = 0; m < M; m++) {
            __m512i xv = _mm512_loadu_si512((const void *)(xq + (int64_t)m * K + k));
            a0[m] = _mm512_dpwssd_epi32(a0[m], xv, v0);
            a1[m] = _mm512_dpwssd_epi32(a1[m], xv, v1);
        }
    }
    for (int m = 0; m < M; m++) { out0[m] = _mm512_reduce_add_epi32(a0[m]); out1[m] = _mm512_reduce_add_epi32(a1[m]); }
}

#define Q8_CASE(MM) case MM: q8_rows(xq, K, w0, w1, MM, o0, o1); break;

void fd_q8_gemv(const float *x, int M, int K, const int8_t *w, const float *scale, int N,
                float *y, int16_t *xq, int nthreads) {
    float sx[MAXM];
    quant_rows(x, M, K, xq, sx);
    int pairs = (N + 1) / 2;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int p = 0; p < pairs; p++) {
        int n0 = 2 * p, n1 = 2 * p + 1 < N ? 2 * p + 1 : 2 * p;
        const int8_t *w0 = w + (int64_t)n0 * K, *w1 = w + (int64_t)n1 * K;
        int32_t o0[MAXM], o1[MAXM];
        switch (M) { Q8_CASE(1) Q8_CASE(2) Q8_CASE(3) Q8_CASE(4) Q8_CASE(5) Q8_CASE(6) Q8_CASE(7) Q8_CASE(8) }
        for (int m = 0; m < M; m++) {
            y[(int64_t)m * N + n0] = (float)o0[m] * sx[m] * scale[n0];
            y[(int64_t)m * N + n1] = (float)o1[m] * sx[m] * scale[n1];
        }
    }
}

/* One int4 weight row: blocks of 64 inputs, 32 bytes each (low nibbles = first 32 inputs). */
INLINE void q4_row(const int16_t *xq, int K, const uint8_t *wr, const float *sr, int group, int M,
                   float *out) {
    const __m512i lo_mask = _mm512_set1_epi16(0x0F);
    __m512 accf[MAXM];
    __m512i acc[MAXM];
    for (int m = 0; m < M; m++) { accf[m] = _mm512_setzero_ps(); acc[m] = _mm512_setzero_si512(); }
    if (group == 32) {
        for (int b = 0; b < K; b += 64) {
            if ((b & 127) == 0) { _mm_prefetch((const char *)(wr + b / 2 + PF), _MM_HINT_T0); _mm_prefetch((const char *)(wr + b / 2 + 4 * PF), _MM_HINT_T1); }
            __m512i bytes = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(wr + b / 2)));
            __m512i lo = _mm512_and_si512(bytes, lo_mask), hi = _mm512_srli_epi16(bytes, 4);
            __m512 s0 = _mm512_set1_ps(sr[b / 32]), s1 = _mm512_set1_ps(sr[b / 32 + 1]);
            for (int m = 0; m < M; m++) {
                const int16_t *xr = xq + (int64_t)m * K + b;
                __m512i p0 = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_loadu_si512((const void *)xr), lo);
                __m512i p1 = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_loadu_si512((const void *)(xr + 32)), hi);
                accf[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), s0, accf[m]);
                accf[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), s1, accf[m]);
            }
        }
    } else {
        for (int g0 = 0; g0 < K; g0 += group) {
            for (int b = g0; b < g0 + group; b += 64) {
                if ((b & 127) == 0) { _mm_prefetch((const char *)(wr + b / 2 + PF), _MM_HINT_T0); _mm_prefetch((const char *)(wr + b / 2 + 4 * PF), _MM_HINT_T1); }
                __m512i bytes = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(wr + b / 2)));
                __m512i lo = _mm512_and_si512(bytes, lo_mask), hi = _mm512_srli_epi16(bytes, 4);
                for (int m = 0; m < M; m++) {
                    const int16_t *xr = xq + (int64_t)m * K + b;
                    acc[m] = _mm512_dpwssd_epi32(acc[m], _mm512_loadu_si512((const void *)xr), lo);
                    acc[m] = _mm512_dpwssd_epi32(acc[m], _mm512_loadu_si512((const void *)(xr + 32)), hi);
                }
            }
            __m512 s = _mm512_set1_ps(sr[g0 / group]);
            for (int m = 0; m < M; m++) {
                accf[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[m]), s, accf[m]);
                acc[m] = _mm512_setzero_si512();
            }
        }
    }
    for (int m = 0; m < M; m++) out[m] = _mm512_reduce_add_ps(accf[m]);
}

#define Q4_CASE(MM) case MM: q4_row(xq, K, wr, sr, group, MM, o); break;

void fd_q4_gemv(const float *x, int M, int K, const uint8_t *w, const float *scale, const float *offset,
                int group, int N, float *y, int16_t *xq, float *xsum, int nthreads) {
    float sx[MAXM];
    quant_rows(x, M, K, xq, sx);
    int G = K / group;
    for (int m = 0; m < M; m++)
        for (int g = 0; g < G; g++) {
            float s = 0.f;
            for (int k = g * group; k < (g + 1) * group; k++) s += x[(int64_t)m * K + k];
            xsum[m * G + g] = s;
        }
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int n = 0; n < N; n++) {
        const uint8_t *wr = w + (int64_t)n * (K / 2);
        const float *sr = scale + (int64_t)n * G;
        float o[MAXM];
        switch (M) { Q4_CASE(1) Q4_CASE(2) Q4_CASE(3) Q4_CASE(4) Q4_CASE(5) Q4_CASE(6) Q4_CASE(7) Q4_CASE(8) }
        const float *zr = offset + (int64_t)n * G;
        for (int m = 0; m < M; m++) {
            float t = 0.f;
            const float *xs = xsum + m * G;
            for (int g = 0; g < G; g++) t += zr[g] * xs[g];
            y[(int64_t)m * N + n] = o[m] * sx[m] + t;
        }
    }
}

/* Float weights: fp32 (FMA) and bf16 (AVX512-BF16 vdpbf16ps), two rows per pass, same prefetch. */
INLINE void f32_rows(const float *x, int K, const float *w0, const float *w1, int M, float *o0, float *o1) {
    __m512 a0[MAXM], a1[MAXM];
    for (int m = 0; m < M; m++) { a0[m] = _mm512_setzero_ps(); a1[m] = _mm512_setzero_ps(); }
    for (int k = 0; k < K; k += 16) {
        if ((k & 15) == 0) {
            _mm_prefetch((const char *)(w0 + k + PF / 4), _MM_HINT_T0);
            _mm_prefetch((const char *)(w1 + k + PF / 4), _MM_HINT_T0);
            _mm_prefetch((const char *)(w0 + k + PF), _MM_HINT_T1);
            _mm_prefetch((const char *)(w1 + k + PF), _MM_HINT_T1);
        }
        __m512 v0 = _mm512_loadu_ps(w0 + k), v1 = _mm512_loadu_ps(w1 + k);
        for (int m = 0; m < M; m++) {
            __m512 xv = _mm512_loadu_ps(x + (int64_t)m * K + k);
            a0[m] = _mm512_fmadd_ps(xv, v0, a0[m]);
            a1[m] = _mm512_fmadd_ps(xv, v1, a1[m]);
        }
    }
    for (int m = 0; m < M; m++) { o0[m] = _mm512_reduce_add_ps(a0[m]); o1[m] = _mm512_reduce_add_ps(a1[m]); }
}

#define F32_CASE(MM) case MM: f32_rows(x, K, w0, w1, MM, o0, o1); break;

void fd_f32_gemv(const float *x, int M, int K, const float *w, int N, float *y, int nthreads) {
    int pairs = (N + 1) / 2;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int p = 0; p < pairs; p++) {
        int n0 = 2 * p, n1 = 2 * p + 1 < N ? 2 * p + 1 : 2 * p;
        const float *w0 = w + (int64_t)n0 * K, *w1 = w + (int64_t)n1 * K;
        float o0[MAXM], o1[MAXM];
        switch (M) { F32_CASE(1) F32_CASE(2) F32_CASE(3) F32_CASE(4) F32_CASE(5) F32_CASE(6) F32_CASE(7) F32_CASE(8) }
        for (int m = 0; m < M; m++) { y[(int64_t)m * N + n0] = o0[m]; y[(int64_t)m * N + n1] = o1[m]; }
    }
}

#ifdef __AVX512BF16__
INLINE void bf16_rows(const uint16_t *x, int K, const uint16_t *w0, const uint16_t *w1, int M, float *o0, float *o1) {
    __m512 a0[MAXM], a1[MAXM];
    for (int m = 0; m < M; m++) { a0[m] = _mm512_setzero_ps(); a1[m] = _mm512_setzero_ps(); }
    for (int k = 0; k < K; k += 32) {
        _mm_prefetch((const char *)(w0 + k + PF / 2), _MM_HINT_T0);
        _mm_prefetch((const char *)(w1 + k + PF / 2), _MM_HINT_T0);
        _mm_prefetch((const char *)(w0 + k + 2 * PF), _MM_HINT_T1);
        _mm_prefetch((const char *)(w1 + k + 2 * PF), _MM_HINT_T1);
        __m512bh v0 = (__m512bh)_mm512_loadu_si512((const void *)(w0 + k));
        __m512bh v1 = (__m512bh)_mm512_loadu_si512((const void *)(w1 + k));
        for (int m = 0; m < M; m++) {
            __m512bh xv = (__m512bh)_mm512_loadu_si512((const void *)(x + (int64_t)m * K + k));
            a0[m] = _mm512_dpbf16_ps(a0[m], xv, v0);
            a1[m] = _mm512_dpbf16_ps(a1[m], xv, v1);
        }
    }
    for (int m = 0; m < M; m++) { o0[m] = _mm512_reduce_add_ps(a0[m]); o1[m] = _mm512_reduce_add_ps(a1[m]); }
}

#define BF16_CASE(MM) case MM: bf16_rows(x, K, w0, w1, MM, o0, o1); break;

void fd_bf16_gemv(const uint16_t *x, int M, int K, const uint16_t *w, int N, float *y, int nthreads) {
    int pairs = (N + 1) / 2;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int p = 0; p < pairs; p++) {
        int n0 = 2 * p, n1 = 2 * p + 1 < N ? 2 * p + 1 : 2 * p;
        const uint16_t *w0 = w + (int64_t)n0 * K, *w1 = w + (int64_t)n1 * K;
        float o0[MAXM], o1[MAXM];
        switch (M) { BF16_CASE(1) BF16_CASE(2) BF16_CASE(3) BF16_CASE(4) BF16_CASE(5) BF16_CASE(6) BF16_CASE(7) BF16_CASE(8) }
        for (int m = 0; m < M; m++) { y[(int64_t)m * N + n0] = o0[m]; y[(int64_t)m * N + n1] = o1[m]; }
    }
}
#endif
"""

_FLAGS = ["-O3", "-shared", "-fPIC", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vnni", "-mfma"]
_BF16_FLAGS = ["-mavx512bf16"]  # only where the CPU has it (the bf16 kernel is compiled in then)
_lib = None
_tried = False
_error: str | None = None


def _cpu_flags() -> set[str]:
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        return set()
    return set(flags.split(":", 1)[1].split())


def _cpu_has_vnni() -> bool:
    return {"avx512f", "avx512bw", "avx512_vnni"} <= _cpu_flags()


def _cache_dir() -> Path:
    base = os.environ.get("FASTDIA_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fastdia" / "kernels"


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (gcc/cc) found")
    flags = _FLAGS + (_BF16_FLAGS if _cpu_flags() >= {"avx512_bf16"} else [])
    digest = hashlib.sha256((_SOURCE + " ".join(flags) + cc).encode()).hexdigest()[:16]
    out = _cache_dir() / f"fastdia_wonly_{digest}.so"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK):
            raise OSError("not writable")
    except OSError:  # e.g. a read-only home: build into the temp directory instead
        out = Path(tempfile.gettempdir()) / f"fastdia-kernels-{os.getuid()}" / out.name
        out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "wonly.c"
            src.write_text(_SOURCE)
            tmp_out = Path(tmp) / out.name
            proc = subprocess.run([cc, *flags, str(src), "-o", str(tmp_out)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"compiling the int8/int4 kernels failed: {proc.stderr.strip()[-500:]}")
            os.replace(tmp_out, out)  # atomic: concurrent builders never see a partial file
    lib = ctypes.CDLL(str(out))
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.fd_q8_gemv.argtypes = [p, i, i, p, p, i, p, p, i]
    lib.fd_q8_gemv.restype = None
    lib.fd_q4_gemv.argtypes = [p, i, i, p, p, p, i, i, p, p, p, i]
    lib.fd_q4_gemv.restype = None
    lib.fd_f32_gemv.argtypes = [p, i, i, p, i, p, i]
    lib.fd_f32_gemv.restype = None
    if hasattr(lib, "fd_bf16_gemv"):
        lib.fd_bf16_gemv.argtypes = [p, i, i, p, i, p, i]
        lib.fd_bf16_gemv.restype = None
    return lib


def available() -> bool:
    """True when the kernels can run here (x86 AVX-512 VNNI CPU, a C compiler, not disabled)."""
    global _lib, _tried, _error
    if _tried:
        return _lib is not None
    _tried = True
    if os.environ.get("FASTDIA_NO_KERNELS"):
        _error = "disabled by FASTDIA_NO_KERNELS"
    elif sys.platform != "linux" or not _cpu_has_vnni():
        _error = "needs Linux on an x86 CPU with AVX-512 VNNI"
    else:
        try:
            _lib = _build()
        except (RuntimeError, OSError) as exc:
            _error = str(exc)
    return _lib is not None


def unavailable_reason() -> str | None:
    available()
    return _error


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _library() -> ctypes.CDLL:
    if _lib is None and not available():
        raise RuntimeError(f"fastdia CPU kernels unavailable: {_error}")
    return _lib


def q8_gemv(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`x (M, K) float32 @ (w (N, K) int8 * scale (N,)).T` -> `(M, N)` float32, M <= MAX_ROWS."""
    m, k = x.shape
    n = w.shape[0]
    x = x.contiguous()
    y = torch.empty((m, n), dtype=torch.float32)
    xq = torch.empty((m, k), dtype=torch.int16)
    _library().fd_q8_gemv(_ptr(x), m, k, _ptr(w), _ptr(scale), n, _ptr(y), _ptr(xq), torch.get_num_threads())
    return y


def q4_gemv(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, zz: torch.Tensor, group: int) -> torch.Tensor:
    """`x (M, K) float32` times the int4 weight (format in the module docstring) -> `(M, N)` float32."""
    m, k = x.shape
    n = w.shape[0]
    x = x.contiguous()
    y = torch.empty((m, n), dtype=torch.float32)
    xq = torch.empty((m, k), dtype=torch.int16)
    xsum = torch.empty((m, k // group), dtype=torch.float32)
    _library().fd_q4_gemv(_ptr(x), m, k, _ptr(w), _ptr(scale), _ptr(zz), group, n, _ptr(y), _ptr(xq), _ptr(xsum),
                    torch.get_num_threads())
    return y


def has_bf16() -> bool:
    """True when the bfloat16 kernel was compiled in (CPU with AVX512-BF16)."""
    return available() and hasattr(_lib, "fd_bf16_gemv")


def float_gemv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`x (M, K) @ w (N, K).T` -> `(M, N)` float32 for a float32 or bfloat16 `w`, M <= MAX_ROWS.

    float32 weights take float32 activations; bfloat16 weights take bfloat16 activations (x is
    rounded to bfloat16, as a bfloat16 model's activations are) with float32 accumulation.
    """
    m, k = x.shape
    n = w.shape[0]
    y = torch.empty((m, n), dtype=torch.float32)
    if w.dtype == torch.bfloat16:
        xb = x.to(torch.bfloat16).contiguous()
        _library().fd_bf16_gemv(_ptr(xb), m, k, _ptr(w), n, _ptr(y), torch.get_num_threads())
    else:
        xf = x.float().contiguous()
        _library().fd_f32_gemv(_ptr(xf), m, k, _ptr(w), n, _ptr(y), torch.get_num_threads())
    return y
