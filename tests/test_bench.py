"""`fastdia bench` end to end on the tiny preset (subprocesses, as a user runs it). No timings asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def bench(*args: str, timeout: float = 300, model: str = "tiny-random") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastdia.cli.main", "bench", "--model", model,
                           "--probe-mib", "128", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_bench_prints_the_fields():
    r = bench("--steps", "4", "--threads", "1")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for field in ("memory read bandwidth", "steps/s", "realtime", "bandwidth ceiling", "first step",
                  "peak RSS", "prefill ms", "GB/step", "roofline:", "GMAC/step", "AMX"):
        assert field in out, (field, out)
    assert "fastdia float32" in out  # auto is float32 for a tiny model


def test_bench_json_variants_transformers_and_quality():
    r = bench("--steps", "4", "--threads", "1", "--dtype", "float32", "--quantize", "none,int8",
              "--compare", "transformers", "--quality", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)  # progress lines go to stderr, stdout is JSON only
    assert data["bandwidth"]["read_GBps"] > 0
    assert data["machine"]["amx"] in ("on", "not present", "not in this build") or data["machine"]["amx"].startswith("off (")
    assert "cpu" in data["machine"] and data["machine"]["kernels"]
    assert data["machine"]["dispatch"].split()[0] in ("torch", *data["machine"]["kernel_builds"])
    impls = [(x["impl"], x["dtype"], x["quantize"]) for x in data["results"]]
    assert impls == [("transformers", "float32", "none"), ("fastdia", "float32", "none"),
                     ("fastdia", "float32", "int8")]
    for x in data["results"]:
        for key in ("steps_per_s", "ttfs_ms", "peak_rss_bytes", "weight_bytes_per_step", "ceiling_steps_per_s",
                    "fraction_of_ceiling", "realtime_factor", "vs_transformers", "bandwidth_after_run_GBps",
                    "fraction_of_ceiling_after_run"):
            assert x[key] is not None and x[key] > 0, (key, x)
    assert data["results"][0]["vs_transformers"] == pytest.approx(1.0)
    for x in data["results"][1:]:  # the streaming path's time to first audio, fastdia variants
        assert x["ttfa_s"] > 0 and x["ttfa_chunk_s"] > 0 and x["codec"] == "tiny-random", x
        _check_roofline(x)
    int8 = data["results"][2]
    assert int8["weight_bytes_per_step"] < data["results"][1]["weight_bytes_per_step"] / 2
    assert "running fastdia float32 int8" in r.stderr
    (q,) = data["quality"]  # float32 itself is the reference, not a variant
    assert q["quantize"] == "int8" and q["steps"] == 64
    assert 0.9 <= q["top1_agreement"] <= 1 and 0 < q["rel_logit_error"] < 0.05


def _check_roofline(x: dict) -> None:
    roof = x["roofline"]
    assert set(x["kernel_rates"]) == set(x["macs_per_step"]), x
    assert roof["bound_steps_per_s"] == pytest.approx(1e3 / max(roof["memory_ms"], roof["compute_ms"]))
    assert roof["limit"] in ("memory", "compute")


def test_bench_dia2_report_with_roofline_profile_and_quality():
    r = bench("--steps", "3", "--threads", "1", "--dtype", "float32", "--quantize", "none,int8", "--compare", "plain",
              "--profile", "--quality", "--json", model="dia2-tiny-random", timeout=600)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["family"] == "dia2"
    impls = [(x["impl"], x["quantize"]) for x in data["results"]]
    assert impls == [("fastdia-plain", "none"), ("fastdia", "none"), ("fastdia", "int8")]
    for x in data["results"]:
        for key in ("steps_per_s", "realtime_factor", "fraction_of_ceiling", "ttfa_s", "peak_rss_bytes", "vs_plain",
                    "bandwidth_after_run_GBps", "fraction_of_ceiling_after_run"):
            assert x[key] is not None and x[key] > 0, (key, x)
        assert x["fraction_of_ceiling_after_run"] == pytest.approx(
            x["steps_per_s"] * x["weight_bytes_per_step"] / (x["bandwidth_after_run_GBps"] * 1e9))
        _check_roofline(x)
    assert "int8" in data["results"][2]["macs_per_step"]
    assert "roofline:" in r.stderr and "from DRAM" in r.stderr and "probe right after the run" in r.stderr
    for p in data["profile"]:  # where a step goes, and the depformer's cache estimate
        f = p["cache"]["cache_fraction"]  # None when this run's cache and DRAM rates are too close to tell
        assert p["ms_per_step"]["step"] > 0 and p["cache"]["cache_GBps"] > 0 and (f is None or 0 <= f <= 1)
        ret = p["cache"]["retention"]  # the L3's hold over time: a rate per idle gap
        assert len(ret["GBps"]) == len(ret["gaps_ms"]) and all(v > 0 for v in ret["GBps"])
    assert "cache retention:" in r.stderr
    (q,) = data["quality"]
    assert q["quantize"] == "int8" and 0 < q["mean_codebook_top1"] <= 1 and 0 < q["action_top1"] <= 1
    assert 0 <= q["mean_codebook_tv"] <= q["max_codebook_tv"] <= 1 and len(q["codebook_tv"]) == 8


def test_bench_bad_flag_is_a_usage_error():
    r = bench("--quantize", "int3")
    assert r.returncode == 2 and "unknown quantization" in r.stderr


def test_bench_runs_the_onnxruntime_backend_beside_torch(tmp_path, monkeypatch):
    """`--backend torch,onnxruntime`: each quantization on both backends, onnxruntime's export made
    once into the export cache (float32 and int4 here), with the same report fields."""
    monkeypatch.setenv("FASTDIA_ONNX_CACHE", str(tmp_path))
    r = bench("--steps", "4", "--threads", "1", "--dtype", "float32", "--quantize", "none,int4",
              "--backend", "torch,onnxruntime", "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    rows = [(x["impl"], x["quantize"]) for x in data["results"]]
    assert rows == [("fastdia", "none"), ("fastdia", "int4"), ("onnxruntime", "none"), ("onnxruntime", "int4")]
    for x in data["results"]:
        for key in ("steps_per_s", "peak_rss_bytes", "weight_bytes_per_step", "ceiling_steps_per_s",
                    "fraction_of_ceiling"):
            assert x[key] is not None and x[key] > 0, (key, x)
    ort = data["results"][2:]
    assert ort[1]["weight_bytes_per_step"] < ort[0]["weight_bytes_per_step"]  # int4 graph is smaller
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-random", "tiny-random-int4"]
    bad = bench("--backend", "tensorrt")
    assert bad.returncode == 2 and "fastdia: error:" in bad.stderr and "--backend" in bad.stderr
