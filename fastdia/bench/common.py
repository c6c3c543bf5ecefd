"""What every bench module shares: child processes (one variant each, a fresh interpreter), the
bandwidth probe, peak memory, and the table's formatting."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

DEFAULT_TEXT = (
    "[S1] Dia is an open weights text to dialogue model. [S2] You get full control over scripts "
    "and voices. [S1] Wow. Amazing. (laughs) [S2] Try it now on GitHub."
)
RESULT_TAG = "FASTDIA_BENCH_RESULT "


def setup_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure_bandwidth(mib: int = 1024, reps: int = 7) -> dict:
    """Best-of-`reps` read (sum) and copy bandwidth over a `mib` MiB float32 tensor, GB/s.

    The tensor must dwarf the last-level cache (1 GiB by default) to measure DRAM.
    """
    return child_bandwidth({"mib": mib, "reps": reps})


def _best_seconds(fn, reps: int) -> float:
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def child_bandwidth(spec: dict) -> dict:
    import torch

    n = spec.get("mib", 1024) * (1 << 20) // 4
    x = torch.ones(n)
    y = torch.empty_like(x)
    x.sum()
    y.copy_(x)
    reps = spec.get("reps", 7)
    read = _best_seconds(x.sum, reps)
    copy = _best_seconds(lambda: y.copy_(x), reps)
    nbytes = n * 4
    return {"read_GBps": nbytes / read / 1e9, "copy_GBps": 2 * nbytes / copy / 1e9}


AFTER_RUN_PROBE_MIB = 256  # 8x this machine kind's 32 MB L3; freed before anything else runs


def read_bandwidth_now(mib: int = AFTER_RUN_PROBE_MIB, reps: int = 5) -> float:
    """Best-of-`reps` read bandwidth (GB/s) of a `mib` MiB sum, taken in a variant's own process
    right after its timed steps (and after its peak RSS is read; the tensor is freed on return).

    The bench's first probe runs minutes before the last variant, and on a shared machine the
    bandwidth drifts in between (this VM kind: 27-72 GB/s within an hour); this one is the
    bandwidth the run itself last saw, so each row also gets a ceiling fraction of its own moment.
    """
    import torch

    x = torch.ones(mib * (1 << 20) // 4)
    x.sum()
    return x.numel() * 4 / _best_seconds(x.sum, reps) / 1e9


def set_after_run_fraction(r: dict) -> str:
    """Sets r["fraction_of_ceiling_after_run"] from the variant's own after-run probe; returns the
    log suffix that reports it ("" when the child took none)."""
    bw = r.get("bandwidth_after_run_GBps")
    if not bw or not r.get("steps_per_s"):
        return ""
    r["fraction_of_ceiling_after_run"] = r["steps_per_s"] * r["weight_bytes_per_step"] / (bw * 1e9)
    return f"; probe right after the run {bw:.1f} GB/s: {100 * r['fraction_of_ceiling_after_run']:.0f}% of that ceiling"


def run_child(spec: dict, timeout: float | None = None) -> dict:
    """Run one measurement in a fresh interpreter with `spec["threads"]` threads."""
    env = dict(os.environ)
    threads = str(spec["threads"])
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false",
               TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "fastdia.bench.runner", "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    raise RuntimeError(f"benchmark child {spec['kind']} failed (exit {proc.returncode}):\n{tail}")


def split_list(value: str | None, default: str) -> list[str]:
    return [v.strip() for v in (value or default).split(",") if v.strip()]


def ttfa(r: dict) -> str:
    return "-" if r.get("ttfa_s") is None else f"{r['ttfa_s']:.2f}"


def pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.0f}%"


def gb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f}"


def torch_version() -> str:
    import torch

    return torch.__version__
