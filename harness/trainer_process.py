"""The training process of one run: what `speedrun run` launches (alone or under torchrun).

    python -m harness.trainer_process RUN_DIR        # RUN_DIR/run.json (protocol.record.RunSpec) says what

It trains with the frozen trainer and the submission's hooks, then evaluates the track's target
(untimed) and writes TRAIN_RESULT_FILE (baseline.train.TrainResult) and EVAL_FILE (FinalEvaluation)
into RUN_DIR, read back by the runner with `read_outcome`. The parent process (see
`harness/runner.py`) owns the record, the telemetry and the logs; this file only does the work that
needs the accelerators. Exit codes: protocol.record.EXIT_OK, EXIT_DIVERGED; anything else is a failure.
"""

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from baseline.checkpoint import load_model
from baseline.config import TrainConfig
from baseline.device import destroy_runtime, init_runtime
from baseline.train import TrainResult, train
from eval.bpb import val_bpb, val_bpb_evaluator
from eval.run import evaluate
from protocol.record import EXIT_DIVERGED, EXIT_OK, RunSpec, read_spec
from submissions.contract import load_submission

TRAIN_RESULT_FILE, EVAL_FILE = "train_result.json", "eval.json"


@dataclass
class FinalEvaluation:
    val_bpb: float | None = None  # with the frozen kernels on the final weights
    val_bpb_in_training: float | None = None  # the trainer's own last eval (the submission's kernels)
    core: dict | None = None  # eval.run.evaluate's result on a CORE track


def read_outcome(run_dir: Path) -> tuple[TrainResult | None, FinalEvaluation]:
    """What a finished (or crashed) training process left in run_dir: each part None/empty if absent."""
    train_path, eval_path = run_dir / TRAIN_RESULT_FILE, run_dir / EVAL_FILE
    result = TrainResult(**json.loads(train_path.read_text())) if train_path.is_file() else None
    evaluation = FinalEvaluation(**json.loads(eval_path.read_text())) if eval_path.is_file() else FinalEvaluation()
    return result, evaluation


def final_eval(spec: RunSpec, run_dir: Path, runtime, result: TrainResult) -> FinalEvaluation:
    """The track's target metric on the final weights (untimed), computed with the baseline's kernels.

    The checkpoint is reloaded into the frozen model (safetensors only) and evaluated again: the
    submission's kernels that ran the in-training eval never touch the score.
    """
    out = FinalEvaluation(val_bpb=result.val_bpb)
    if result.checkpoint:
        config = TrainConfig(**spec.config)
        model, tokenizer, _ = load_model(
            result.checkpoint, runtime.device, runtime.compute_dtype, spec.path(run_dir, "tokenizer_dir")
        )
        out.val_bpb_in_training = result.val_bpb
        out.val_bpb = val_bpb(
            model, tokenizer, spec.path(run_dir, "data_dir"), tokens=config.eval_tokens,
            batch_size=config.device_batch_size, seq_len=config.max_seq_len, rank=runtime.rank,
            world_size=runtime.world_size,
        )["bpb"]  # fmt: skip
    if spec.target_metric == "core" and result.checkpoint:
        out.core = evaluate(
            checkpoint=result.checkpoint,
            tokenizer_dir=spec.path(run_dir, "tokenizer_dir"),
            core=True,
            max_per_task=None if spec.core_max_per_task < 0 else spec.core_max_per_task,
            eval_bundle=spec.eval_bundle and spec.path(run_dir, "eval_bundle"),
            device=runtime.device,
        )
    return out


def main(run_dir: str) -> int:
    run_dir = Path(run_dir)
    spec = read_spec(run_dir)
    hooks = load_submission(spec.path(run_dir, "submission")).hooks()  # a broken plug-in stops here, before any work
    config = TrainConfig(**spec.config)
    runtime = init_runtime(spec.device, seed=config.seed)
    data_dir, tokenizer_dir = spec.path(run_dir, "data_dir"), spec.path(run_dir, "tokenizer_dir")
    try:
        result = train(
            config,
            runtime,
            data_dir=data_dir,
            tokenizer_dir=tokenizer_dir,
            out_dir=run_dir,
            hooks=hooks,
            resume=spec.resume,
            stop_after_step=spec.max_steps,
            val_bpb_fn=val_bpb_evaluator(
                tokenizer_dir, data_dir, config.device_batch_size, config.max_seq_len, config.eval_tokens, runtime
            ),
        )
        if runtime.is_master:
            (run_dir / TRAIN_RESULT_FILE).write_text(json.dumps(asdict(result), indent=2))
        if result.status == "diverged":
            return EXIT_DIVERGED
        evaluation = final_eval(spec, run_dir, runtime, result)
        if runtime.is_master:
            (run_dir / EVAL_FILE).write_text(json.dumps(asdict(evaluation), indent=2))
        return EXIT_OK
    finally:
        destroy_runtime()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
