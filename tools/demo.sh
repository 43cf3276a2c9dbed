#!/usr/bin/env bash
# The embedded default, end to end on a laptop CPU: synthetic MSSL -> the untrained model's results ->
# MSP training (stage 1 sky + ground, stage 2) -> the trained checkpoint tested in all three protocols.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=configs/demo/mssl_synthetic.yml
DATA=data/mssl_synthetic
OUT=logs/demo_mssl_synthetic

[ -d "$DATA/query" ] || python -m datasets.synthetic_mssl "$DATA"
python test_clipreid.py --config_file "$CONFIG" OUTPUT_DIR "$OUT/untrained"
python train_clipreid.py --config_file "$CONFIG" OUTPUT_DIR "$OUT"
CHECKPOINT=$(ls -t "$OUT"/ViT-Tiny-16_*.pth | head -n 1)
python test_clipreid.py --config_file "$CONFIG" OUTPUT_DIR "$OUT/test" TEST.WEIGHT "$CHECKPOINT" \
    TEST.VISUALIZE True TEST.VISUALIZE_QUERIES 5 TEST.VISUALIZE_TOPK 8
python tools/compare_results.py "$OUT/untrained" "$OUT/test"
