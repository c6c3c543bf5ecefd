"""Building fastdia's CPU kernels: the sources, the flags of each ISA variant, the compile.

Used twice: by the package build (`setup.py`, so `pip install` and `pip wheel` ship the compiled
libraries in `fastdia/backends/cpu/prebuilt/`) and by `fastdia.backends.cpu.kernels`, which loads a
prebuilt library whose sources and flags match and otherwise compiles one into a cache at first
use. This file imports nothing outside the standard library: the package build runs it on its own
(torch need not be installed then).

A library is one shared object per ISA variant, loaded with ctypes; its name carries no Python
ABI, and a digest of its sources, flags and libraries, written beside it, says what it was built
from (an edited checkout then rebuilds instead of loading a stale library).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SOURCE_DIR = Path(__file__).parent / "csrc"
PREBUILT_DIR = Path(__file__).parent / "prebuilt"
# weight-only GEMV kernels; their AMX paths; decode-step glue; Dia2's draw; prepared plans run in C
# the vector layer first (every kernel file is written against it); then the weight-only GEMV
# kernels; their AMX paths; decode-step glue; the draws; prepared plans run in C
SOURCES = ("simd.h", "wonly.c", "amx.c", "decode.c", "sample.c", "plan.c", "codec.c")

# -ffp-contract=off: a multiply and an add written apart stay apart (GCC fuses them into FMAs by
# default, and where it does depends on the ISA), so every variant computes the same float
# operations and returns the same bits (csrc/simd.h).
BASE_FLAGS = ["-O3", "-shared", "-fPIC", "-fopenmp", "-ffp-contract=off"]
_AVX2 = ["-mavx2", "-mfma", "-mf16c"]
_AVX512 = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mfma", "-mf16c"]
# The variants, by the CPU features they need; fastdia.backends.cpu.features.KERNEL_VARIANTS says
# which CPU runs which (the best it can), kernels.py loads it.
VARIANTS = {
    "avx2": _AVX2,  # AMD Zen 1-3, Intel Haswell to Comet Lake: vpmaddwd + vpaddd
    "avx2vnni": _AVX2 + ["-mavxvnni"],  # Intel Alder Lake and later clients: vpdpwssd on ymm
    "avx512": _AVX512,  # Cascade Lake, Ice Lake (AVX-512 VNNI without BF16)
    # Zen 4, Sapphire Rapids: bfloat16 dot products (vdpbf16ps; the other builds widen bfloat16
    # to float32), and AMX where the CPU and the OS allow it
    "avx512bf16": _AVX512 + ["-mavx512bf16"],
}
# Linked against libm explicitly: unlinked, a shared object's exp/expf bind at run time to glibc's
# oldest symbol versions, compatibility wrappers about 3x slower than the current ones (measured
# on the C draw: 10 us a pick against 3.4).
LIBS = ["-lm"]


def source_text(source_dir: Path = SOURCE_DIR) -> str:
    return "\n".join((source_dir / name).read_text() for name in SOURCES)


def flags(variant: str) -> list[str]:
    return BASE_FLAGS + VARIANTS[variant]


def digest(source: str, variant: str) -> str:
    """What a library of `variant` built from `source` is: sources, flags and libraries."""
    return hashlib.sha256((source + " ".join(flags(variant) + LIBS)).encode()).hexdigest()[:16]


def library_name(variant: str) -> str:
    return f"libfastdia_kernels_{variant}.so"


def find_compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def compile_library(cc: str, source: str, variant: str, out: Path) -> None:
    """Compile `source` for `variant` into `out` (atomically: a concurrent builder never sees a
    partial file); raises RuntimeError with the compiler's last words on failure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "fastdia_kernels.c"
        src.write_text(source)
        tmp_out = Path(tmp) / out.name
        proc = subprocess.run([cc, *flags(variant), str(src), "-o", str(tmp_out), *LIBS], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling fastdia's CPU kernels ({variant}) failed: {proc.stderr.strip()[-500:]}")
        os.replace(tmp_out, out)


def build_prebuilt(out_dir: Path, source_dir: Path = SOURCE_DIR, log=print) -> list[str]:
    """Compile every variant into `out_dir` with its digest beside it (the package build). Without
    a compiler, or where one fails, it says so in one line and builds nothing: the package then
    runs on torch's path (or compiles at first use, where a compiler appears later). Returns the
    variants built."""
    cc = find_compiler()
    if cc is None:
        log("fastdia: no C compiler (gcc/cc) found: the CPU kernels are not built; fastdia will run on "
            "torch's slower path (install gcc and reinstall for the fast one)")
        return []
    source = source_text(source_dir)

    def build(variant: str) -> str | None:
        out = out_dir / library_name(variant)
        try:
            compile_library(cc, source, variant, out)
        except (RuntimeError, OSError) as exc:
            log(f"fastdia: {exc}; that variant is left to torch's path")
            return None
        out.with_suffix(".sha256").write_text(digest(source, variant) + "\n")
        return variant

    # the compiles are independent processes: side by side, the install waits for the longest one
    with ThreadPoolExecutor(max_workers=max(1, min(len(VARIANTS), os.cpu_count() or 1))) as pool:
        return [v for v in pool.map(build, VARIANTS) if v is not None]


def prebuilt(variant: str, source: str) -> Path | None:
    """The installed library of `variant` if it was built from exactly `source` (else None)."""
    lib = PREBUILT_DIR / library_name(variant)
    stamp = lib.with_suffix(".sha256")
    try:
        if lib.exists() and stamp.read_text().strip() == digest(source, variant):
            return lib
    except OSError:
        pass
    return None
