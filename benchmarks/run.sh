#!/usr/bin/env bash
# Reproduce benchmarks/README.md on this machine. Run on an otherwise idle machine: check
# `cat /proc/loadavg` first; every variant runs in its own subprocess (peak RSS is its own).
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
mkdir -p "$out"
host=$(hostname)
# 1. matmul micro-benchmark (decoder shapes, M = 2 rows)
python benchmarks/matvec.py --threads 2 --json "$out/matvec-$host.json"
# 2. decode speed, memory, against transformers (full-size random weights)
fastdia bench --threads 2 --steps 32 --dtype float32,bfloat16 --quantize none,int8,int4 \
    --compare transformers --json > "$out/bench-$host.json"
# 3. quantization quality, teacher-forced 64 steps, full size and tiny
fastdia bench --threads 2 --steps 2 --dtype float32,bfloat16 --quantize none,int8,int4 --quality \
    --json > "$out/quality-full-$host.json"
fastdia bench --threads 2 --steps 2 --model tiny-random --dtype float32,bfloat16 --quantize none,int8,int4 \
    --quality --json > "$out/quality-tiny-$host.json"
# 4. Dia2-2B: speed, memory, time to first audio, against fastdia's own plain-torch path
fastdia bench --threads 2 --steps 10 --model dia2-2b-random --dtype float32 --quantize none,int8,int4 \
    --compare plain --json > "$out/dia2-bench-$host.json"
# 4b. Dia2-2B against the original Dia2 runtime (nari-labs/dia2) on the same weights, when it is
#     installed (`pip install --no-deps git+https://github.com/nari-labs/dia2 && pip install sphn`)
if python -c "import dia2.generation" 2>/dev/null; then
    fastdia bench --threads 2 --steps 16 --model dia2-2b-random --dtype float32 --quantize none,int8,int4 \
        --compare original,plain --json > "$out/dia2-original-$host.json"
fi
# 5. batches: aggregate script-steps/s at batch 1, 2, 4, 8 in one process, each with its roofline
python benchmarks/batch_scaling.py --family dia1 --model dia-1.6b-random --quantize int8 \
    --out "$out/batch-dia1-int8-$host.json"
python benchmarks/batch_scaling.py --family dia2 --model dia2-2b-random --quantize int8 \
    --out "$out/batch-dia2-int8-$host.json"
