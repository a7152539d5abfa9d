#!/usr/bin/env bash
# The CPU speedrun, end to end on a laptop-class machine: tokenizer, baseline training, val bpb.
#
#   bash scripts/cpu_speedrun.sh [DATA_DIR] [OUT_DIR]
#
# DATA_DIR holds nanochat-format parquet shards (the last is the val split); without internet use
# a local corpus such as ../shared/data/pretrain. The model is nanochat's d4 at the CPU settings
# (head dim 64, vocab 8192, rows of 512 tokens, 16,384 tokens per step, full-context layers).
set -euo pipefail
DATA_DIR=${1:-../shared/data/pretrain}
OUT_DIR=${2:-out/cpu_speedrun}
STEPS=${STEPS:-40}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

if [ ! -f "$OUT_DIR/tokenizer/tokenizer.json" ]; then
  speedrun tokenizer train --data-dir "$DATA_DIR" --out "$OUT_DIR/tokenizer" --vocab-size 8192 --max-chars 50000000
fi
speedrun config --depth 4 --head-dim 64 --max-seq-len 512 --vocab-size 8192 --window-pattern L \
  --device-batch-size 32 --total-batch-size 16384 --num-iterations "$STEPS"
speedrun train --depth 4 --head-dim 64 --max-seq-len 512 --window-pattern L \
  --device-batch-size 32 --total-batch-size 16384 --num-iterations "$STEPS" \
  --eval-every 20 --eval-tokens 262144 \
  --data-dir "$DATA_DIR" --tokenizer "$OUT_DIR/tokenizer" --out "$OUT_DIR/train"
