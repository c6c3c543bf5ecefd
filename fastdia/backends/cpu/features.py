"""What this CPU can run, read once: every choice of a CPU path is made from these features.

fastdia's matmuls have several CPU paths, and each needs something of the CPU:

* fastdia's C kernels (int8/int4/float32 GEMV, the fused decode steps): one build per ISA
  variant (`KERNEL_VARIANTS`, best first), from AVX2 + FMA up to AVX-512 VNNI with BF16. Their
  bfloat16 GEMV needs AVX512-BF16; their AMX tiles AMX-INT8/BF16 (checked by the kernels
  themselves, see kernels.amx_status).
* oneDNN's packed linears (PackedLinear): float32 on any x86-64 CPU; bfloat16 only with
  AVX512BW+VL+DQ or AVX-NE-CONVERT (torch refuses the bfloat16 reorder elsewhere, with a
  RuntimeError: the crash AVX2-only CPUs such as AMD Zen 3 used to meet).
* torch's weight-only int8/int4 CPU kernels: any CPU torch runs on.

`FASTDIA_CPU_FEATURES` (a comma- or space-separated list of /proc/cpuinfo flags) replaces the
flags read from the CPU, so the choices another CPU kind would make can be made, and tested, here.
It only lowers what fastdia asks of the CPU; to make torch itself behave like that CPU too, also
set `ATEN_CPU_CAPABILITY`, `ONEDNN_MAX_CPU_ISA` and `MKL_ENABLE_INSTRUCTIONS` (tests/cpu_kinds.py
does, for an AVX2-only and an AVX-512 machine).
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

ENV = "FASTDIA_CPU_FEATURES"
log = logging.getLogger("fastdia.cpu")

# The flags worth naming in a report, roughly oldest first.
REPORTED = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512dq", "avx512bw", "avx512vl",
            "avx512_vnni", "avx512_bf16", "avx_ne_convert", "amx_tile", "amx_int8", "amx_bf16")
_AVX2 = frozenset({"avx2", "fma", "f16c"})
_AVX512 = _AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
# fastdia's kernel builds (fastdia/backends/cpu/kernel_build.py) and the CPU flags each needs, best
# first: a CPU runs the first it can (or a lower one it names in FASTDIA_KERNELS). Above them all,
# AMX, which the avx512bf16 build switches on where the CPU and the OS allow it; below them, torch.
KERNEL_VARIANTS: tuple[tuple[str, frozenset[str]], ...] = (
    ("avx512bf16", _AVX512 | {"avx512_bf16"}),
    ("avx512", _AVX512),
    ("avx2vnni", _AVX2 | {"avx_vnni"}),
    ("avx2", _AVX2),
)
_ONEDNN_BF16_FLAGS = frozenset({"avx512bw", "avx512vl", "avx512dq"})


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's name and its /proc/cpuinfo flags (or the emulated ones)."""

    model: str
    flags: frozenset[str]
    emulated: bool = False

    def has(self, *names: str) -> bool:
        return set(names) <= self.flags

    @property
    def reported(self) -> list[str]:
        """The flags fastdia's choices depend on, in `REPORTED` order."""
        return [f for f in REPORTED if f in self.flags]

    @property
    def kernel_variants(self) -> list[str]:
        """The builds of fastdia's C kernels this CPU can run, best first (`KERNEL_VARIANTS`)."""
        return [name for name, needs in KERNEL_VARIANTS if needs <= self.flags]

    @property
    def fastdia_kernels(self) -> bool:
        """fastdia's C kernels run here (AVX2 + FMA + F16C at least)."""
        return bool(self.kernel_variants)

    @property
    def native_bf16(self) -> bool:
        """bfloat16 dot products in hardware (AVX512-BF16 or AMX-BF16)."""
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def onednn_bf16(self) -> bool:
        """What torch asks before oneDNN's bfloat16 linear (`mkldnn_bf16_device_check`)."""
        return _ONEDNN_BF16_FLAGS <= self.flags or "avx_ne_convert" in self.flags


def _read_cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:  # not Linux: no flags, so every choice takes the portable path
        pass
    return model, flags


@functools.cache
def cpu_features() -> CpuFeatures:
    """This CPU's features, read once per process (`FASTDIA_CPU_FEATURES` replaces the flags)."""
    model, flags = _read_cpuinfo()
    forced = os.environ.get(ENV)
    if forced is not None:
        return CpuFeatures(model, frozenset(forced.replace(",", " ").split()), emulated=True)
    return CpuFeatures(model, frozenset(flags))


@functools.cache
def onednn_bf16() -> bool:
    """Whether oneDNN's bfloat16 linear runs here: the features say so and torch agrees (one tiny
    reorder, tried once: a hypervisor may show flags the oneDNN build does not use)."""
    if not cpu_features().onednn_bf16:
        return False
    import torch

    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=torch.bfloat16), 2)
    except (RuntimeError, AttributeError):
        return False
    return True


_announced: set[str] = set()


def announce(what: str) -> None:
    """Log a fallback the first time it is chosen in this process (the `fastdia.cpu` logger)."""
    if what not in _announced:
        _announced.add(what)
        cpu = cpu_features()
        log.info("fastdia: %s (CPU: %s%s)", what, cpu.model, ", features emulated" if cpu.emulated else "")
