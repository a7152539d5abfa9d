#!/usr/bin/env bash
# One GPU, under 8 minutes: the CUDA path of the frozen baseline, with figures to paste in a note.
#
#   bash scripts/gpu_check.sh            (run from the repo root on a CUDA machine)
#
# 1. the machine: GPU, driver, torch/CUDA versions;
# 2. the CUDA-only tests (pinned-memory loader, fp8, real NVML, FlashAttention vs SDPA) that skip on CPU;
# 3. one table (bench/gpu_check.py): ours and nanochat's base_train on this card at d12 and d20 (set
#    NANOCHAT_GIT to a nanochat clone; without it, ours only), CORE examples/s batched vs the reference
#    scorer with the answers compared, and a short real `speedrun run` with its NVML telemetry.
# It uses the repo in place (PYTHONPATH), so it runs on a machine that cannot pip install. Without CUDA
# every CUDA part skips and the table says so.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu_check}
mkdir -p "$OUT"

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv,noheader || echo "no nvidia-smi"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo "== the CUDA-only tests"
timeout 150 python3 -m pytest -q -rs -p no:cacheprovider -m "not slow" tests/test_fp8.py tests/test_loader.py \
  tests/test_telemetry.py tests/test_attention.py -k "cuda or fp8 or real_gpus or flash" 2>&1 | tail -8

echo "== ours and nanochat on this card, CORE throughput, a real run"
timeout 330 python3 -m bench.gpu_check --out "$OUT"
