"""The CPU kinds fastdia meets, as environments that make this machine choose as they would.

A kind is emulated downwards only: on an AVX-512 machine, AVX2-only can be emulated (fastdia's
choices from `FASTDIA_CPU_FEATURES`; torch's own kernels from `ATEN_CPU_CAPABILITY`, oneDNN's
from `ONEDNN_MAX_CPU_ISA` — which makes torch refuse oneDNN's bfloat16 linear exactly as an AMD
Zen 3 does — MKL's from `MKL_ENABLE_INSTRUCTIONS`, CTranslate2's from `CT2_FORCE_CPU_ISA`).
The machine's own kind needs nothing.
"""

from __future__ import annotations

import os

from fastdia.backends.cpu.features import ENV, cpu_features

# /proc/cpuinfo flags of a 2-vCPU AMD EPYC Zen 3 VM (AVX2 + FMA, no AVX-512), the ones that matter.
ZEN3 = ("sse sse2 ssse3 sse4_1 sse4_2 popcnt avx avx2 fma f16c bmi1 bmi2 movbe aes pclmulqdq sha_ni "
        "vaes vpclmulqdq adx rdseed")
# AMD Zen 4: AVX-512 with VNNI and BF16, no AMX.
ZEN4 = ZEN3 + (" avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi avx512_vbmi2 "
               "gfni avx512_vnni avx512_bitalg avx512_vpopcntdq")

KINDS = {
    "avx2": {ENV: ZEN3, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2", "CT2_FORCE_CPU_ISA": "AVX2"},
    "avx512": {ENV: ZEN4, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
}
# A kind is worth emulating where this machine has all of its features and one that changes
# fastdia's choices beyond them.
_MORE = {"avx2": "avx512f", "avx512": "amx_int8"}


def emulable() -> list[str]:
    """The kinds this machine can stand in for, below its own."""
    flags = cpu_features().flags
    return [k for k, more in _MORE.items() if set(KINDS[k][ENV].split()) <= flags and more in flags]


def environment(kind: str | None, kernels: bool = True) -> dict[str, str]:
    """os.environ for a child process of CPU kind `kind` (None: this machine as it is), with
    fastdia's kernels on or off (`FASTDIA_NO_KERNELS`)."""
    emulation = {"FASTDIA_NO_KERNELS"}.union(*KINDS.values())
    env = {k: v for k, v in os.environ.items() if k not in emulation}
    if kind is not None:
        env.update(KINDS[kind])
    if not kernels:
        env["FASTDIA_NO_KERNELS"] = "1"
    return env
