"""The training process of one run: what `speedrun run` launches (alone or under torchrun).

    python -m harness.worker RUN_DIR          # RUN_DIR/run.json says what to train and how

It trains with the frozen trainer and the submission's hooks, then evaluates the track's target
(untimed) and writes `train_result.json` and `eval.json` into RUN_DIR. The parent process (see
`harness/runner.py`) owns the record, the telemetry and the logs; this file only does the work
that needs the accelerators. Exit codes: 0 done, 3 diverged.
"""

import json
import sys
from dataclasses import asdict
from pathlib import Path

from baseline.config import TrainConfig
from baseline.device import destroy_runtime, init_runtime
from baseline.hooks import Hooks
from baseline.train import train
from eval.bpb import val_bpb_evaluator

EXIT_DIVERGED = 3


def load_hooks(submission: str) -> Hooks:
    """The submission's hooks; the plug-in contract (submissions package) extends this."""
    if submission == "baseline":
        return Hooks()
    from submissions.contract import load_submission

    return load_submission(submission).hooks()


def final_eval(spec: dict, run_dir: Path, runtime, result) -> dict:
    """The track's target metric on the final weights (untimed), computed with the baseline's kernels.

    The baseline's last in-training val bpb already is that; a submission's ran its own kernels, so
    its checkpoint is reloaded into the frozen model (safetensors only) and evaluated again: no
    submission code ever touches the score.
    """
    out = {"val_bpb": result.val_bpb}
    if spec["submission"] != "baseline" and result.checkpoint:
        from baseline.checkpoint import load_model
        from eval.bpb import val_bpb

        config = TrainConfig(**spec["config"])
        model, tokenizer, _ = load_model(result.checkpoint, runtime.device, runtime.compute_dtype)
        out["val_bpb_in_training"] = result.val_bpb
        out["val_bpb"] = val_bpb(
            model, tokenizer, spec["data_dir"], tokens=config.eval_tokens, batch_size=config.device_batch_size,
            seq_len=config.max_seq_len, rank=runtime.rank, world_size=runtime.world_size,
        )["bpb"]  # fmt: skip
    if spec["target_metric"] == "core" and result.checkpoint:
        from eval.run import evaluate

        out["core"] = evaluate(
            checkpoint=result.checkpoint,
            core=True,
            max_per_task=None if spec.get("core_max_per_task", -1) < 0 else spec["core_max_per_task"],
            eval_bundle=spec.get("eval_bundle"),
            device=runtime.device,
        )
    return out


def main(run_dir: str) -> int:
    run_dir = Path(run_dir)
    spec = json.loads((run_dir / "run.json").read_text())
    config = TrainConfig(**spec["config"])
    runtime = init_runtime(spec.get("device"), seed=config.seed)
    try:
        val_bpb = val_bpb_evaluator(
            spec["tokenizer_dir"],
            spec["data_dir"],
            config.device_batch_size,
            config.max_seq_len,
            config.eval_tokens,
            runtime,
        )
        result = train(
            config,
            runtime,
            data_dir=spec["data_dir"],
            tokenizer_dir=spec["tokenizer_dir"],
            out_dir=run_dir,
            hooks=load_hooks(spec["submission"]),
            resume=spec.get("resume", False),
            stop_after_step=spec.get("max_steps"),
            val_bpb_fn=val_bpb,
        )
        if runtime.is_master:
            (run_dir / "train_result.json").write_text(json.dumps(asdict(result), indent=2))
        if result.status == "diverged":
            return EXIT_DIVERGED
        evaluation = final_eval(spec, run_dir, runtime, result)
        if runtime.is_master:
            (run_dir / "eval.json").write_text(json.dumps(evaluation, indent=2))
        return 0
    finally:
        destroy_runtime()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
