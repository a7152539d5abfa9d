"""The warm-up process: compile and autotune in a throwaway process, so the timed one starts warm.

    python -m harness.warmup RUN_DIR        # before harness.trainer_process, with the same run.json

Every step of a timed run counts (protocol/timing.py), so the compile and autotune work that
nanochat hides in its untimed steps 0..10 is done here instead: the same model, the same shapes, the
same submission hooks, WARMUP_STEPS optimizer steps on random tokens, with torch.compile's on-disk
caches (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR: the run's compile cache) filled for the timed
process to reuse. Then it exits and everything it built is thrown away.

Why a separate process and random tokens: restoring a model after an in-process warm-up is not
enough, because module globals persist and a plug-in could keep weights it trained while warming up.
This process can keep nothing but files, it reads no data (the guard refuses every shard: random
tokens need none), and whatever it leaves in its scratch directory is deleted. The timed process is
started fresh afterwards. The warm-up's seconds are reported as timing.warmup_time_s, never timed.
"""

import shutil
import sys
from dataclasses import replace
from pathlib import Path

import torch

from baseline.config import TrainConfig
from baseline.dataset import list_shards
from baseline.device import destroy_runtime, init_runtime
from baseline.train import train
from harness.guard import Guard, GuardViolation
from protocol.record import EXIT_INVALID, EXIT_OK, read_spec
from submissions.contract import SubmissionError, load_submission

WARMUP_STEPS = 2  # step 0 compiles everything; step 1 catches what recompiles once (schedule, optimizer state)
SCRATCH = "warmup"


def random_batches(config: TrainConfig, device: torch.device, seed: int):
    """(inputs, targets, state) of the trainer's shapes, from random tokens: what warming up needs, no data."""
    gen = torch.Generator().manual_seed(seed)

    def batches(_state):
        while True:
            tokens = torch.randint(
                0, config.vocab_size, (config.device_batch_size, config.max_seq_len + 1), generator=gen
            )
            tokens = tokens.to(device)
            yield tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous(), {}

    return batches


def main(run_dir: str) -> int:
    run_dir = Path(run_dir)
    spec = read_spec(run_dir)
    scratch = run_dir / SCRATCH
    shards = list_shards(spec.path(run_dir, "data_dir")) + spec.denied(run_dir)
    guard = Guard(threads=spec.cpu_threads, deny_reading=shards, allow_writing=[run_dir])
    guard.install()
    try:
        hooks = load_submission(spec.path(run_dir, "submission")).hooks()
        guard.after_import()
        config = TrainConfig(**spec.config)
        runtime = init_runtime(spec.device, seed=config.seed)
        try:
            train(
                replace(config, save_every=-1),
                runtime,
                data_dir=spec.path(run_dir, "data_dir"),
                tokenizer_dir=None,
                out_dir=scratch,
                hooks=hooks,
                stop_after_step=WARMUP_STEPS,
                batches=random_batches(config, runtime.device, config.seed),
                log=lambda msg: print(f"warm-up: {msg}", flush=True),
                on_step_end=guard.check,
                keep_final_checkpoint=False,
            )
        finally:
            destroy_runtime()
    except (GuardViolation, SubmissionError) as e:
        print(f"speedrun: invalid: {e}", file=sys.stderr, flush=True)
        return EXIT_INVALID
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
