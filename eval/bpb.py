"""Bits per byte on the validation split: nanochat's loss_eval.evaluate_bpb (fact sheet §7.1).

Per token, the cross-entropy in nats of the softcapped fp32 logits against the target, and the
target's length in bytes under the tokenizer (0 for special tokens such as BOS, and for ignored
targets < 0). Tokens of 0 bytes count in neither sum, so the BOS that starts each packed document
is never scored:

    bpb = Σ nats · [bytes > 0] / (ln 2 · Σ bytes)

Both sums are summed over ranks (each rank reads its own slice of the val split), so the result
is the same number on every rank. The budget is fixed in tokens: `steps = tokens // (B · T · world)`.
"""

import math
import os

import torch
import torch.distributed as dist

from baseline.loader import bos_bestfit_batches
from baseline.tokenizer import Tokenizer


@torch.no_grad()
def evaluate_bpb(model, batches, token_bytes: torch.Tensor, steps: int, per_batch: list | None = None) -> dict:
    """bpb of `model` over the first `steps` batches `(inputs, targets, ...)` (int64 (B, T) each).

    per_batch: a list that gets each batch's scored nats, in order (the open division's order check).
    """
    device = next(model.parameters()).device  # also right for a torch.compile'd model
    token_bytes = token_bytes.to(device)
    total_nats = torch.zeros((), dtype=torch.float32, device=device)  # float32, as nanochat accumulates
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    batch_iter = iter(batches)
    for _ in range(steps):
        inputs, targets = next(batch_iter)[:2]
        loss = model(inputs, targets, loss_reduction="none").view(-1)  # (B*T,) nats
        targets = targets.view(-1)
        valid = targets >= 0
        nbytes = torch.where(valid, token_bytes[targets.clamp(min=0)], 0)  # ignored targets: 0 bytes
        batch_nats = (loss * (nbytes > 0)).sum()
        total_nats += batch_nats
        total_bytes += nbytes.sum()
        if per_batch is not None:
            per_batch.append(batch_nats.item())
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total_nats, op=dist.ReduceOp.SUM)
        dist.all_reduce(total_bytes, op=dist.ReduceOp.SUM)
    nats, nbytes = total_nats.item(), total_bytes.item()
    bpb = nats / (math.log(2) * nbytes) if nbytes > 0 else float("inf")
    return {"bpb": bpb, "total_nats": nats, "total_bytes": nbytes, "steps": steps}


def bpb_steps(tokens: int, batch_size: int, seq_len: int, world_size: int) -> int:
    steps = tokens // (batch_size * seq_len * world_size)
    if steps < 1:
        raise ValueError(
            f"a bpb budget of {tokens} tokens is less than one batch of {batch_size}×{seq_len}×{world_size} ranks: "
            "raise the token budget or lower the batch size"
        )
    return steps


def val_bpb(
    model,
    tokenizer: Tokenizer,
    data_dir: str | os.PathLike,
    *,
    tokens: int,
    batch_size: int,
    seq_len: int,
    rank: int = 0,
    world_size: int = 1,
) -> dict:
    """bpb over `tokens` val tokens from a fresh BOS best-fit loader (the val split is re-read each time)."""
    steps = bpb_steps(tokens, batch_size, seq_len, world_size)
    device = next(model.parameters()).device
    batches = bos_bestfit_batches(
        tokenizer, batch_size, seq_len, "val", data_dir, rank=rank, world_size=world_size, device=device
    )
    result = evaluate_bpb(model, batches, tokenizer.token_bytes(), steps)
    return {**result, "tokens": steps * batch_size * seq_len * world_size, "batch_size": batch_size, "seq_len": seq_len}


def val_bpb_evaluator(tokenizer_dir, data_dir, batch_size: int, seq_len: int, tokens: int, runtime):
    """The trainer's `val_bpb_fn(model, step) -> bpb`; checks the budget and loads the tokenizer once."""
    bpb_steps(tokens, batch_size, seq_len, runtime.world_size)
    tokenizer = Tokenizer.load(tokenizer_dir)

    def fn(model, step: int) -> float:
        return val_bpb(
            model,
            tokenizer,
            data_dir,
            tokens=tokens,
            batch_size=batch_size,
            seq_len=seq_len,
            rank=runtime.rank,
            world_size=runtime.world_size,
        )["bpb"]

    return fn
