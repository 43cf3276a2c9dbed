#!/usr/bin/env bash
# The embedded default, end to end on a laptop CPU: synthetic MSSL -> the untrained model's results ->
# MSP training (stage 1 sky + ground, stage 2) -> the trained checkpoint tested in all three protocols.
# DEMO_DATA / DEMO_OUT move the data and output folders; DEMO_OPTS adds KEY VALUE overrides to every run
# (tools/gpu_check.sh uses them).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=configs/demo/mssl_synthetic.yml
DATA=${DEMO_DATA:-data/mssl_synthetic}
OUT=${DEMO_OUT:-logs/demo_mssl_synthetic}
read -r -a OPTS <<< "${DEMO_OPTS:-}"

[ -d "$DATA/query" ] || python -m datasets.synthetic_mssl "$DATA"
python test_clipreid.py --config_file "$CONFIG" DATASETS.ROOT_DIR "$DATA" "${OPTS[@]}" OUTPUT_DIR "$OUT/untrained"
python train_clipreid.py --config_file "$CONFIG" DATASETS.ROOT_DIR "$DATA" "${OPTS[@]}" OUTPUT_DIR "$OUT"
CHECKPOINT=$(ls -t "$OUT"/ViT-Tiny-16_*.pth | head -n 1)
python test_clipreid.py --config_file "$CONFIG" DATASETS.ROOT_DIR "$DATA" "${OPTS[@]}" OUTPUT_DIR "$OUT/test" TEST.WEIGHT "$CHECKPOINT" \
    TEST.VISUALIZE True TEST.VISUALIZE_QUERIES 5 TEST.VISUALIZE_TOPK 8
python tools/compare_results.py "$OUT/untrained" "$OUT/test"
