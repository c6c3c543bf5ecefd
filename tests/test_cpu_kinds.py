"""Every variant on every CPU kind this machine can be: the CPU-kind matrix.

Each configuration runs tests/cpu_matrix.py (both families x float32/bfloat16 x none/int8/int4,
end to end) in a child process: this machine as it is, this machine without fastdia's kernels
(`FASTDIA_NO_KERNELS=1`), and every CPU kind it can emulate (tests/cpu_kinds.py: on an AVX-512
machine, an AVX2-only one such as AMD Zen 3, with torch and oneDNN held to AVX2 as well). So any
machine CI lands on runs its fast path and the fallback it has, and an AVX-512 machine also runs
the AVX2 fallbacks. A quick `fastdia bench` runs in each configuration too.

What must hold: no variant fails anywhere; greedy float32 codes are the same on every path (the
same math, rounding order aside); every other variant agrees with the same process's plain
float32 within the documented tolerance (README, "Every CPU"); and the modules each variant got
are the ones the CPU report says it uses, never a path the CPU lacks.
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
import sys
from pathlib import Path

import pytest

from tests.cpu_kinds import emulable, environment

ROOT = Path(__file__).resolve().parents[1]


def _configs() -> list[tuple[str, str | None, bool]]:
    configs = [("here", None, True), ("here, FASTDIA_NO_KERNELS=1", None, False)]
    return configs + [(f"emulated {kind}", kind, True) for kind in emulable()]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory) -> dict[str, dict]:
    """Each configuration's results, the children run side by side (one thread each)."""
    def run(config) -> dict:
        label, kind, kernels = config
        path = tmp_path_factory.mktemp("matrix") / "out.json"
        proc = subprocess.run([sys.executable, "-m", "tests.cpu_matrix", str(path)], cwd=ROOT, capture_output=True,
                              text=True, env=environment(kind, kernels), timeout=600)
        assert proc.returncode == 0, f"{label}: {proc.stderr[-3000:]}"
        return json.loads(path.read_text())

    configs = _configs()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip((c[0] for c in configs), pool.map(run, configs)))


# Teacher-forced top-1 agreement of the guided logits with float32 over 48 steps of the tiny
# models (README, "Every CPU"). Measured on an AVX-512 + AMX Xeon, with the kernels, without, and
# as an AVX2-only CPU: Dia-1 bfloat16 95-98%, int8 94-97%, int4 90-91%; Dia2 codebooks (mean / min)
# bfloat16 98 / 92%, int8 96-98 / 92-94%, int4 88-90 / 77-83%.
DIA1_FLOOR = {"float32": 0.999, "bfloat16": 0.90, "int8": 0.93, "int4": 0.85}
DIA2_FLOOR = {"float32": (1.0, 1.0, 1.0), "bfloat16": (0.95, 0.95, 0.85), "int8": (0.95, 0.93, 0.85),
              "int4": (0.9, 0.8, 0.7)}  # (action, codebook mean, codebook min)


def _weights(name: str) -> str:
    _, dtype, quantize = name.split("/")
    return dtype if quantize == "none" else quantize


def test_every_variant_runs_in_every_configuration(matrix):
    assert len(matrix) >= 2
    for label, result in matrix.items():
        assert len(result["variants"]) == 12, label
        for name, r in result["variants"].items():
            assert "error" not in r, f"{label}: {name}: {r.get('error')}"
            codes = r["codes"]
            width = 9 if name.startswith("dia1") else 8
            assert codes and all(len(row) == width for row in codes), (label, name)
            assert min(min(row) for row in codes) >= 0 and max(max(row) for row in codes) < 2048, (label, name)
            assert r["audio_samples"] > 0 and r["audio_finite"] and r["audio_peak"] > 0, (label, name)


def test_greedy_float32_codes_are_the_same_on_every_path(matrix):
    for family in ("dia1", "dia2"):
        codes = {label: result["variants"][f"{family}/float32/none"]["codes"] for label, result in matrix.items()}
        first = next(iter(codes.values()))
        assert all(c == first for c in codes.values()), {k: len(v) for k, v in codes.items()}


def test_every_variant_agrees_with_float32_within_tolerance(matrix):
    for label, result in matrix.items():
        for name, r in result["variants"].items():
            a, weights = r["agreement"], _weights(name)
            if name.startswith("dia1"):
                assert a["top1_agreement"] >= DIA1_FLOOR[weights], (label, name, a)
                if weights == "float32":
                    assert a["rel_logit_error"] < 1e-4, (label, name, a)
            else:
                action, mean, least = DIA2_FLOOR[weights]
                assert a["action_top1"] >= action and a["mean_codebook_top1"] >= mean, (label, name, a)
                assert a["min_codebook_top1"] >= least, (label, name, a)
                if weights == "float32":
                    assert max(a["rel_error_cb0"], a["rel_error_stages"]) < 1e-4, (label, name, a)


def test_each_variant_took_the_path_its_cpu_has(matrix):
    for label, result in matrix.items():
        report = result["report"]
        paths = {k: v["path"] for k, v in report["variants"].items()}
        kernels = report["kernels"] != "torch"
        assert (report["kernels_off_because"] is None) == kernels, label
        if "NO_KERNELS" in label:
            assert not kernels and "FASTDIA_NO_KERNELS" in report["kernels_off_because"]
        if "avx2" in label:  # what an AMD Zen 3 has: fastdia's AVX2 kernels, no oneDNN bfloat16, no AMX
            assert report["features_emulated"] and "avx512f" not in report["features"]
            assert not report["onednn_bf16"] and report["amx"] in ("not present", "not in this build")
            assert report["torch_cpu_capability"] == "AVX2"
            if "NO_KERNELS" not in label:
                assert report["kernels"].startswith("fastdia avx2 ") and report["kernel_dispatch"] == "avx2", report
                assert paths == {"float32": "fastdia", "bfloat16": "fastdia", "int8": "fastdia", "int4": "fastdia"}
        for name, r in result["variants"].items():
            kinds = r["modules"]
            if not kernels:
                assert not any(k.startswith("GemvLinear") or k.endswith("[fastdia]") for k in kinds), (label, name)
            else:
                assert not any(k.endswith("[torch]") for k in kinds), (label, name)
            if not report["onednn_bf16"]:
                assert "PackedLinear[bfloat16]" not in kinds, (label, name)
            if paths["bfloat16"] == "bf16-blocks" and _weights(name) == "bfloat16":
                assert kinds.get("Bf16Linear", 0) > 0, (label, name, kinds)


@pytest.mark.parametrize("label,kind,kernels", [c for c in _configs() if c[0] != "here"])
def test_quick_bench_runs(label, kind, kernels):
    """`fastdia bench` on the tiny model in the configuration (this machine's own is in test_bench)."""
    proc = subprocess.run([sys.executable, "-m", "fastdia", "bench", "--model", "tiny-random", "--steps", "4",
                           "--probe-mib", "16", "--dtype", "float32", "--quantize", "none,int8", "--json"], cwd=ROOT,
                          capture_output=True, text=True, env=environment(kind, kernels), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert [r["quantize"] for r in out["results"]] == ["none", "int8"]
    assert all(r["steps_per_s"] > 0 for r in out["results"])
    machine = out["machine"]
    assert machine["kernels"].startswith("torch") != kernels or kind == "avx2"
    assert set(machine["variants"]) == {"float32", "bfloat16", "int8", "int4"}
