"""The 25 variants a new user tries, through the CLI, on this CPU or as a CPU kind it can emulate.

    python benchmarks/cpu_variants.py [--emulate avx2|avx512] [--json OUT]

Both families x float32 / bfloat16 x none / int8 / int4, with fastdia's kernels and with
`FASTDIA_NO_KERNELS=1` (24 `fastdia say` runs), plus a quick `fastdia bench`: each one's exit
status, wall time and the report's path for it. `--emulate` runs them as tests/cpu_kinds.py's CPU
kind (fastdia's choices, torch's ATen kernels, oneDNN, MKL and CTranslate2 held to that ISA).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cpu_kinds import environment  # noqa: E402

SCRIPT = "[S1] Hello there. [S2] Hi!"
MODELS = {"dia1": "tiny-random", "dia2": "dia2-tiny-random"}


def _run(cmd: list[str], env: dict) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    return {"rc": proc.returncode, "seconds": round(time.perf_counter() - start, 2), "last_line": last[-300:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--emulate", choices=["avx2", "avx512"], default=None)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kernels in (True, False):
            env = environment(args.emulate, kernels)
            for family, model in MODELS.items():
                for dtype in ("float32", "bfloat16"):
                    for quantize in ("none", "int8", "int4"):
                        cmd = [sys.executable, "-m", "fastdia", "say", SCRIPT, "-o", f"{tmp}/out.wav", "--model", model,
                               "--dtype", dtype, "--quantize", quantize, "--seed", "1", "--max-tokens", "400", "-q"]
                        if family == "dia2":
                            cmd[cmd.index("--max-tokens")] = "--max-steps"
                        rows.append({"family": family, "dtype": dtype, "quantize": quantize, "kernels": kernels}
                                    | _run(cmd, env))
                        print(f"{family} {dtype:8s} {quantize:4s} kernels={'on ' if kernels else 'off'} "
                              f"rc={rows[-1]['rc']} {rows[-1]['seconds']:6.1f} s", flush=True)
        env = environment(args.emulate, True)
        bench = _run([sys.executable, "-m", "fastdia", "bench", "--model", "tiny-random", "--steps", "8",
                      "--probe-mib", "64", "--dtype", "float32,bfloat16", "--quantize", "none,int8,int4"], env)
        rows.append({"family": "dia1", "bench": True} | bench)
        print(f"bench rc={bench['rc']} {bench['seconds']:.1f} s", flush=True)
        info = subprocess.run([sys.executable, "-m", "fastdia", "info", "--json"], capture_output=True, text=True,
                              env=env, cwd=ROOT, check=True)
    out = {"emulated": args.emulate, "system": json.loads(info.stdout), "runs": rows,
           "clean": sum(r["rc"] == 0 for r in rows), "total": len(rows)}
    print(f"{out['clean']}/{out['total']} clean on {out['system']['cpu']}"
          f"{' as ' + args.emulate if args.emulate else ''}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0 if out["clean"] == out["total"] else 1


if __name__ == "__main__":
    sys.exit(main())
