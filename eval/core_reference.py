"""The reference CORE scorer: one example per forward, nanochat's core_eval.py line for line.

All rows of an example are right-padded with BOS into one batch and forwarded once (no KV cache,
logits at every position). The loss at position t is the cross-entropy of the logits at t against
token t+1. Multiple choice / schema: the mean loss over each row's span [start-1, end-1) in fp32,
prediction = the first argmin, correct iff it is `gold`. Language modeling: correct iff the argmax
at every span position is the next token. It is slow on purpose: the batched scorer in `core.py`
must give the same answer for every example, and falls back to this one where a decision is
too close to call.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from eval.core_tasks import Example


@dataclass
class Score:
    """The outcome for one example, with what decided it."""

    correct: bool
    mean_losses: list[float] | None = None  # MC / schema: one per option
    predicted: list[int] | None = None  # LM: argmax tokens over the span
    rechecked: bool = False  # the batched scorer handed this example to the reference


def choose(mean_losses: list[float]) -> int:
    """nanochat's decision: index of the first minimum (Python's min/index, NaN semantics included)."""
    return mean_losses.index(min(mean_losses))


@torch.no_grad()
def score_example(model, example: Example, bos_id: int) -> Score:
    device = model.cos.device
    width = max(len(r) for r in example.rows)
    ids = torch.full((len(example.rows), width), bos_id, dtype=torch.long)
    for i, row in enumerate(example.rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    ids = ids.to(device)
    logits = model(ids)  # (N, T, V) fp32, softcapped
    n, t, v = logits.shape
    targets = torch.roll(ids, shifts=-1, dims=1)
    losses = F.cross_entropy(logits.view(n * t, v), targets.view(n * t), reduction="none").view(n, t)
    losses[:, -1] = float("nan")  # the last position has no next token
    if example.task_type == "language_modeling":
        s, e = example.starts[0], example.ends[0]
        predicted = logits[0, s - 1 : e - 1].argmax(dim=-1)
        correct = bool(torch.all(predicted == ids[0, s:e]).item())
        return Score(correct, predicted=predicted.tolist())
    spans = zip(example.starts, example.ends, strict=True)
    mean_losses = [losses[i, s - 1 : e - 1].mean().item() for i, (s, e) in enumerate(spans)]
    return Score(choose(mean_losses) == example.gold, mean_losses=mean_losses)


def fit_rotary(model, examples: list[Example]) -> None:
    """Grow the rotary table for the longest row: nanochat's table (10 × sequence_len) can be shorter
    than 10-shot prompts; its golden CORE run extended the table the same way (golden README §7)."""
    longest = max((len(r) for ex in examples for r in ex.rows), default=0)
    if longest > model.cos.size(1):
        model.extend_rotary(longest)


def score_examples(model, examples: list[Example], bos_id: int) -> list[Score]:
    fit_rotary(model, examples)
    return [score_example(model, ex, bos_id) for ex in examples]
