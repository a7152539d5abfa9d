"""The batched CORE scorer: many examples per forward, the reference's answer for every example.

The reference (`core_reference.py`) forwards every row of an example in full and computes logits at
every position. Most of that work is repeated or never read. Here, for a group of examples:

1. shared prompt once: the options of an example share a token prefix (for 10-shot multiple
   choice, all of the context). It is forwarded once per example (prefill of a `PrefixCache`) and
   only the option continuations are forwarded per row, attending to the cached keys;
2. only what can be seen: with sliding windows W_l a logit at position p depends on tokens
   [p - ΣW_l - 1, p] only (+1 for smear), so tokens before that are not forwarded at all; positions
   stay absolute (the cache's `pos`), so rotary angles are those of the reference;
3. only the logits that are scored: a pre-hook on lm_head keeps the span positions, so the
   vocab-sized projection, softcap and cross-entropy run on a few tokens per row;
4. many examples per forward: examples sorted by prompt length are cut into consecutive groups by
   a small dynamic program that weighs padding against the fixed cost of a forward, within a token
   budget (rows of one forward share the position of their first token, so a group's rows start
   at its shortest shared prompt).

Every step is exact in real arithmetic; in floats the scored numbers differ from the reference's
by rounding (~1e-6). So a decision is taken here only when it is clear by more than
`tie_tolerance`: multiple choice/schema when the best mean loss beats the runner-up by more than
it, language modeling when the true token's logit is above (or some position's below) every other
by more than it. Any other example (a near tie, a NaN, an empty span) is re-scored by the
reference itself; `Score.rechecked` marks them.
"""

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from baseline.attention import attention as default_attention
from eval import core_reference
from eval.core_reference import Score, choose
from eval.core_tasks import Example, common_length
from eval.prefix_cache import PrefixCache

DEFAULT_TOKEN_BUDGET = 16384  # tokens forwarded per step (and cached keys per row group)
# A forward's fixed cost in token-equivalents: what a merge may spend on padding to save one.
FORWARD_OVERHEAD_TOKENS = {"cpu": 48, "cuda": 8192}
MAX_GROUP = 128  # examples per group (bounds the planner's work)
# How far this scorer's numbers may be from the reference's: measured ≤ 4e-6 (mean loss) in fp32 and
# ≤ 0.03 in bf16 on the golden model (tests/test_eval_core.py); TF32 matmuls round like half precision.
TIE_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9}
HALF_TIE_TOLERANCE = 0.1


def default_tie_tolerance(model) -> float:
    dtype = model.compute_dtype
    tf32 = model.cos.device.type == "cuda" and torch.get_float32_matmul_precision() != "highest"
    if dtype == torch.float32 and tf32:
        return HALF_TIE_TOLERANCE
    return TIE_TOLERANCE.get(dtype, HALF_TIE_TOLERANCE)


@dataclass
class _Plan:
    """One example's work: its rows share tokens [crop, split), and every row is needed from `split` on.

    Tokens before `crop` cannot reach any scored logit; the first scored logit is at or after split.
    """

    k: int  # index into the example list
    crop: int
    split: int
    lengths: list[int]


def receptive_field(model) -> int | None:
    """Tokens a final hidden state can depend on: Σ left windows + itself + smear's predecessor."""
    windows = getattr(model, "window_sizes", None)
    return sum(windows) + 2 if windows else None


def _plan(ex: Example, k: int, field: int | None) -> _Plan | None:
    """None when the example is degenerate (a span starting at 0 or empty): the reference takes it."""
    first = min(ex.starts) - 1
    if first < 0 or any(s >= e for s, e in zip(ex.starts, ex.ends, strict=True)):
        return None
    crop = max(0, first + 1 - field) if field else 0
    split = max(crop, min(common_length(ex.rows), first))
    return _Plan(k, crop, split, [len(r) for r in ex.rows])


@dataclass
class _Group:
    """Examples forwarded together: shared prompts [crop, split) once each, then rows from `split`.

    split == crop means no prefill: whole rows from `crop` in one forward (cheaper when the
    shared prompts are short or differ much in length)."""

    plans: list[_Plan]
    crop: int
    split: int


def _partition(plans: list[_Plan], budget: int, overhead: int, window: int) -> list[_Group]:
    """Cheapest split of the plans, sorted by prompt length, into consecutive groups (dynamic program).

    Cost of a group in token-forwards: shared G·(split - crop) + rows·(longest - split) + 2 forwards'
    overhead, or flat rows·(longest - crop) + 1 overhead, whichever is less; a group must fit
    `budget` tokens per forward and `budget` cached keys. Groups hold at most MAX_GROUP examples,
    which keeps this O(n · MAX_GROUP).
    """
    plans = sorted(plans, key=lambda p: (p.split, max(p.lengths), p.crop))
    n = len(plans)
    best = [0.0] + [float("inf")] * n  # best[i]: cheapest cost of plans[:i]
    choice: list[tuple[int, bool]] = [(0, False)] * (n + 1)  # (group start, shared?)
    for i in range(1, n + 1):
        crop = split = 1 << 62
        rows = longest = 0
        for j in range(i - 1, max(-1, i - 1 - MAX_GROUP), -1):
            p = plans[j]
            crop, split = min(crop, p.crop), min(split, p.split)
            rows, longest = rows + len(p.lengths), max(longest, max(p.lengths))
            size, prompt, cont = i - j, split - crop, longest - split
            shared = size * prompt + rows * cont + 2 * overhead
            flat = rows * (prompt + cont) + overhead
            fits_shared = max(size * prompt, rows * (min(prompt, window) + cont)) <= budget
            fits_flat = rows * (prompt + cont) <= budget
            if size > 1 and not (fits_shared or fits_flat):
                break
            # whichever is cheaper among those that fit; a lone example too big for both goes shared
            use_shared = shared <= flat if fits_shared and fits_flat else fits_shared or not fits_flat
            cost = best[j] + (shared if use_shared else flat)
            if cost < best[i]:
                best[i], choice[i] = cost, (j, use_shared)
    groups, i = [], n
    while i > 0:
        j, use_shared = choice[i]
        members = plans[j:i]
        crop = min(p.crop for p in members)
        groups.append(_Group(members, crop, min(p.split for p in members) if use_shared else crop))
        i = j
    return groups[::-1]


@contextmanager
def _logits_at(model, flat_positions: torch.Tensor):
    """Make model(idx) return logits (1, N, V) at the given flattened (row-major) positions only."""

    def keep_positions(module, args):
        x = args[0]
        return (x.reshape(-1, x.size(-1)).index_select(0, flat_positions).unsqueeze(0),)

    handle = model.lm_head.register_forward_pre_hook(keep_positions)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def _score_group(model, examples: list[Example], grouped: _Group, bos_id: int, tol: float):
    """Scores of one group, None where the decision is too close to call."""
    device = model.cos.device
    group, crop, split = grouped.plans, grouped.crop, grouped.split
    attention = getattr(getattr(model, "kernels", None), "attention", default_attention)
    window = max(getattr(model, "window_sizes", [0])) or split - crop
    cache = PrefixCache(attention, pos=crop, keep=min(split - crop, window))
    if split > crop:  # prefill the shared prompts, (G, split - crop); no logits needed
        prompts = torch.tensor([examples[p.k].rows[0][crop:split] for p in group], device=device)
        with _logits_at(model, torch.zeros(0, dtype=torch.long, device=device)):
            model(prompts, kv_cache=cache)

    # Continuations (R, width), right-padded with BOS: padding only follows what is scored.
    width = max(max(p.lengths) for p in group) - split
    conts = torch.full((sum(len(p.lengths) for p in group), width), bos_id, dtype=torch.long)
    prompt_of_row, positions, targets, span_lengths = [], [], [], []
    r = 0
    for g, p in enumerate(group):
        ex = examples[p.k]
        for row, s, e in zip(ex.rows, ex.starts, ex.ends, strict=True):
            conts[r, : len(row) - split] = torch.tensor(row[split:])
            prompt_of_row.append(g)
            # the loss at position t scores token t+1: span tokens [s, e) are predicted at [s-1, e-1)
            positions.extend(r * width + t - split for t in range(s - 1, e - 1))
            targets.extend(row[s:e])
            span_lengths.append(e - s)
            r += 1
    positions = torch.tensor(positions, device=device)
    targets = torch.tensor(targets, device=device)
    rows_cache = cache.select(torch.tensor(prompt_of_row, device=device))
    with _logits_at(model, positions):
        logits = model(conts.to(device), kv_cache=rows_cache)[0]  # (N, V) fp32, softcapped

    # Per-row reductions on the device, read back once per group (no per-example sync on a GPU).
    lengths = torch.tensor(span_lengths, device=device)
    row_of = torch.repeat_interleave(torch.arange(len(span_lengths), device=device), lengths)  # (N,)

    def per_row_sum(values: torch.Tensor) -> torch.Tensor:  # (N,) -> (rows,) float32
        return torch.zeros(len(span_lengths), device=device).index_add_(0, row_of, values.float())

    results, row = [], 0
    if examples[group[0].k].task_type == "language_modeling":  # one row per example
        # margin of the true token over the best other token, at every scored position
        true_logit = logits.gather(1, targets[:, None])[:, 0]
        margin = true_logit - logits.scatter(1, targets[:, None], float("-inf")).max(dim=1).values
        below, above, positive = torch.stack(
            [per_row_sum(c) for c in (margin < -tol, margin > tol, margin > 0)]
        ).tolist()
        predicted, offset = logits.argmax(dim=1).tolist(), 0
        for n, low, high, pos in zip(span_lengths, below, above, positive, strict=True):
            clear = low > 0 or high == n  # some token surely wrong, or every token surely right
            results.append(Score(pos == n, predicted=predicted[offset : offset + n]) if clear else None)
            offset += n
        return results
    losses = F.cross_entropy(logits, targets, reduction="none")  # (N,)
    means = (per_row_sum(losses) / lengths).tolist()  # fp32 mean loss per row
    for p in group:
        mean_losses = means[row : row + len(p.lengths)]
        row += len(p.lengths)
        ordered = sorted(mean_losses)
        clear = all(x == x for x in ordered) and (len(ordered) == 1 or ordered[1] - ordered[0] > tol)  # x == x: not NaN
        results.append(Score(choose(mean_losses) == examples[p.k].gold, mean_losses=mean_losses) if clear else None)
    return results


def score_examples(
    model,
    examples: list[Example],
    bos_id: int,
    *,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    tie_tolerance: float | None = None,
    forward_overhead_tokens: int | None = None,
) -> list[Score]:
    """One Score per example, in order; equal, example by example, to `core_reference.score_examples`."""
    core_reference.fit_rotary(model, examples)
    device_type = model.cos.device.type
    tol = default_tie_tolerance(model) if tie_tolerance is None else tie_tolerance
    overhead = forward_overhead_tokens or FORWARD_OVERHEAD_TOKENS.get(device_type, 1024)
    field = receptive_field(model)
    window = max(getattr(model, "window_sizes", [0])) or 1 << 30
    scores: list[Score | None] = [None] * len(examples)
    plans = [_plan(ex, k, field) for k, ex in enumerate(examples)]
    by_type: dict[str, list[_Plan]] = {}
    for p in plans:
        if p is not None:
            by_type.setdefault(examples[p.k].task_type, []).append(p)
    for type_plans in by_type.values():
        for group in _partition(type_plans, token_budget, overhead, window):
            for p, score in zip(group.plans, _score_group(model, examples, group, bos_id, tol), strict=True):
                scores[p.k] = score
    for k, score in enumerate(scores):
        if score is None:  # too close to call, or degenerate: the reference decides
            scores[k] = core_reference.score_example(model, examples[k], bos_id)
            scores[k].rechecked = True
    return scores
