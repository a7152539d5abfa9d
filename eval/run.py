"""Evaluate a checkpoint: CORE over the bundle's tasks and/or val bits per byte; `speedrun eval`.

    speedrun eval --checkpoint DIR [--tokenizer DIR] [--eval-bundle DIR] [--core] [--bpb --data-dir DIR]
                  [--max-per-task N] [--tasks T ...] [--json OUT]
    torchrun --nproc_per_node=8 -m speedrun eval ...      # each rank scores every 8th example

CORE (fact sheet §7.2): per task, accuracy = mean of the per-example 0/1 vector (float32, as
nanochat), centered = (accuracy − 0.01·rb) / (1 − 0.01·rb) with rb the task's random baseline in
percent, CORE = mean of centered over the tasks scored. A CORE is `official` only when all 22 tasks
of DCLM's CORE were scored on every example of their files; otherwise the result says which tasks it
covers and whether --max-per-task cut any of them.
Every result records the bundle's content hash, the scorer and the model it came from.
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist

from baseline.checkpoint import load_model
from baseline.device import compute_dtype, destroy_runtime, init_runtime
from baseline.tokenizer import Tokenizer
from eval import bundle, core, core_reference
from eval.bpb import val_bpb
from eval.core_tasks import build_examples, evaluation_order, read_task

SCORERS = {"batched": core.score_examples, "reference": core_reference.score_examples}
DEFAULT_BPB_TOKENS = 80 * 524288  # the trainer's val budget (TrainConfig.eval_tokens)
DEFAULT_BPB_BATCH = 32


def _dist() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _reduce(t: torch.Tensor, op) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op)
    return t


def evaluate_task(model, tokenizer, bundle_dir, spec: bundle.TaskSpec, max_per_task=None, scorer="batched") -> dict:
    """One task: this rank scores examples rank, rank + world, ...; the 0/1 vector is summed over ranks."""
    t0 = time.perf_counter()
    rank, world = _dist()
    device = model.cos.device
    rows = read_task(bundle_dir, spec)
    data = evaluation_order(rows, max_per_task)
    mine = list(range(rank, len(data), world))
    examples = build_examples(spec, data, tokenizer, mine)
    scores = SCORERS[scorer](model, examples, tokenizer.bos_id)
    correct = torch.zeros(len(data), dtype=torch.float32, device=device)
    for idx, score in zip(mine, scores, strict=True):
        correct[idx] = float(score.correct)
    rechecked = torch.tensor(float(sum(s.rechecked for s in scores)), device=device)
    _reduce(correct, dist.ReduceOp.SUM)
    _reduce(rechecked, dist.ReduceOp.SUM)
    accuracy = correct.mean().item() if len(data) else float("nan")
    rb = 0.01 * spec.random_baseline
    seconds = _reduce(torch.tensor(time.perf_counter() - t0, device=device), dist.ReduceOp.MAX).item()
    return {
        "type": spec.task_type,
        "shots": spec.num_fewshot,
        "delimiter": spec.continuation_delimiter,
        "random_baseline": spec.random_baseline,
        "n": len(data),
        "rows": len(rows),  # examples in the file; n < rows when --max-per-task cut the task
        "accuracy": accuracy,
        "centered": (accuracy - rb) / (1.0 - rb),
        "correct": [int(c) for c in correct.tolist()],
        "rechecked": int(rechecked.item()),
        "seconds": seconds,
    }


def evaluate_core(model, tokenizer, eval_bundle=None, *, max_per_task=None, tasks=None, scorer="batched", log=None):
    """CORE over the bundle's tasks (or the named subset, in bundle order)."""
    rank, _ = _dist()
    if rank == 0:
        bundle_dir = bundle.locate(eval_bundle)  # may download; the other ranks wait below
    if dist.is_initialized():
        dist.barrier()
    bundle_dir = bundle.locate(eval_bundle, download=False) if rank else bundle_dir
    all_specs = specs = bundle.read_tasks(bundle_dir)
    if tasks:
        unknown = sorted(set(tasks) - {s.label for s in specs})
        if unknown:
            have = ", ".join(s.label for s in specs)
            raise ValueError(f"unknown task(s) {', '.join(unknown)}: the bundle has {have}")
        specs = [s for s in specs if s.label in set(tasks)]
    results = {}
    for spec in specs:
        results[spec.label] = evaluate_task(model, tokenizer, bundle_dir, spec, max_per_task, scorer)
        if log:
            r = results[spec.label]
            log(f"{spec.label:34s} accuracy {r['accuracy']:.4f}  centered {r['centered']:+.4f}  ({r['seconds']:.1f}s)")
    truncated = any(r["n"] < r["rows"] for r in results.values())
    scored = list(results)
    return {
        "core": sum(r["centered"] for r in results.values()) / len(results) if results else None,
        "official": set(bundle.CORE_TASKS) <= set(scored) and not truncated,
        "tasks_scored": scored,
        "tasks_not_scored": [t for t in bundle.CORE_TASKS if t not in results],
        "max_per_task": max_per_task if max_per_task is not None and max_per_task > 0 else None,
        "truncated": truncated,
        "scorer": scorer,
        "bundle": {
            "dir": str(bundle_dir),
            "content_sha256": bundle.content_sha256(bundle_dir, all_specs),
            "download": bundle.download_record(bundle_dir),
        },
        "tasks": results,
    }


def evaluate(
    checkpoint=None,
    *,
    model=None,
    tokenizer=None,
    tokenizer_dir=None,
    device=None,
    core=True,
    bpb=False,
    max_per_task=None,
    tasks=None,
    eval_bundle=None,
    data_dir=None,
    bpb_tokens=DEFAULT_BPB_TOKENS,
    bpb_batch_size=DEFAULT_BPB_BATCH,
    scorer="batched",
    json_out=None,
    log=None,
) -> dict:
    """Evaluate a checkpoint directory, or a (model, tokenizer) pair; returns the result dict.

    With `core`: `core` (the score), `official`, `tasks_scored`, `tasks_not_scored`, `bundle` (its
    content hash), and `tasks` (per task `type, shots, n, accuracy, centered, correct, seconds`).
    With `bpb`: `bpb` (the value) and `bpb_detail` (sums, tokens). Always `model` and `seconds`.
    """
    t0 = time.perf_counter()
    meta = {}
    if model is None:
        if checkpoint is None:
            raise ValueError("nothing to evaluate: pass a checkpoint directory (--checkpoint DIR)")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, tokenizer, meta = load_model(checkpoint, device, compute_dtype(device), tokenizer_dir)
    elif tokenizer is None:
        if tokenizer_dir is None:
            raise ValueError("a model without its tokenizer: pass tokenizer= or tokenizer_dir=")
        tokenizer = Tokenizer.load(tokenizer_dir)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model was trained with "
            f"{model.config.vocab_size}: pass the tokenizer the run used (--tokenizer DIR)"
        )
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}: use one of {', '.join(SCORERS)}")
    model.eval()
    result = {
        "model": {
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "step": meta.get("step"),
            "config": model.config.to_dict(),
            "compute_dtype": str(model.compute_dtype).removeprefix("torch."),
            "device": str(model.cos.device),
            "vocab_size": tokenizer.vocab_size,
            "torch": torch.__version__,
        }
    }
    with torch.no_grad():
        if core:
            scores = evaluate_core(
                model, tokenizer, eval_bundle, max_per_task=max_per_task, tasks=tasks, scorer=scorer, log=log
            )
            result.update(scores)
        if bpb:
            if data_dir is None:
                raise ValueError("bpb needs the pretraining shards: pass --data-dir DIR (its last shard is val)")
            rank, world = _dist()
            result["bpb_detail"] = val_bpb(
                model,
                tokenizer,
                data_dir,
                tokens=bpb_tokens,
                batch_size=bpb_batch_size,
                seq_len=model.config.sequence_len,
                rank=rank,
                world_size=world,
            )
            result["bpb"] = result["bpb_detail"]["bpb"]
    result["seconds"] = time.perf_counter() - t0
    if json_out is not None and _dist()[0] == 0:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=1))
    return result


def format_table(result: dict) -> str:
    """Per task: type, shots, n, accuracy, centered, seconds; then CORE and bpb."""
    lines = []
    if "tasks" in result:
        c = result
        header = ("task", "type", "shots", "n", "accuracy", "centered", "seconds")
        lines.append("{:34s} {:18s} {:>5s} {:>6s} {:>9s} {:>9s} {:>8s}".format(*header))
        for label, r in c["tasks"].items():
            lines.append(
                f"{label:34s} {r['type']:18s} {r['shots']:5d} {r['n']:6d} {r['accuracy']:9.4f} "
                f"{r['centered']:+9.4f} {r['seconds']:8.1f}"
            )
        core_value = "n/a" if c["core"] is None else f"{c['core']:.6f}"
        n_scored, n_core = len(c["tasks_scored"]), len(bundle.CORE_TASKS)
        status = "official" if c["official"] else f"NOT official: {n_scored} of {n_core} tasks"
        if c["truncated"]:
            status += f", at most {c['max_per_task']} examples per task"
        lines.append(f"CORE {core_value} ({status}; bundle {c['bundle']['content_sha256'][:12]})")
        if c["tasks_not_scored"]:
            lines.append(f"not scored: {', '.join(c['tasks_not_scored'])}")
    if "bpb" in result:
        b = result["bpb_detail"]
        lines.append(f"val bpb {b['bpb']:.6f} ({b['tokens']:,} tokens, {b['total_bytes']:,} bytes)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory (step_*)")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer directory (default: the run's)")
    parser.add_argument(
        "--eval-bundle", type=Path, default=None, help=f"CORE bundle (default: ${bundle.ENV_VAR}, else the cache)"
    )
    parser.add_argument("--core", action="store_true", help="CORE (the default when neither --core nor --bpb)")
    parser.add_argument("--bpb", action="store_true", help="val bits per byte (needs --data-dir)")
    parser.add_argument("--max-per-task", type=int, default=None, help="examples per task (default all; not official)")
    parser.add_argument("--tasks", nargs="+", default=None, help="score only these tasks (not official)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--data-dir", type=Path, default=None, help="pretraining shards, for --bpb")
    parser.add_argument("--bpb-tokens", type=int, default=DEFAULT_BPB_TOKENS, help="val tokens for --bpb")
    parser.add_argument("--bpb-batch-size", type=int, default=DEFAULT_BPB_BATCH, help="rows per bpb forward")
    parser.add_argument("--device", choices=["cuda", "cpu", "mps"], default=None, help="default: autodetect")
    parser.add_argument("--scorer", choices=sorted(SCORERS), default="batched", help="CORE scorer")


def main(args: argparse.Namespace) -> dict:
    runtime = init_runtime(args.device)  # joins the process group under torchrun
    try:
        log = print if runtime.is_master else None
        result = evaluate(
            args.checkpoint,
            tokenizer_dir=args.tokenizer,
            device=runtime.device,
            core=args.core or not args.bpb,
            bpb=args.bpb,
            max_per_task=args.max_per_task,
            tasks=args.tasks,
            eval_bundle=args.eval_bundle,
            data_dir=args.data_dir,
            bpb_tokens=args.bpb_tokens,
            bpb_batch_size=args.bpb_batch_size,
            scorer=args.scorer,
            json_out=args.json,
            log=log,
        )
        if runtime.is_master:
            print(format_table(result))
        return result
    finally:
        destroy_runtime()
