#!/usr/bin/env bash
# The GPU checks in one command (see benchmarks/gpu_check.py): bash benchmarks/gpu_check.sh --out DIR
# On a machine without a CUDA GPU it stops at once; `--device cpu --quick` runs every part at toy size.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
