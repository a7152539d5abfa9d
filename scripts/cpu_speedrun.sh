#!/usr/bin/env bash
# The CPU speedrun end to end, nanochat's speedrun.sh for this project: from nothing to your run verified
# on a local leaderboard and a chat with it, in about ten minutes on 2 cores.
#
#   bash scripts/cpu_speedrun.sh [DATA_DIR] [--seeds N] [--chat-data DIR] [--chat-steps N] [--port P] [--no-serve]
#
# 1. `speedrun run baseline --track cpu-books`: data check, tokenizer, warm-up, the timed training, eval
#    and a record per seed (runs/<run_id>/), then statistics over the seeds;
# 2. `speedrun chat-tune`: a short chat tune of the best run (CPU defaults: under two minutes) on
#    DIR/train.jsonl + val.jsonl, by default ../shared/data/chat, else databricks-dolly-15k downloaded;
# 3. `speedrun board`: the runs on a local leaderboard (SQLite and uploads under runs/board), verified by
#    the real verifier, and the board's chat asked one question; it prints the URLs of the run page and the
#    chat and serves them on 127.0.0.1 until Ctrl-C (--no-serve: stops when done, for scripts and CI).
# Without internet, DATA_DIR is a local copy of the cpu-books corpus such as ../shared/data/pretrain.
# RUNS_DIR (default runs) and TRACK (default cpu-books; a name or a .toml, the tests use a tiny one) are
# read from the environment.
set -euo pipefail
DATA_DIR=../shared/data/pretrain
SEEDS=1
CHAT_DATA=../shared/data/chat
CHAT_STEPS=()
BOARD_ARGS=()
RUNS_DIR=${RUNS_DIR:-runs}
TRACK=${TRACK:-cpu-books}
export PYTHONUNBUFFERED=1  # every progress line shows as it happens, through a pipe (| tee) too
while (($#)); do
  case $1 in
    --seeds) SEEDS=$2; shift 2 ;;
    --chat-data) CHAT_DATA=$2; shift 2 ;;
    --chat-steps) CHAT_STEPS=(--steps "$2"); shift 2 ;;
    --port) BOARD_ARGS+=(--port "$2"); shift 2 ;;
    --no-serve) BOARD_ARGS+=(--no-serve); shift ;;
    -*) echo "cpu_speedrun.sh: unknown option $1: see the usage at the top of scripts/cpu_speedrun.sh" >&2; exit 2 ;;
    *) DATA_DIR=$1; shift ;;
  esac
done

stage() { printf '\n==> [%d:%02d] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

stage "1/3 the baseline speedrun on $TRACK: data, tokenizer, warm-up, timed training, eval, record"
speedrun tracks
speedrun run baseline --track "$TRACK" --data-dir "$DATA_DIR" --seeds "$SEEDS" --runs-dir "$RUNS_DIR"
# The campaign this run registered, its runs best first: the board's chat serves the best verified one.
mapfile -t runs < <(python - "$RUNS_DIR" <<'EOF'
import sys
from pathlib import Path
from protocol.record import CAMPAIGNS_DIR, read_campaign, read_record
runs_dir = Path(sys.argv[1])
campaign = read_campaign(max((runs_dir / CAMPAIGNS_DIR).glob("*.json"), key=lambda p: p.stat().st_mtime))
sign = -1 if campaign.track.higher_is_better else 1
values = {run_id: read_record(runs_dir / run_id).result.value for run_id in campaign.run_ids}
print("\n".join(str(runs_dir / r) for r in sorted(values, key=lambda r: sign * values[r])))
EOF
)
speedrun stats "${runs[@]}"

stage "2/3 chat tuning ${runs[0]##*/}"
if [[ ! -f $CHAT_DATA/train.jsonl ]]; then
  CHAT_DATA=$RUNS_DIR/chat-data
  [[ -f $CHAT_DATA/train.jsonl ]] || speedrun data chat --out "$CHAT_DATA"
fi
speedrun chat-tune "${runs[0]}" --data-dir "$CHAT_DATA" "${CHAT_STEPS[@]}"

stage "3/3 the local board: serve, submit, verify, chat"
# exec: Ctrl-C or a kill of this script reaches `speedrun board`, which stops the server it started.
exec speedrun board "${runs[@]}" --track "$TRACK" --data-dir "$DATA_DIR" "${BOARD_ARGS[@]}"
