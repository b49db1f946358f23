#!/usr/bin/env bash
# Run benchmarks/gpu_check.py and keep everything it says: benchmarks/gpu_check.sh [OUT_DIR] [gpu_check.py args]
# OUT_DIR (default gpu-check/) receives gpu.json, gpu.md, gpu_check.log and nvidia-smi.txt. Exit status: the check's.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
shift || true
mkdir -p "$out"
py="${PYTHON:-.venv/bin/python}"
[ -x "$py" ] || py=python3
nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not found" >"$out/nvidia-smi.txt"
"$py" benchmarks/gpu_check.py --out "$out/gpu.json" "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
