"""What each variant runs on here: the report `fastdia info` and `fastdia bench` print.

Every choice below is the one the loaders make (fastdia.backends.cpu.packed.float_linear_path,
fastdia.quant.modules), read from the same features (fastdia.backends.cpu.features), so the
report cannot drift from what runs.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

import torch

from . import kernels
from .features import cpu_features, onednn_bf16
from .packed import float_linear_path

_FLOAT_PATHS = {
    "fastdia": "fastdia's {dtype} GEMV kernel{acts}, fused decode steps in C",
    "onednn": "oneDNN packed {dtype} linears, torch decode steps",
    "bf16-blocks": "bfloat16 weights widened to float32 in blocks (no oneDNN bfloat16 here), torch decode steps",
    "torch": "torch {dtype} linears",
}
_SHORT = {"fastdia": "fastdia's GEMV kernel", "onednn": "oneDNN", "bf16-blocks": "float32 blocks", "torch": "torch"}
# the instructions each kernel build multiplies with (fastdia.backends.cpu.kernel_build.VARIANTS)
_ISA = {"avx512bf16": "AVX-512 VNNI", "avx512": "AVX-512 VNNI", "avx2vnni": "AVX-VNNI on AVX2",
        "avx2": "AVX2 vpmaddwd"}
_LIBRARIES = ("numpy", "transformers", "onnxruntime", "ctranslate2", "faster-whisper", "fastapi", "ray")


def _float_path(dtype: torch.dtype) -> tuple[str, str]:
    path = float_linear_path(dtype)
    acts = ", float32 activations" if dtype == torch.bfloat16 else ""
    return path, _FLOAT_PATHS[path].format(dtype=str(dtype).removeprefix("torch."), acts=acts)


def variant_paths() -> dict[str, dict[str, str]]:
    """For each weight variant ("float32", "bfloat16", "int8", "int4"): its `path` (a short
    name) and a line saying what its projections and decode steps run on, on this CPU."""
    on = kernels.available()
    isa = _ISA.get(kernels.variant() or "", "")
    amx = ", AMX tiles for 4+ rows" if kernels.amx_status() == "on" else ""
    f32_path, f32 = _float_path(torch.float32)
    bf16_path, bf16 = _float_path(torch.bfloat16)
    out = {"float32": {"path": f32_path, "runs_on": f32}, "bfloat16": {"path": bf16_path, "runs_on": bf16}}
    if on:
        out["int8"] = {"path": "fastdia", "runs_on": f"fastdia's int8 kernel ({isa}{amx}), float32 "
                                                      f"activations, fused decode steps in C"}
        out["int4"] = {"path": "fastdia", "runs_on": f"fastdia's int4 kernel ({isa}), float32 activations, "
                                                     "fused decode steps in C"}
    else:
        out["int8"] = {"path": "torch", "runs_on": "torch's _weight_int8pack_mm, bfloat16 activations"}
        out["int4"] = {"path": "torch", "runs_on": "torch's _weight_int4pack_mm_for_cpu, bfloat16 activations"}
    # Dia-1's encoder in int8 mode is stored bfloat16 (fastdia.quant.modules.plan)
    out["int8"]["runs_on"] += f"; Dia-1's encoder (bfloat16): {_SHORT[bf16_path]}"
    return out


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_report() -> dict:
    """The CPU, its features, fastdia's kernel set (or why not), AMX, each variant's path, versions."""
    cpu = cpu_features()
    versions = {"fastdia": _version("fastdia"), "python": platform.python_version(), "torch": torch.__version__}
    versions |= {name: v for name in _LIBRARIES if (v := _version(name))}
    return {
        "cpu": cpu.model,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "features": cpu.reported,
        "features_emulated": cpu.emulated,
        "kernels": f"fastdia {kernels.variant()} ({kernels.library_origin()})" if kernels.available() else "torch",
        "kernel_dispatch": kernels.dispatch(),
        "kernel_builds": cpu.kernel_variants,
        "kernels_off_because": kernels.unavailable_reason(),
        "amx": kernels.amx_status(),
        "onednn_bf16": onednn_bf16(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "variants": variant_paths(),
        "codecs": codec_paths(),
        "versions": versions,
    }


def codec_paths() -> str:
    """What the codecs (DAC, Mimi) run on here in float32 (fastdia.backends.cpu.codec_ops)."""
    if kernels.available():
        return ("convolutions per item as matrix products, narrow ones and DAC's Snake in fastdia's C, Mimi's "
                "projections on the GEMV kernel")
    return "convolutions per item as matrix products; Snake and Mimi's projections in torch"


def report_lines(report: dict) -> list[str]:
    """`cpu_report()` as aligned text lines."""
    kern = report["kernels"] + (f" ({report['kernels_off_because']})" if report["kernels_off_because"] else "")
    lines = [
        f"cpu                {report['cpu']} ({report['cpus']} CPUs, {report['threads']} torch threads)",
        f"features           {' '.join(report['features']) or 'none known'}"
        f"{'  (emulated: FASTDIA_CPU_FEATURES)' if report['features_emulated'] else ''}",
        f"kernels            {kern}; AMX {report['amx']}; torch's ATen kernels {report['torch_cpu_capability']}",
        f"dispatch           {report['kernel_dispatch']} (builds this CPU runs, best first: "
        f"{', '.join(report['kernel_builds']) or 'none'}; AMX > AVX-512 > AVX2-VNNI > AVX2 > torch)",
    ]
    for name, v in report["variants"].items():
        lines.append(f"  {name:16s} {v['runs_on']}")
    if report.get("codecs"):
        lines.append(f"codecs             {report['codecs']}")
    lines.append("versions           " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    return lines
