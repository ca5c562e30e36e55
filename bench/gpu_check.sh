#!/usr/bin/env bash
# The GPU check in one call, from the repository root or anywhere:
#
#   bash bench/gpu_check.sh                           # on a machine with a CUDA GPU (< 8 minutes)
#   CUDA_VISIBLE_DEVICES= bash bench/gpu_check.sh     # the CPU fallback (tiny steps, about a minute)
#
# It installs transferlab into .venv if it is not importable, runs the gpu tests, the quick
# benchmark and the quick study on the GPU, and writes bench/GPU_RESULTS.md (copied to $OUT when
# set). The logic is in bench/gpu_check.py (standard library only; --help lists its options).
set -u
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-$(command -v python3 || command -v python)}
if [ -z "$PY" ]; then
    echo "gpu_check: no python3 on PATH; set PYTHON=/path/to/python" >&2
    exit 1
fi
exec "$PY" bench/gpu_check.py "$@"
