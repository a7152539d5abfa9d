"""An open-division model: build it from its submission's source, load its safetensors weights, and score it.

    python -m eval.open_model --source DIR --checkpoint DIR --tokenizer DIR --val-dir DIR \
        --tokens N --batch-size B --out RESULT.json [--device cuda]        # this runs submission code

A closed checkpoint is a baseline GPT that frozen code loads (baseline/checkpoint.py). An open one holds
weights for the submission's own model, so loading it runs the submission's `build_model(plan, device,
compute_dtype)` from its source (the folder, or .py file, whose hash the checkpoint's meta names), with
the plan of the checkpoint's train config; then the weights from safetensors (no pickle), strictly by
name and shape. Run it only where submission code may run: harness/open_eval.py under the guard, the
leaderboard's sandbox.

`score` is the frozen val-bpb loop (eval/bpb.py) over the model's logits: `model(idx)` gives them and
`ScoredByLogits` takes their cross-entropy with frozen code, so no loss the model reports reaches the
metric. Then it checks what one pass cannot see, and names the first failure in `problem` (one line):
- state and order: the parameters and buffers are unchanged, and the same batches scored again in
  reverse order give the same nats batch by batch (a model that learns or changes while it is scored
  profits from the val data: dynamic evaluation, a cache of past batches);
- causality on the val data: the logits of the first half of each row of the first batch stay the same
  when the second half is reversed (a model that sees the next token scores near zero).
`python -m eval.open_model` writes the result (bpb, totals, per-batch nats, problem) as JSON and exits
EXIT_OK, or EXIT_INVALID with `speedrun: invalid: <problem>`. All of this runs in the model's own process,
where the model's code can reach everything, the checks and the result included: it catches a model that
learns, peeks or varies, not one written to forge its score. The leaderboard does not score this way:
eval/open_scoring.py runs the model in the sandbox and computes the metric itself from the logits alone.
Importing this module runs no submission code.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from baseline.checkpoint import load_state_into, load_weights, read_meta
from baseline.config import TrainConfig, plan_training
from baseline.device import compute_dtype, destroy_runtime, init_runtime
from baseline.hooks import import_plugin
from baseline.loader import bos_bestfit_batches
from baseline.tokenizer import Tokenizer
from eval.bpb import bpb_steps, evaluate_bpb
from protocol.record import EXIT_INVALID, EXIT_OK

MODULE_FILE = "submission.py"  # in a submission folder (submissions/contract.py's layout)
ORDER_RTOL = 1e-5  # per-batch nats of two passes over the same batches: equal up to float noise
# How far the first half's logits may move in the causality probe: float noise in fp32 (CPU); in bf16 (GPUs)
# logits near the softcap of 15 are 0.0625 apart, and a model that sees the next token moves them by units.
CAUSAL_ATOL = {torch.float32: 1e-4}
HALF_CAUSAL_ATOL = 0.25


def source_file(source: str | Path) -> tuple[str, Path]:
    """(name, module file) of a submission folder or single .py file."""
    source = Path(source)
    file = source / MODULE_FILE if source.is_dir() else source
    if not file.is_file():
        raise FileNotFoundError(f"{source} has no {MODULE_FILE}: pass the submission's folder or its .py file")
    return source.stem, file


def build_open_model(source: str | Path, train_config: dict, device, compute_dtype: torch.dtype) -> nn.Module:
    """The submission's build_model(plan, device, compute_dtype), the plan being the run's (one rank)."""
    name, file = source_file(source)
    build = getattr(import_plugin(name, file), "build_model", None)
    if not callable(build):
        raise ValueError(f"{file} defines no build_model: an open checkpoint needs its submission's model code")
    config = TrainConfig(**train_config)
    torch.manual_seed(config.seed)  # what build_model draws is overwritten by the weights; seeded all the same
    return build(plan_training(config), device, compute_dtype)


def load_open_model(
    source: str | Path, checkpoint: str | Path, device="cpu", compute_dtype=torch.float32
) -> tuple[nn.Module, dict]:
    """(model in eval mode, meta) of an open checkpoint: the source's model, the checkpoint's weights."""
    meta = read_meta(checkpoint)
    if meta.get("division") != "open":
        raise ValueError(
            f"{checkpoint} is not an open-division checkpoint: load it with baseline.checkpoint.load_model"
        )
    model = build_open_model(source, meta["train_config"], device, compute_dtype)
    load_state_into(model, load_weights(checkpoint))
    return model.eval(), meta


class ScoredByLogits(nn.Module):
    """The model's logits, scored by frozen code: forward(idx, targets, loss_reduction) as eval/bpb.py calls it."""

    def __init__(self, model: nn.Module, vocab_size: int):
        super().__init__()
        self.model, self.vocab_size = model, vocab_size

    def forward(self, idx, targets, loss_reduction="none"):
        return token_losses(self.model, idx, targets, self.vocab_size, loss_reduction)


def token_losses(model: nn.Module, idx, targets, vocab_size: int, reduction: str = "none") -> torch.Tensor:
    """Cross-entropy (nats) of model(idx)'s logits against targets (B, T); -1 targets are ignored (0 with 'none')."""
    logits = model(idx)
    problem = logits_problem(logits, (*idx.shape, vocab_size))
    if problem:
        raise ValueError(problem)
    loss = F.cross_entropy(logits.reshape(-1, vocab_size), targets.reshape(-1), ignore_index=-1, reduction=reduction)
    return loss.view(targets.shape) if reduction == "none" else loss


def logits_problem(logits, want: tuple[int, ...]) -> str | None:
    """One line when `logits` are not float32 of shape `want` (B, T, vocab_size)."""
    if torch.is_tensor(logits) and tuple(logits.shape) == want and logits.dtype == torch.float32:
        return None
    got = f"{tuple(logits.shape)} {logits.dtype}" if torch.is_tensor(logits) else type(logits).__name__
    return f"model(idx) gave {got}, not float32 logits of shape {want}: return (B, T, vocab_size) fp32"


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer (persistent or not), to compare after an eval."""
    return {name: t.detach().clone() for name, t in [*model.named_parameters(), *model.named_buffers()]}


def state_problem(model: nn.Module, before: dict[str, torch.Tensor]) -> str | None:
    now = state_of(model)
    changed = [n for n in before if n not in now or not torch.equal(now[n], before[n])] + sorted(set(now) - set(before))
    if changed:
        return f"scoring the val data changed the model's {changed[0]}: a model may not learn or change in the eval"
    return None


def order_problem(forward: list[float], reverse: list[float]) -> str | None:
    """One line when the per-batch nats of a pass in order and a pass in reverse order (re-reversed) differ."""
    if len(forward) != len(reverse):
        return f"the two passes scored {len(forward)} and {len(reverse)} batches: score the same batches twice"
    for k, (a, b) in enumerate(zip(forward, reverse, strict=True)):
        if not (math.isfinite(a) and math.isfinite(b)) or abs(a - b) > ORDER_RTOL * max(abs(a), abs(b)):
            return (
                f"val batch {k} scores {a:.6g} nats in order and {b:.6g} in reverse order: the model's losses depend "
                "on what it scored before (it learns or changes during the eval, or is not deterministic)"
            )
    return None


@torch.no_grad()
def causality_problem(model: nn.Module, inputs: torch.Tensor) -> str | None:
    """One line when the first half of the rows' logits moves as the second half (or another row) changes."""
    B, T = inputs.shape
    half = T // 2
    probe = inputs.clone()
    # The second half's own tokens, reversed: real tokens, other neighbours (val rows may share their starts,
    # e.g. a corpus's common header, so another row's second half can be the same).
    probe[:, half:] = inputs[:, half:].flip(1)
    want, got = model(inputs)[:, :half], model(probe)[:, :half]
    atol = CAUSAL_ATOL.get(compute_dtype(inputs.device), HALF_CAUSAL_ATOL)
    diff = (got - want).abs().max().item()
    if not diff <= atol:
        return (
            f"the logits of the first {half} positions change by {diff:.3g} when later tokens change: the model is not "
            "causal (position t may see tokens up to t of its own row only)"
        )
    return None


def score(model: nn.Module, tokenizer: Tokenizer, val_dir, *, tokens: int, batch_size: int, seq_len: int) -> dict:
    """val bpb over `tokens` val tokens (one rank), then the state, order and causality checks; see the docstring."""
    steps = bpb_steps(tokens, batch_size, seq_len, 1)
    device = next(model.parameters()).device
    loader = bos_bestfit_batches(tokenizer, batch_size, seq_len, "val", val_dir, device=device)
    batches = [next(loader)[:2] for _ in range(steps)]
    scorer = ScoredByLogits(model, tokenizer.vocab_size).eval()
    token_bytes = tokenizer.token_bytes()
    before = state_of(model)
    forward, reverse = [], []
    try:
        result = evaluate_bpb(scorer, batches, token_bytes, steps, per_batch=forward)
        evaluate_bpb(scorer, batches[::-1], token_bytes, steps, per_batch=reverse)
        problem = (
            state_problem(model, before)
            or order_problem(forward, reverse[::-1])
            or causality_problem(model, batches[0][0])
        )
    except ValueError as e:  # token_losses: logits of the wrong shape or dtype
        result, problem = {"bpb": None}, str(e)
    return {
        **result,
        "tokens": steps * batch_size * seq_len,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "batch_nats": forward,
        "reverse_batch_nats": reverse[::-1],
        "problem": problem,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.open_model", description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="the submission's folder or .py file")
    parser.add_argument("--checkpoint", type=Path, required=True, help="an open checkpoint (step_* directory)")
    parser.add_argument("--tokenizer", type=Path, required=True, help="the run's tokenizer directory")
    parser.add_argument("--val-dir", type=Path, required=True, help="the val shards (a folder of *.parquet)")
    parser.add_argument("--tokens", type=int, required=True, help="val tokens to score (the track's eval_tokens)")
    parser.add_argument("--batch-size", type=int, required=True, help="rows per forward")
    parser.add_argument("--out", type=Path, required=True, help="where to write the result (JSON)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args(argv)
    runtime = init_runtime(args.device)
    try:
        t0 = time.perf_counter()
        model, meta = load_open_model(args.source, args.checkpoint, runtime.device, runtime.compute_dtype)
        seq_len = meta["model_config"]["sequence_len"]
        tokenizer = Tokenizer.load(args.tokenizer)
        result = score(model, tokenizer, args.val_dir, tokens=args.tokens, batch_size=args.batch_size, seq_len=seq_len)
        result["seconds"] = time.perf_counter() - t0
        args.out.write_text(json.dumps(result, indent=1))
    finally:
        destroy_runtime()
    if result["problem"]:
        print(f"speedrun: invalid: {result['problem']}", file=sys.stderr)
        return EXIT_INVALID
    print(f"open model: val bpb {result['bpb']:.6f} over {result['steps']} batches, scored the same in reverse order")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
