"""Trains a tiny model on the golden batches; run alone or under `torchrun --nproc_per_node=2`.

Usage: python tests/dist_train_worker.py OUT_DIR   (the test compares the two launches)
Every launch sees the same global batches: micro-batch i of rank r at step s is golden batch
s·(world·accum) + r·accum + i, so 2 ranks × 1 micro-step equals 1 rank × 2 micro-steps.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from baseline.config import TrainConfig
from baseline.device import destroy_runtime, init_runtime
from baseline.train import train

SHARED = Path(__file__).resolve().parents[2] / "shared"
GOLDEN = Path(__import__("os").environ.get("SPEEDRUN_SHARED", SHARED)) / "golden"

CONFIG = TrainConfig(
    depth=2,
    head_dim=64,
    max_seq_len=256,
    vocab_size=4096,
    device_batch_size=2,
    total_batch_size=1024,
    num_iterations=6,
    eval_every=-1,
)


def golden_batches(rank: int, world_size: int, grad_accum: int):
    """A batch source with the trainer's interface: batches(resume_state) -> (inputs, targets, state)."""
    data = load_file(GOLDEN / "optim" / "batches.safetensors")
    n = data["inputs"].size(0)

    def batches(resume_state):
        k = 0 if resume_state is None else resume_state["k"]
        while True:
            step, i = divmod(k, grad_accum)
            g = (step * world_size * grad_accum + rank * grad_accum + i) % n
            k += 1
            yield data["inputs"][g], data["targets"][g], {"k": k}

    return batches


def main(out_dir: str, stop_after_step: int | None = None, resume: bool = False):
    torch.set_num_threads(1)
    runtime = init_runtime("cpu")
    grad_accum = CONFIG.total_batch_size // (CONFIG.device_batch_size * CONFIG.max_seq_len * runtime.world_size)
    try:
        return train(
            CONFIG,
            runtime,
            data_dir=GOLDEN.parent / "data" / "pretrain",
            tokenizer_dir=GOLDEN / "tokenizer",
            out_dir=out_dir,
            batches=golden_batches(runtime.rank, runtime.world_size, grad_accum),
            stop_after_step=stop_after_step,
            resume=resume,
            log=lambda _msg: None,
        )
    finally:
        destroy_runtime()


if __name__ == "__main__":
    main(sys.argv[1])
