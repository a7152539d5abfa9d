"""The eval process of an open-division run: the final val bpb of a model whose code is the submission's.

    python -m harness.open_eval RUN_DIR CHECKPOINT_DIR SHA256 SOURCE_SHA256

What harness/eval_process.py is for a closed run, with the submission's own model. That process never
runs submission code; this one must (the model is the code), so it runs only the copy of the source the
runner made at registration, and only after checking, before anything of it is imported, that
model.safetensors still has the sha256 the runner pinned at the last step boundary and the source still
has the hash the record holds (a training process may write into its run directory). Then, under the guard
(harness/guard.py, isolated): it reads the val view but not the training data, the held-out shards or the
eval bundle; it writes only its two result files and the run's tmp/; it opens no socket and starts no
process. eval/open_model.py loads the model (weights from safetensors by name) and scores it with the
frozen val-bpb loop over its logits, then again in reverse batch order, checking the parameters and buffers
are untouched and the model causal on the val data; any failure ends the run invalid with one line.

It writes EVAL_FILE exactly as the closed eval does (so the record and everything downstream are the same)
and OPEN_EVAL_FILE with the details (per-batch nats of both passes). What this cannot stop: code running
in this process can reach anything in it, the result it writes included. Its checks catch a model that
learns, peeks or varies by its architecture, not one written to forge its score; the source is in the
record's hash for review, and the server re-runs it in its sandbox.
"""

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from baseline.dataset import list_shards
from baseline.device import destroy_runtime, init_runtime
from baseline.tokenizer import Tokenizer
from eval.open_model import load_open_model, score
from harness.eval_process import EVAL_FILE, FinalEvaluation
from harness.guard import Guard, GuardViolation
from protocol.hashing import file_sha256, folder_or_file_hash
from protocol.record import EXIT_INVALID, EXIT_OK, read_spec

OPEN_EVAL_FILE = "open_eval.json"  # eval/open_model.score's result: per-batch nats in order and in reverse


def invalid(message: str) -> int:
    print(f"speedrun: invalid: {message}", file=sys.stderr, flush=True)
    return EXIT_INVALID


def main(run_dir: str, checkpoint: str, sha256: str, source_sha256: str) -> int:
    run_dir, checkpoint = Path(run_dir), Path(checkpoint)
    spec = read_spec(run_dir)
    source = spec.path(run_dir, "submission")
    if file_sha256(checkpoint / "model.safetensors") != sha256:
        return invalid(f"{checkpoint.name}/model.safetensors changed after the last step was reported")
    if folder_or_file_hash(source) != source_sha256:
        return invalid(f"the submission's source in {source.parent.name}/ changed after the run was registered")
    val_dir = spec.path(run_dir, "val_dir")
    val_files = {f.resolve() for f in list_shards(val_dir)}
    train_files = [f.resolve() for f in list_shards(spec.path(run_dir, "data_dir"))]  # what the view's links reach
    guard = Guard(
        threads=spec.cpu_threads,
        deny_reading=[*train_files, *(p for p in spec.denied(run_dir) if p not in val_files)],
        allow_writing=[run_dir / EVAL_FILE, run_dir / OPEN_EVAL_FILE, run_dir / "tmp"],
        isolated=True,
    )
    config = spec.config
    runtime = init_runtime(spec.device, seed=config["seed"])
    tokenizer = Tokenizer.load(spec.path(run_dir, "tokenizer_dir"))
    guard.install()
    try:
        t0 = time.perf_counter()
        model, _ = load_open_model(source, checkpoint, runtime.device, runtime.compute_dtype)
        guard.after_import()
        result = score(
            model, tokenizer, val_dir, tokens=config["eval_tokens"], batch_size=config["device_batch_size"],
            seq_len=config["max_seq_len"],
        )  # fmt: skip
        guard.check(0, where="the eval")
        result["seconds"] = time.perf_counter() - t0
        (run_dir / OPEN_EVAL_FILE).write_text(json.dumps(result, indent=1))
        if result["problem"]:
            return invalid(result["problem"])
        out = FinalEvaluation(val_bpb=result["bpb"], seconds=result["seconds"])
        (run_dir / EVAL_FILE).write_text(json.dumps(asdict(out), indent=2))
    except GuardViolation as e:
        return invalid(str(e))
    finally:
        destroy_runtime()
    print(f"open eval: val bpb {result['bpb']:.6f} over {result['steps']} batches, the same in reverse order")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
