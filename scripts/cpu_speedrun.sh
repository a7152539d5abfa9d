#!/usr/bin/env bash
# The CPU speedrun end to end: data check, tokenizer, baseline training, eval, run record, statistics.
#
#   bash scripts/cpu_speedrun.sh [DATA_DIR] [SEEDS]
#
# Runs the frozen baseline on the `cpu-books` track (nanochat d4 on 2 CPU threads over a pinned
# public-domain books corpus in nanochat's parquet format; the last shard is validation). Without
# internet, DATA_DIR is a local copy of that corpus such as ../shared/data/pretrain. Each seed
# leaves runs/<run_id>/ with record.json, step events, telemetry, logs and the final checkpoint.
set -euo pipefail
DATA_DIR=${1:-../shared/data/pretrain}
SEEDS=${2:-1}
RUNS_DIR=${RUNS_DIR:-runs}

speedrun tracks
before=$(ls -d "$RUNS_DIR"/*-cpu-books-baseline-* 2>/dev/null | wc -l || true)
speedrun run baseline --track cpu-books --data-dir "$DATA_DIR" --seeds "$SEEDS" --runs-dir "$RUNS_DIR"
mapfile -t new_runs < <(ls -d "$RUNS_DIR"/*-cpu-books-baseline-* | tail -n +"$((before + 1))")
speedrun stats "${new_runs[@]}"
