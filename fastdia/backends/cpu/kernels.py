"""fastdia's CPU kernels for x86 (C in fastdia/backends/cpu/csrc, built at install), one build per ISA.

Dispatch, best first (`dispatch()`): AMX > AVX-512 VNNI (`avx512bf16`, `avx512`) > AVX2 with
AVX-VNNI (`avx2vnni`) > AVX2 + FMA (`avx2`) > torch. Every kernel is written once against a
16-lane vector layer (`csrc/simd.h`: one zmm, or two ymm) and compiled for each build, so the
builds compute the same operations in the same order: their int8/int4 results are identical bit
for bit, and so are their float ones (tests/test_kernel_variants.py runs every build the CPU can).
`FASTDIA_KERNELS=<build>` picks a lower build than the best (benchmarks of another CPU kind).

* `csrc/wonly.c`: weight-only matrix-vector kernels (int8, int4, float32, bfloat16) for
  decode-sized inputs. Decoding multiplies 2 rows (one utterance with CFG) by every weight, so
  each matmul is bound by how fast weights stream from memory; torch's weight-only CPU kernels
  convert every weight to float before multiplying (see benchmarks/README.md). Here the
  activations (at most a few rows) are quantized per row to 15-bit integers (relative error
  ~1e-4, far below bfloat16's), and `vpdpwssd` multiplies 32 int16 pairs per instruction
  against the sign/zero-extended weights, accumulating exactly in int32. Weights are stored in
  row pairs (`fastdia.quant.formats.tile_pairs`) so each pass reads one sequential stream; int8
  weights of more than 2048 inputs in chunk-major groups of four pairs
  (`fastdia.quant.formats.kernel_layout`), so a chunk of the activations serves four pairs from L1.
* `csrc/amx.c`: the int8 and bfloat16 kernels on AMX tiles (Sapphire Rapids and later), for
  calls of several activation rows (batches, prefill); int8 bit for bit the AVX-512 results.
  Used where the CPU and the OS allow it and a self-check on first use passes (`amx_status`);
  `FASTDIA_AMX=0` turns it off.
* `csrc/decode.c`: the float32 glue of a decode step (RMSNorm, RoPE + KV-cache write +
  single-query attention, SiLU), used by fastdia.backends.cpu.dia1_fused.
* `csrc/sample.c`: one sampled Dia2 depformer token from its CFG logits (`cfg_draw`).
* `csrc/plan.c`: a prepared list of the calls above run by one call from Python
  (fastdia.backends.cpu.layer_plan.Program), and a Dia2 depformer frame (stages, embeddings and
  draws) in one call (fastdia.backends.cpu.dia2_fused.FusedDia2.frame).

Weight formats (fastdia.quant.modules): int8 `[N, K]` with a float32 scale per row; int4 `[N, K/2]` uint8
in blocks of 64 inputs (byte j of block b holds input 64b + j in its low nibble and input
64b + 32 + j in its high nibble), a uint8 step multiplier per (row, group), a float32 unit per
row, and an int8 offset per (row, group) with a float32 offset scale per row.

The library is compiled with the system C compiler when the package is built (`pip install`,
`pip wheel`: fastdia/backends/cpu/kernel_build.py, one library per ISA variant in `prebuilt/`);
a checkout whose sources changed since, or an install made without a compiler, compiles at first
use into a per-user cache directory instead. It is loaded with ctypes; threads come from the
OpenMP runtime torch already loaded (same soname), so the kernels share torch's thread pool and
`torch.set_num_threads`. Without a compiler (and no build from install) or without AVX2,
`available()` is False and fastdia falls back to torch (fastdia.quant.modules, fastdia.backends.cpu.packed).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
from pathlib import Path

import torch

from . import kernel_build
from .features import announce, cpu_features

# The most activation rows one pass of a kernel takes (csrc/wonly.c: a call of more rows runs them
# MAX_ROWS at a time, so a batched decode step may hold any number of requests, two CFG rows each).
# A pass streams each weight once from DRAM for all its rows (the register kernel runs blocks of 8
# rows while a weight row pair sits in L1), and computes each row with the same instructions
# whatever rows sit beside it, so a request's numbers do not depend on the batch it decodes in (a
# BLAS picks other kernels, and other rounding, by row count). Modules send longer inputs of one
# sequence (encoder, prefill: compute-bound) to the dense fallback past this many rows.
MAX_ROWS = 64

_SOURCE_DIR = kernel_build.SOURCE_DIR
_lib = None
_tried = False
_error: str | None = None


def _cache_dir() -> Path:
    base = os.environ.get("FASTDIA_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fastdia" / "kernels"


def _source() -> str:
    return kernel_build.source_text()


VARIANT_ENV = "FASTDIA_KERNELS"
_variant: str | None = None


def _choose_variant() -> str:
    """The best build this CPU runs, or the one `FASTDIA_KERNELS` names (when the CPU runs it)."""
    runnable = cpu_features().kernel_variants
    wanted = os.environ.get(VARIANT_ENV, "").strip().lower()
    if wanted and wanted in runnable:
        return wanted
    if wanted:
        known = ", ".join(kernel_build.VARIANTS)
        why = "this CPU cannot run it" if wanted in kernel_build.VARIANTS else f"not one of {known}"
        import warnings

        warnings.warn(f"fastdia: {VARIANT_ENV}={wanted} ignored ({why}); using the {runnable[0]} kernels",
                      RuntimeWarning, stacklevel=2)
    return runnable[0]


def _candidates(first: str) -> list[str]:
    """`first`, then every lower build this CPU runs: where one cannot be had (a compiler too old
    for its flags, say gcc 10 and -mavxvnni), the next one down is still faster than torch."""
    runnable = cpu_features().kernel_variants
    return runnable[runnable.index(first):]


def _load_first(variants: list[str], build) -> tuple[ctypes.CDLL | None, str | None, str | None]:
    """The first of `variants` that `build` loads: (library, its name, None), or (None, None, why)."""
    problems = []
    for variant in variants:
        try:
            lib = build(variant)
        except (RuntimeError, OSError) as exc:
            problems.append(f"{variant}: {exc}")
            continue
        if problems:
            announce(f"fastdia's {variants[0]} kernels could not be had ({'; '.join(problems)}); using {variant}")
        return lib, variant, None
    return None, None, "; ".join(problems)


def _library_path(variant: str) -> Path:
    """The library of `variant`: the one installed with the package when it was built from these
    sources (no compile at first use), else one compiled now into the per-user cache."""
    source = _source()
    installed = kernel_build.prebuilt(variant, source)
    if installed is not None:
        return installed
    cc = kernel_build.find_compiler()
    if cc is None:
        raise RuntimeError("no C compiler (gcc/cc) found and no kernels were built at install")
    out = _cache_dir() / f"fastdia_kernels_{kernel_build.digest(source, variant)}.so"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK):
            raise OSError("not writable")
    except OSError:  # e.g. a read-only home: build into the temp directory instead
        out = Path(tempfile.gettempdir()) / f"fastdia-kernels-{os.getuid()}" / out.name
        out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        kernel_build.compile_library(cc, source, variant, out)
    return out


def _build(variant: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(_library_path(variant)))
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.fd_q8_gemv.argtypes = [p, i, i, p, p, i, p, i, p, i]
    lib.fd_q8_gemv.restype = None
    lib.fd_q4_gemv.argtypes = [p, i, i, p, p, p, p, p, i, i, p, i, p, p, i]
    lib.fd_q4_gemv.restype = None
    lib.fd_f32_gemv.argtypes = [p, i, i, p, i, p, i, i]
    lib.fd_f32_gemv.restype = None
    lib.fd_add_rmsnorm.argtypes = [p, p, p, ctypes.c_float, i, i, p]
    lib.fd_add_rmsnorm.restype = None
    lib.fd_silu_mul.argtypes = [p, i, i, p]
    lib.fd_silu_mul.restype = None
    lib.fd_self_attn.argtypes = [p, p, p, p, p, p, i, i, i, i, i, p, p, p, i]
    lib.fd_self_attn.restype = None
    lib.fd_cross_attn.argtypes = [p, p, p, i, p, i, i, i, i, i, p, p, p, i]
    lib.fd_cross_attn.restype = None
    lib.fd_qk_norm.argtypes = [p, p, p, ctypes.c_float, i, i, i, i]
    lib.fd_qk_norm.restype = None
    lib.fd_rope.argtypes = [p, p, p, i, i, i]
    lib.fd_rope.restype = None
    lib.fd_embed_add.argtypes = [p, p, i, p, p, p, i, i, i, i]
    lib.fd_embed_add.restype = i
    lib.fd_cfg_draw.argtypes = [p, i, ctypes.c_float, i, ctypes.c_float, i, ctypes.c_double]
    lib.fd_cfg_draw.restype = i
    lib.fd_cfg_pick_rows.argtypes = [p, i, i, i, i, p, p, p, p, p, p, p]
    lib.fd_cfg_pick_rows.restype = i
    lib.fd_sample_finish.argtypes = [p, p, i, i, i, i, p, p, p, p, p, i, i, p]
    lib.fd_sample_finish.restype = i
    lib.fd_top_ids.argtypes = [p, i, i, i, p]
    lib.fd_top_ids.restype = i
    lib.fd_cfg_greedy.argtypes = [p, i, ctypes.c_float, i]
    lib.fd_cfg_greedy.restype = i
    lib.fd_cfg_guided.argtypes = [p, i, ctypes.c_float, p]
    lib.fd_cfg_guided.restype = None
    lib.fd_dia1_guided.argtypes = [p, i, i, i, p, p]
    lib.fd_dia1_guided.restype = None
    lib.fd_snake.argtypes = [p, p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, p, i]
    lib.fd_snake.restype = None
    lib.fd_conv1d_narrow.argtypes = [p, ctypes.c_int64, ctypes.c_int64, p, ctypes.c_int64, ctypes.c_int64,
                                     ctypes.c_int64, p, p, i]
    lib.fd_conv1d_narrow.restype = None
    lib.fd_run_program.argtypes = [p, i]
    lib.fd_run_program.restype = i
    lib.fd_depformer_frame.argtypes = [i, i, i, i, i, p, p, p, p, p, p, p, i, i, p, p, p, p, p, p, p, p]
    lib.fd_depformer_frame.restype = i
    lib.fd_bf16_gemv.argtypes = [p, i, i, p, i, p, i, i]
    lib.fd_bf16_gemv.restype = None
    lib.fd_amx_probe.argtypes = []
    lib.fd_amx_probe.restype = i
    lib.fd_set_amx.argtypes = [i, i]
    lib.fd_set_amx.restype = i
    lib.fd_amx_emulated.argtypes = []
    lib.fd_amx_emulated.restype = ctypes.c_long
    return lib


def available() -> bool:
    """True when the kernels can run here (x86 CPU with AVX2 + FMA at least, built at install or a
    C compiler now, not disabled)."""
    global _lib, _tried, _error, _variant
    if _tried:
        return _lib is not None
    _tried = True
    if os.environ.get("FASTDIA_NO_KERNELS"):
        _error = "disabled by FASTDIA_NO_KERNELS"
    elif sys.platform != "linux":
        _error = "needs Linux"
    elif not cpu_features().fastdia_kernels:
        _error = "needs AVX2 with FMA and F16C, which this CPU lacks"
    else:
        _lib, _variant, _error = _load_first(_candidates(_choose_variant()), _build)
        if _lib is not None:
            _init_amx()
    if _lib is None:
        announce(f"fastdia's CPU kernels are off ({_error}): int8/int4 run on torch's weight-only kernels, "
                 f"float projections on oneDNN")
    return _lib is not None


def variant() -> str | None:
    """The kernel build in use ("avx512bf16", "avx512", "avx2vnni" or "avx2"); None when off."""
    return _variant if available() else None


def dispatch() -> str:
    """What runs the matmuls here, in one phrase: AMX > AVX-512 VNNI > AVX2-VNNI > AVX2 > torch."""
    if not available():
        return f"torch ({_error})"
    return f"{_variant} + AMX" if amx_status() == "on" else _variant


@contextlib.contextmanager
def use_variant(name: str):
    """Run the kernels of build `name` (one this CPU runs) inside the block, then the default again:
    tests and benchmarks compare the builds in one process. Raises ValueError for one it cannot."""
    global _lib, _variant
    if not available():
        raise ValueError(f"fastdia's CPU kernels are off: {_error}")
    if name not in cpu_features().kernel_variants:
        raise ValueError(f"this CPU cannot run the {name!r} kernels (it runs {cpu_features().kernel_variants})")
    before = _lib, _variant
    _lib, _variant = _build(name), name
    try:
        yield _lib
    finally:
        _lib, _variant = before


def library_origin() -> str | None:
    """Where the loaded kernels came from: "installed" (built with the package) or "compiled at
    first use" (the per-user cache); None when they are off."""
    if not available():
        return None
    return "installed" if Path(_lib._name).parent == kernel_build.PREBUILT_DIR else "compiled at first use"


def unavailable_reason() -> str | None:
    available()
    return _error


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _library() -> ctypes.CDLL:
    if _lib is None and not available():
        raise RuntimeError(f"fastdia CPU kernels unavailable: {_error}")
    return _lib


def q8_gemv(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, n: int) -> torch.Tensor:
    """`x (M, K) float32 @ (W (N, K) int8 * scale (N,)).T` -> `(M, N)` float32, any M (the kernel
    takes MAX_ROWS rows at a time; each row's bits are those it gets alone).

    `w` is W in the kernel's layout, `fastdia.quant.formats.kernel_layout(W, 32, K)`."""
    m, k = x.shape
    x = x.contiguous()
    y = torch.empty((m, n), dtype=torch.float32)
    xq = torch.empty((m, k), dtype=torch.int16)
    (_lib or _library()).fd_q8_gemv(x.data_ptr(), m, k, w.data_ptr(), scale.data_ptr(), n, y.data_ptr(), n,
                                    xq.data_ptr(), torch.get_num_threads())
    return y


def q4_gemv(x: torch.Tensor, w: torch.Tensor, tscale: torch.Tensor, rscale: torch.Tensor, offset: torch.Tensor,
            oscale: torch.Tensor, group: int, n: int) -> torch.Tensor:
    """`x (M, K) float32` times an int4 weight of N rows -> `(M, N)` float32, any M (as `q8_gemv`).

    Format in fastdia.quant.quantize_int4, with `w` and `tscale` in row pairs (`tile_pairs`)."""
    m, k = x.shape
    x = x.contiguous()
    y = torch.empty((m, n), dtype=torch.float32)
    xq = torch.empty((m, k), dtype=torch.int16)
    xsum = torch.empty((m, k // group), dtype=torch.float32)
    (_lib or _library()).fd_q4_gemv(x.data_ptr(), m, k, w.data_ptr(), tscale.data_ptr(), rscale.data_ptr(),
                                    offset.data_ptr(), oscale.data_ptr(), group, n, y.data_ptr(), n, xq.data_ptr(),
                                    xsum.data_ptr(), torch.get_num_threads())
    return y


def cfg_draw(logits: torch.Tensor, scale: float, cfg_k: int, temperature: float, top_k: int, u: float) -> int:
    """One index drawn from `(2, V)` float32 CFG logits (cond, uncond) with the uniform `u` in
    [0, 1): csrc/sample.c, the distribution of fastdia.dia2.generation's torch sampler."""
    if temperature <= 0:
        raise ValueError("cfg_draw samples; temperature 0 is the torch path's argmax")
    logits = logits.contiguous()
    return (_lib or _library()).fd_cfg_draw(logits.data_ptr(), logits.shape[-1], scale, cfg_k, temperature, top_k, u)


def cfg_pick_rows(logits: torch.Tensor, first: torch.Tensor, limit: int, scale: torch.Tensor, cfg_k: torch.Tensor,
                  temperature: torch.Tensor, top_k: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One pick per script from `(rows, V)` float32 logits, script j's CFG pair at rows first[j]
    (cond) and first[j] + 1 (uncond), each with its own settings (`(n,)` tensors) and uniform
    `u[j]` (float64): csrc/sample.c, fd_cfg_draw's draw or, at temperature <= 0, fd_cfg_greedy's
    pick; ids from `limit` on are never picked. Returns `(n,)` int64."""
    if logits.dtype != torch.float32 or logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(f"cfg_pick_rows takes (rows, V) float32 rows, got {tuple(logits.shape)} {logits.dtype}")
    n = first.shape[0]
    first = first.to(torch.int64).contiguous()
    # (first is not range-checked here: that would read it back; the callers build it from slots)
    args = [first, scale.to(torch.float32).contiguous(), cfg_k.to(torch.int64).contiguous(),
            temperature.to(torch.float32).contiguous(), top_k.to(torch.int64).contiguous(),
            u.to(torch.float64).contiguous()]
    out = torch.empty(n, dtype=torch.int64)
    v = logits.shape[1]
    status = (_lib or _library()).fd_cfg_pick_rows(logits.data_ptr(), logits.stride(0), v, min(limit, v), n,
                                                   *(a.data_ptr() for a in args), out.data_ptr())
    if status:
        raise MemoryError("cfg_pick_rows: out of memory")
    return out


def sample_finish(logits: torch.Tensor, order: torch.Tensor, top_k: torch.Tensor, temperature: torch.Tensor,
                  top_p: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor, stream: int, eos: int) -> torch.Tensor:
    """fastdia.nn.sampling.sample_rows from its candidates `order (B, C, W)` on, for every row and
    channel in one call (csrc/sample.c fd_sample_finish): greedy picks and uniforms bit for bit
    the torch path's. `logits (B, 2, C, V)` float32. Returns `(B, C)` int64."""
    logits = logits.contiguous()
    order = order.contiguous()
    b, _, c, v = logits.shape
    args = [top_k.to(torch.int64).contiguous(), temperature.to(torch.float32).contiguous(),
            top_p.to(torch.float32).contiguous(), seeds.to(torch.int64).contiguous(),
            torch.as_tensor(steps, dtype=torch.int64).expand(b).contiguous()]
    out = torch.empty((b, c), dtype=torch.int64)
    (_lib or _library()).fd_sample_finish(logits.data_ptr(), order.data_ptr(), b, c, v, order.shape[-1],
                                          *(a.data_ptr() for a in args), stream, eos, out.data_ptr())
    return out


def dia1_guided(logits: torch.Tensor, cfg_scale: torch.Tensor) -> torch.Tensor:
    """`cond + cfg_scale[b] * (cond - uncond)` for Dia-1's `logits (B, 2, C, V)` float32 (uncond,
    cond), bit for bit torch's three operations, in one pass (csrc/sample.c). Returns `(B, C, V)`."""
    logits = logits.contiguous()
    b, _, c, v = logits.shape
    scale = cfg_scale.to(torch.float32).contiguous()
    out = torch.empty((b, c, v), dtype=torch.float32)
    (_lib or _library()).fd_dia1_guided(logits.data_ptr(), b, c, v, scale.data_ptr(), out.data_ptr())
    return out


def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """DAC's Snake, `x + sin(alpha x)^2 / (alpha + 1e-9)`, for float32 CPU `x (B, C, T)` and
    `alpha (C,)` or `(1, C, 1)`, in one pass (csrc/codec.c): torch's result to a few ulp (its own
    sine), the same bits in every build."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 3:
        raise ValueError(f"snake takes (B, C, T) float32 CPU tensors, got {tuple(x.shape)} {x.dtype} on {x.device}")
    x = x.contiguous()
    a = alpha.detach().reshape(-1).to(torch.float32).contiguous()
    if a.numel() != x.shape[1]:
        raise ValueError(f"snake: {a.numel()} alphas for {x.shape[1]} channels")
    out = torch.empty_like(x)
    (_lib or _library()).fd_snake(x.data_ptr(), a.data_ptr(), x.shape[0] * x.shape[1], x.shape[1], x.shape[2],
                                  out.data_ptr(), torch.get_num_threads())
    return out


def conv1d_narrow(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, dilation: int = 1,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """A stride-1 convolution of one padded float32 CPU input `x (Ci, T)` by `w (Co, Ci, k)`,
    directly (csrc/codec.c): `(Co, T - dilation (k - 1))`, each output the bias plus its terms in
    (channel, tap) order, the same bits in every build. For narrow layers (see codec_ops). `out`: a
    contiguous float32 `(Co, length)` to write into."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 2 or w.dim() != 3 or w.shape[1] != x.shape[0]:
        raise ValueError(f"conv1d_narrow takes x (Ci, T) and w (Co, Ci, k) float32 on the CPU, got "
                         f"{tuple(x.shape)} {x.dtype} and {tuple(w.shape)} {w.dtype}")
    co, ci, k = w.shape
    length = x.shape[1] - dilation * (k - 1)
    if length < 1:
        raise ValueError(f"conv1d_narrow: an input of {x.shape[1]} samples is shorter than the kernel's span")
    x, w = x.contiguous(), w.detach().to(torch.float32).contiguous()
    b = None if bias is None else bias.detach().to(torch.float32).contiguous()
    if out is None:
        out = torch.empty((co, length), dtype=torch.float32)
    elif out.shape != (co, length) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"conv1d_narrow: out must be a contiguous float32 {(co, length)}, got {tuple(out.shape)}")
    (_lib or _library()).fd_conv1d_narrow(x.data_ptr(), ci, x.shape[1], w.data_ptr(), co, k, dilation,
                                          None if b is None else b.data_ptr(), out.data_ptr(), torch.get_num_threads())
    return out


def top_ids(x: torch.Tensor, width: int) -> torch.Tensor:
    """fastdia.nn.sampling.top_ids for float32 CPU tensors (csrc/sample.c): the same ids, bit for
    bit (the same integer key per id), in one pass and a quickselect per row."""
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(f"top_ids takes float32 CPU tensors, got {x.dtype} on {x.device}")
    x = x.contiguous()
    v = x.shape[-1]
    width = min(width, v)
    out = torch.empty((*x.shape[:-1], width), dtype=torch.int64)
    if (_lib or _library()).fd_top_ids(x.data_ptr(), x.numel() // v, v, width, out.data_ptr()) != 0:
        raise MemoryError("top_ids: out of memory")
    return out


def cfg_greedy(logits: torch.Tensor, scale: float, cfg_k: int) -> int:
    """The greedy pick from `(2, V)` float32 CFG logits (cond, uncond): csrc/sample.c, the index
    `argmax(cfg_filter(logits, scale, cfg_k))` gives in torch (fastdia.dia2.generation), bit for bit."""
    logits = logits.contiguous()
    if logits.dtype != torch.float32 or logits.dim() != 2 or logits.shape[0] != 2:
        raise ValueError(f"cfg_greedy takes (2, V) float32 logits, got {tuple(logits.shape)} {logits.dtype}")
    token = (_lib or _library()).fd_cfg_greedy(logits.data_ptr(), logits.shape[-1], scale, cfg_k)
    if token < 0:
        raise MemoryError("cfg_greedy: out of memory")
    return token


def cfg_guided(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """The guided row fd_cfg_greedy filters by: torch.lerp(uncond, cond, scale) as ATen computes it."""
    logits = logits.contiguous()
    out = torch.empty(logits.shape[-1], dtype=torch.float32)
    (_lib or _library()).fd_cfg_guided(logits.data_ptr(), logits.shape[-1], scale, out.data_ptr())
    return out


# ---- AMX (csrc/amx.c) ----
_AMX_MODES = {"off": 0, "on": 1, "emulate": 2}
_amx_state = "not checked"


def _init_amx() -> None:
    """Turns AMX on where the CPU and the OS allow it and it computes what AVX-512 computes."""
    global _amx_state
    if os.environ.get("FASTDIA_AMX", "").strip().lower() in ("0", "off", "no", "false"):
        _amx_state = "off (FASTDIA_AMX=0)"
        return
    if not (_variant or "").startswith("avx512"):
        _amx_state = "not in this build"  # AMX comes with the AVX-512 builds (csrc/amx.c)
        return
    if not cpu_features().has("amx_tile", "amx_int8", "amx_bf16"):
        _amx_state = "not present"  # (or hidden by FASTDIA_CPU_FEATURES: then not probed either)
        return
    probe = _lib.fd_amx_probe()
    if probe == -1:
        _amx_state = "off (the OS does not enable AMX tile state)"
        return
    if probe == -2:
        _amx_state = "off (the OS refused AMX tile state to this process: Linux before 5.16, or a small signal stack)"
        return
    if probe != 3 or _variant != "avx512bf16":
        _amx_state = "not present"  # no AMX int8 + bf16 (every AMX CPU so far has both and AVX512-BF16)
        return
    _lib.fd_set_amx(1, 3)
    problem = amx_self_check()
    if problem:
        _lib.fd_set_amx(0, -1)
        _amx_state = f"off (self-check failed: {problem})"
        import warnings

        warnings.warn(f"fastdia: AMX kernels disagree with AVX-512 ({problem}); using AVX-512", RuntimeWarning,
                      stacklevel=2)
    else:
        _amx_state = "on"


def amx_status() -> str:
    """"on", "not present", or "off (why)": whether the int8 and bfloat16 kernels use AMX."""
    available()
    return _amx_state if _lib is not None else "not present"


def set_amx(mode: str, kinds: tuple[str, ...] = ("int8", "bf16")) -> str:
    """Switch the kernels' AMX path: "off", "on" (refused with a RuntimeError where the CPU has no
    AMX) or "emulate" (the tile instructions run in C, for tests on CPUs without AMX), for the
    int8 and/or bfloat16 kernels. Returns the previous mode's name. Process-wide: for tests and
    benchmarks."""
    lib = _library()
    names = {v: k for k, v in _AMX_MODES.items()}
    mask = ("int8" in kinds) | ("bf16" in kinds) << 1
    before = names[lib.fd_set_amx(-1, -1)]  # an unknown mode changes nothing and reports the current one
    now = names[lib.fd_set_amx(_AMX_MODES[mode], mask)]
    if now != mode:
        raise RuntimeError(f"AMX mode {mode!r} refused here (AMX {amx_status()})")
    return before


def amx_self_check() -> str | None:
    """Compares the kernels in the current AMX mode with the AVX-512 path on fixed random inputs:
    int8 must agree bit for bit (csrc/amx.c computes the same integer sums), bfloat16 to float32
    rounding. Returns None, or what differed."""
    from ...quant.formats import kernel_layout, quantize_int8

    lib = _library()
    gen = torch.Generator().manual_seed(12)
    mode = lib.fd_set_amx(-1, -1)  # a query
    try:
        for m, k, n in ((9, 128, 67), (5, 4096, 33), (20, 96, 40)):
            q, scale = quantize_int8(torch.randn(n, k, generator=gen))
            w = kernel_layout(q, 32, k)
            x = torch.randn(m, k, generator=gen)
            lib.fd_set_amx(mode, -1)
            got = q8_gemv(x, w, scale, n)
            lib.fd_set_amx(0, -1)
            want = q8_gemv(x, w, scale, n)
            if not torch.equal(got, want):
                return f"int8 {m}x{k}x{n}: max difference {(got - want).abs().max().item():.3g}"
        for m, k, n in ((2, 128, 40), (17, 64, 32)):
            w = torch.randn(n, k, generator=gen).to(torch.bfloat16)
            x = torch.randn(m, k, generator=gen)
            lib.fd_set_amx(mode, -1)
            got = float_gemv(x, w)
            lib.fd_set_amx(0, -1)
            want = float_gemv(x, w)
            bound = 1e-4 * (x.to(torch.bfloat16).float().abs() @ w.float().abs().T) + 1e-6
            if not bool(((got - want).abs() <= bound).all()):
                return f"bfloat16 {m}x{k}x{n}: max difference {(got - want).abs().max().item():.3g}"
    finally:
        lib.fd_set_amx(mode, -1)
    return None


def float_gemv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`x (M, K) @ w (N, K).T` -> `(M, N)` float32 for a float32 or bfloat16 `w`, any M (as `q8_gemv`).

    float32 weights take float32 activations; bfloat16 weights take bfloat16 activations (x is
    rounded to bfloat16, as a bfloat16 model's activations are) with float32 accumulation.
    """
    m, k = x.shape
    n = w.shape[0]
    y = torch.empty((m, n), dtype=torch.float32)
    if w.dtype == torch.bfloat16:
        xb = x.to(torch.bfloat16).contiguous()
        _library().fd_bf16_gemv(_ptr(xb), m, k, _ptr(w), n, _ptr(y), n, torch.get_num_threads())
    else:
        xf = x.float().contiguous()
        _library().fd_f32_gemv(_ptr(xf), m, k, _ptr(w), n, _ptr(y), n, torch.get_num_threads())
    return y
