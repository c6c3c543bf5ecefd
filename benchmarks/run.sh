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
