#!/usr/bin/env bash
# One GPU, under 8 minutes: the CUDA path of the frozen baseline, with figures to paste in a note.
#
#   bash scripts/gpu_check.sh            (run from the repo root on a CUDA machine)
#
# 1. the machine: GPU, driver, torch/CUDA versions;
# 2. NVML telemetry samples, and the CUDA-only tests (pinned-memory loader, fp8, real NVML) that skip on CPU;
# 3. training throughput at depth 12 and 20 (bf16, torch.compile, SSSL windows): tok/s, MFU, memory.
# It uses the repo in place (PYTHONPATH), so it runs on a machine that cannot pip install.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu_check}
mkdir -p "$OUT"

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version())"

echo "== NVML telemetry (5 s of samples) and the CUDA-only tests"
timeout 60 python3 -m harness.telemetry 5
timeout 180 python3 -m pytest -q -rs -p no:cacheprovider -m "not slow" tests/test_fp8.py tests/test_loader.py \
  tests/test_telemetry.py -k "cuda or fp8 or real_gpus" 2>&1 | tail -8

echo "== training throughput (30 steps each, median of steps > 10)"
timeout 300 python3 bench/gpu_throughput.py --depths 12 20 --steps 30 --json "$OUT/throughput.json"
