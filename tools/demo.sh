#!/usr/bin/env bash
# The embedded default, end to end on a laptop CPU: synthetic MSSL -> the untrained model's results ->
# MSP training (stage 1 sky + ground, stage 2) -> the trained checkpoint tested in all three protocols.
# DEMO_DATA / DEMO_OUT move the data and output folders; DEMO_OPTS adds KEY VALUE overrides to every run
# (benchmarks/gpu_check.sh uses them).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=configs/demo/mssl_synthetic.yml
DATA=${DEMO_DATA:-data/mssl_synthetic}
OUT=${DEMO_OUT:-logs/demo_mssl_synthetic}
PYTHON=${PYTHON:-python}  # e.g. PYTHON=python3 where only python3 is on the PATH
read -r -a OPTS <<< "${DEMO_OPTS:-}"

[ -d "$DATA/query" ] || "$PYTHON" -m datasets.synthetic_mssl "$DATA"
"$PYTHON" test_clipreid.py --config_file "$CONFIG" DATASETS.ROOT_DIR "$DATA" "${OPTS[@]}" OUTPUT_DIR "$OUT/untrained"
"$PYTHON" train_clipreid.py --config_file "$CONFIG" DATASETS.ROOT_DIR "$DATA" "${OPTS[@]}" OUTPUT_DIR "$OUT"
CHECKPOINT=$(ls -t "$OUT"/ViT-Tiny-16_*.pth | head -n 1)
"$PYTHON" test_clipreid.py --config_file "$CONFIG" DATASETS.ROOT_DIR "$DATA" "${OPTS[@]}" OUTPUT_DIR "$OUT/test" TEST.WEIGHT "$CHECKPOINT" \
    TEST.VISUALIZE True TEST.VISUALIZE_QUERIES 5 TEST.VISUALIZE_TOPK 8
"$PYTHON" tools/compare_results.py "$OUT/untrained" "$OUT/test"
