#!/usr/bin/env bash
# The GPU checks in one command (see tools/gpu_check.py): bash tools/gpu_check.sh --out DIR
# On a machine without a CUDA GPU it stops at once; `--device cpu --quick` runs every part at toy size.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python tools/gpu_check.py "$@"
