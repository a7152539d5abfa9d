"""CORE scoring throughput: the batched scorer vs the one-example-per-forward reference, same model.

    python -m bench.core_throughput [--model golden|nanochat-d4] [--tasks arc_easy winograd lambada_openai | all]
                                    [--max-per-task 24] [--threads 1] [--json OUT]

Per task: examples/s of `eval.core.score_examples` and of `eval.core_reference.score_examples` on the
same tokenised examples (tokenisation is not timed; it is shared), their ratio, and a check that
every example got the same answer, then the same per task type (all its tasks' examples over all
their time). Each side is warmed up on a few examples first and timed `--repeats` times; the best
time counts (the box is shared, noise only ever adds time). One torch thread by default: on a
shared 2-core box two OpenMP threads stall on each other and the noise swamps the comparison.

Models (depth 4 both): `golden` = the golden trained model (n_embd 128, sequence_len 256, so sliding
windows cut 10-shot prompts to their last ~640 tokens); `nanochat-d4` = nanochat's d4 shape (n_embd 256,
2 heads of 128, sequence_len 2048: windows 512/2048, no cut) with random weights; `d12` = the d12 shape
(the GPU check's), random weights. All use the golden 4096-token tokenizer. `--device cuda`: bf16.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from baseline.checkpoint import build_model
from baseline.gpt import GPTConfig
from baseline.tokenizer import Tokenizer
from eval import core, core_reference
from eval.bundle import read_tasks
from eval.core_tasks import build_examples, load_task

SHARED = Path(os.environ.get("SPEEDRUN_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MODELS = {
    "golden": GPTConfig(sequence_len=256, vocab_size=4096, n_layer=4, n_head=2, n_kv_head=2, n_embd=128),
    "nanochat-d4": GPTConfig(sequence_len=2048, vocab_size=4096, n_layer=4, n_head=2, n_kv_head=2, n_embd=256),
    "d12": GPTConfig(sequence_len=2048, vocab_size=4096, n_layer=12, n_head=6, n_kv_head=6, n_embd=768),
}


def build(name: str, device: str = "cpu"):
    torch.manual_seed(42)
    model = build_model(MODELS[name], device, torch.bfloat16 if device == "cuda" else torch.float32)
    if name == "golden":
        model.load_state_dict(load_file(SHARED / "golden" / "optim" / "state_step6.safetensors"))
    return model.eval()


def best_time(fn, args, repeats: int):
    """(fastest of `repeats` calls in seconds, the last call's result)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="golden")
    p.add_argument("--tasks", nargs="+", default=["arc_easy", "winograd", "lambada_openai"])
    p.add_argument("--max-per-task", type=int, default=24)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--eval-bundle", type=Path, default=SHARED / "data" / "eval_bundle")
    p.add_argument("--tokenizer", type=Path, default=SHARED / "golden" / "tokenizer")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = Tokenizer.load(args.tokenizer)
    model = build(args.model, args.device)
    specs = {s.label: s for s in read_tasks(args.eval_bundle)}
    if args.tasks == ["all"]:
        args.tasks = list(specs)
    print(f"model {args.model}, torch {torch.__version__}, {args.threads} threads, {platform.processor() or 'cpu'}")
    print(f"{'task':34s} {'type':18s} {'n':>4s} {'reference ex/s':>15s} {'batched ex/s':>13s} {'ratio':>7s}  same")
    rows = []
    for label in args.tasks:
        spec = specs[label]
        examples = build_examples(spec, load_task(args.eval_bundle, spec, args.max_per_task), tokenizer)
        model.extend_rotary(max(len(r) for ex in examples for r in ex.rows))
        bos = tokenizer.bos_id
        warm = examples[: min(3, len(examples))]
        core_reference.score_examples(model, warm, bos)
        core.score_examples(model, warm, bos)
        t_ref, ref = best_time(core_reference.score_examples, (model, examples, bos), args.repeats)
        t_bat, bat = best_time(core.score_examples, (model, examples, bos), args.repeats)
        same = [a.correct for a in ref] == [b.correct for b in bat]
        row = {
            "task": label,
            "type": spec.task_type,
            "shots": spec.num_fewshot,
            "n": len(examples),
            "reference_ex_per_s": len(examples) / t_ref,
            "batched_ex_per_s": len(examples) / t_bat,
            "ratio": t_ref / t_bat,
            "same_answers": same,
            "rechecked": sum(s.rechecked for s in bat),
        }
        rows.append(row)
        print(
            f"{label:34s} {spec.task_type:18s} {row['n']:4d} {row['reference_ex_per_s']:15.1f} "
            f"{row['batched_ex_per_s']:13.1f} {row['ratio']:6.1f}x  {'yes' if same else 'NO'}"
        )
    print(f"{'per task type':34s} {'':18s} {'n':>4s}")
    by_type: dict[str, list[dict]] = {}
    for row in rows:
        by_type.setdefault(row["type"], []).append(row)
    summary = {}
    for kind, group in by_type.items():
        n = sum(r["n"] for r in group)
        t_ref = sum(r["n"] / r["reference_ex_per_s"] for r in group)
        t_bat = sum(r["n"] / r["batched_ex_per_s"] for r in group)
        summary[kind] = {"n": n, "reference_ex_per_s": n / t_ref, "batched_ex_per_s": n / t_bat, "ratio": t_ref / t_bat}
        print(f"{'':34s} {kind:18s} {n:4d} {n / t_ref:15.1f} {n / t_bat:13.1f} {t_ref / t_bat:6.1f}x")
    if args.json:
        args.json.write_text(
            json.dumps({"model": args.model, "threads": args.threads, "tasks": rows, "types": summary}, indent=2)
        )


if __name__ == "__main__":
    main()
