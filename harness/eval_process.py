"""The eval process of one run: the final metric, in a fresh process that never imports the submission.

    python -m harness.eval_process RUN_DIR CHECKPOINT_DIR SHA256

It loads the final checkpoint with frozen code only (safetensors into baseline.gpt.GPT), after
checking that model.safetensors still has the sha256 the runner pinned when the training process
reported it (so nothing that ran after the last step can have changed it), then scores val bpb on
the run's val view (and CORE on a CORE track) with the frozen eval, and writes EVAL_FILE. No plug-in
code can run here: the submission's kernels never touch the score, and no code of it sees the val
data. An import-linter contract (pyproject.toml) keeps this module away from `submissions`.
"""

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from baseline.checkpoint import load_model
from baseline.config import TrainConfig
from baseline.device import destroy_runtime, init_runtime
from eval.bpb import val_bpb
from eval.run import evaluate
from protocol.hashing import file_sha256
from protocol.record import EXIT_INVALID, EXIT_OK, read_spec

EVAL_FILE = "eval.json"


@dataclass
class FinalEvaluation:
    val_bpb: float | None = None  # the frozen eval on the final weights
    core: dict | None = None  # eval.run.evaluate's result on a CORE track
    seconds: float = 0.0


def read_evaluation(run_dir: Path) -> FinalEvaluation:
    path = run_dir / EVAL_FILE
    return FinalEvaluation(**json.loads(path.read_text())) if path.is_file() else FinalEvaluation()


def main(run_dir: str, checkpoint: str, sha256: str) -> int:
    run_dir, checkpoint = Path(run_dir), Path(checkpoint)
    spec = read_spec(run_dir)
    if file_sha256(checkpoint / "model.safetensors") != sha256:
        print(
            f"speedrun: invalid: {checkpoint.name}/model.safetensors changed after the last step was reported",
            file=sys.stderr,
        )
        return EXIT_INVALID
    config = TrainConfig(**spec.config)
    runtime = init_runtime(spec.device, seed=config.seed)
    try:
        t0 = time.perf_counter()
        model, tokenizer, _ = load_model(
            checkpoint, runtime.device, runtime.compute_dtype, spec.path(run_dir, "tokenizer_dir")
        )
        out = FinalEvaluation()
        out.val_bpb = val_bpb(
            model, tokenizer, spec.path(run_dir, "val_dir"), tokens=config.eval_tokens,
            batch_size=config.device_batch_size, seq_len=config.max_seq_len, rank=runtime.rank,
            world_size=runtime.world_size,
        )["bpb"]  # fmt: skip
        if spec.target_metric == "core":
            out.core = evaluate(
                model=model,
                tokenizer=tokenizer,
                core=True,
                bpb=False,
                max_per_task=None if spec.core_max_per_task < 0 else spec.core_max_per_task,
                eval_bundle=spec.eval_bundle and spec.path(run_dir, "eval_bundle"),
                device=runtime.device,
            )
        out.seconds = time.perf_counter() - t0
        if runtime.is_master:
            (run_dir / EVAL_FILE).write_text(json.dumps(asdict(out), indent=2))
    finally:
        destroy_runtime()
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "submissions" or m.startswith("speedrun_submission"))
    assert not loaded, f"the eval process imported submission code: {loaded}"
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
