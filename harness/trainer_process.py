"""The training process of one run: what `speedrun run` launches (alone or under torchrun), after the warm-up.

    python -m harness.trainer_process RUN_DIR        # RUN_DIR/run.json (protocol.record.RunSpec) says what

It times every step of the frozen trainer with the submission's hooks and writes the final checkpoint
at the last step boundary; nothing else. Its step events go into the runner's pipe (SPEEDRUN_EVENTS,
a FIFO in the run directory), where the runner stamps them with its own clock. It is given only the
training view of the data (links to the train shards); the guard (harness/guard.py) refuses reading
the val and held-out shards and the eval bundle, writing outside the run directory, patches of the
clock or of the frozen code, other thread counts, and threads or processes left running at a step
boundary. SIGTERM or SIGUSR1 (the notice a cloud or SLURM gives before taking the machine) makes it
save at the next step boundary and end "preempted". The final metric is computed by another, fresh
process that never imports the submission (harness/eval_process.py), or for an open-division run one that
runs only its model code, copied at registration (harness/open_eval.py); an open run's checkpoints name
that code's hash in their meta. Exit codes: protocol.record.EXIT_OK,
EXIT_DIVERGED, EXIT_INVALID (a broken rule, reported on stderr as `speedrun: invalid: ...`); anything
else is a failure.
"""

import json
import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path

from baseline.config import TrainConfig
from baseline.device import destroy_runtime, init_runtime
from baseline.train import TrainResult, train
from harness.guard import Guard, GuardViolation
from protocol.hashing import folder_or_file_hash
from protocol.record import EXIT_DIVERGED, EXIT_INVALID, EXIT_OK, read_spec
from submissions.contract import SubmissionError, load_submission

TRAIN_RESULT_FILE = "train_result.json"
EVENTS_PIPE_ENV = "SPEEDRUN_EVENTS"  # the path of the runner's FIFO for the step events


def read_result(run_dir: Path) -> TrainResult | None:
    """What a finished (or crashed) training process left in run_dir, or None."""
    path = run_dir / TRAIN_RESULT_FILE
    return TrainResult(**json.loads(path.read_text())) if path.is_file() else None


def main(run_dir: str) -> int:
    run_dir = Path(run_dir)
    spec = read_spec(run_dir)
    guard = Guard(
        threads=spec.cpu_threads,
        deny_reading=spec.denied(run_dir),
        allow_writing=[run_dir],
    )
    notice = []  # a preemption notice: save at the next step boundary, then exit (the runner records it)
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, lambda s, _frame: notice.append(s))
    guard.install()
    try:
        submission = load_submission(spec.path(run_dir, "submission"))  # a broken plug-in stops here
        hooks = submission.hooks()
        guard.after_import()
        checkpoint_meta = None
        if submission.division == "open":  # its weights fit its own code only: checkpoints name that code's hash
            ref = {"name": submission.name, "hash": folder_or_file_hash(submission.path)}
            checkpoint_meta = {"division": "open", "submission": ref}
        config = TrainConfig(**spec.config)
        runtime = init_runtime(spec.device, seed=config.seed)
        pipe = os.environ.get(EVENTS_PIPE_ENV)
        events = open(pipe, "w", buffering=1) if pipe and runtime.is_master else None  # noqa: SIM115
        try:
            result = train(
                config,
                runtime,
                data_dir=spec.path(run_dir, "data_dir"),
                tokenizer_dir=spec.path(run_dir, "tokenizer_dir"),
                out_dir=run_dir,
                hooks=hooks,
                resume=spec.resume,
                stop_after_step=spec.max_steps,
                events_stream=events,
                on_step_end=guard.check,
                should_stop=lambda: bool(notice),
                save_every_s=spec.checkpoint_every_s,
                checkpoint_meta=checkpoint_meta,
            )
        finally:
            destroy_runtime()
    except (GuardViolation, SubmissionError) as e:
        print(f"speedrun: invalid: {e}", file=sys.stderr, flush=True)
        return EXIT_INVALID
    if runtime.is_master:
        (run_dir / TRAIN_RESULT_FILE).write_text(json.dumps(asdict(result), indent=2))
    return EXIT_DIVERGED if result.status == "diverged" else EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
