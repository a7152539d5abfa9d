"""Conformance of an open-division model: what the trainer, the eval, checkpoints and chat rely on, on a tiny model.

    from submissions.open_conformance import check_open_model, check_open_training
    check_open_model(sub, plan)        # SubmissionError (one line) on the first failure
    check_open_training(sub, plan)

`conformance.check_submission` calls them for every submission with build_model, with the tiny check plan,
around the optimizer check (which builds the open model too: every trainable parameter in exactly one
group, one step trains). In CPU fp32, a second or two. Each check guards an assumption made of every model,
in this order (the ones that call the model repeatedly come after the proof that repeating is harmless):
- the calling convention: model(idx) -> finite fp32 logits (B, T, vocab_size); model(idx, targets) -> a
  finite fp32 scalar; model(idx, targets, loss_reduction="none") -> finite fp32 (B, T);
- eval: two fresh copies (the same seed) score a batch the same (deterministic in eval mode); one copy
  scores the batches in order and then in reverse with the same per-batch losses, its parameters and
  buffers untouched (a model may not learn on what it is scored on; eval/open_model.py checks the same
  on the val data of every run);
- the losses are the cross-entropy of the logits (targets -1 ignored): the eval scores the logits;
- causal, row by row, any length: a position's logits do not move when later tokens or the other rows
  change, and a prefix of any length gives the prefix's logits (chat generates with model(idx));
- it trains: TRAIN_STEPS steps of its optimizer on one batch, the loss finite, every parameter moved;
- it loads its own checkpoint: the trained state_dict through safetensors into a fresh build_model
  (another seed) gives exactly the same logits (nothing learned may live outside the state_dict).
"""

import tempfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from baseline.checkpoint import load_state_into, state_for_saving
from baseline.config import TrainPlan
from baseline.hooks import apply_schedule
from eval.open_model import state_of, state_problem, token_losses
from submissions.contract import Submission, SubmissionError, call_plugin

TRAIN_STEPS = 4  # zero-initialised projections get a gradient from the second step on; every parameter by the 4th
EVAL_BATCHES = 3
ATOL, RTOL = 1e-5, 1e-4  # fp32 on CPU: the same function computed in other shapes (prefixes, one row)


def check_open_model(sub: Submission, plan: TrainPlan) -> None:
    """What the model is (calls, eval, losses, causality): before the optimizer check, which calls it."""
    where = f"submission {sub.name}"
    check_types(where, build(sub, plan, seed=0), plan)
    check_eval(where, lambda: build(sub, plan, seed=0).eval(), plan)
    check_calls(where, build(sub, plan, seed=0), plan)


def check_open_training(sub: Submission, plan: TrainPlan) -> None:
    """What training does to it (every parameter moves, the checkpoint reloads): after the optimizer check."""
    where = f"submission {sub.name}"
    model = build(sub, plan, seed=0)
    check_trains(where, sub, model, plan)
    check_reloads(where, sub, model, plan)


def build(sub: Submission, plan: TrainPlan, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = call_plugin(f"submission {sub.name}", "build_model", sub.build_model, plan, "cpu", torch.float32)
    if not isinstance(model, nn.Module):
        raise SubmissionError(
            f"submission {sub.name}: build_model returned {type(model).__name__}: return a torch.nn.Module"
        )
    return model


def _batch(plan: TrainPlan, seed: int, rows: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens (rows, T) and their next tokens, the last few of row 0 ignored (-1) as packing leaves them."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, plan.model_config.vocab_size, (rows, plan.config.max_seq_len + 1), generator=gen)
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].clone()
    targets[0, -3:] = -1
    return inputs, targets


def _differs(got: torch.Tensor, want: torch.Tensor) -> float | None:
    """The largest difference where got and want are not allclose (ATOL, RTOL), else None."""
    if got.shape == want.shape and torch.allclose(got, want, rtol=RTOL, atol=ATOL):
        return None
    return (got - want).abs().max().item() if got.shape == want.shape else float("inf")


@torch.no_grad()
def check_types(where: str, model: nn.Module, plan: TrainPlan) -> None:
    """Each of the three calls once, in eval mode: shapes, float32, finite."""
    x, y = _batch(plan, seed=1)
    B, T, V = *x.shape, plan.model_config.vocab_size
    model.eval()
    got = call_plugin(where, "model(idx)", model, x)
    _check_tensor(where, "model(idx)", "logits", got, (B, T, V), "return the logits of the vocab_size tokens")
    got = call_plugin(where, "model(idx, targets)", model, x, y)
    _check_tensor(where, "model(idx, targets)", "loss", got, (), "return the mean cross-entropy, a 0-d tensor")
    call = "model(idx, targets, loss_reduction='none')"
    got = call_plugin(where, call, model, x, y, loss_reduction="none")
    _check_tensor(where, call, "losses", got, (B, T), "return the per-token cross-entropy")


@torch.no_grad()
def check_calls(where: str, model: nn.Module, plan: TrainPlan) -> None:
    """The losses are those of the logits; causal by position and by row; any length."""
    model.eval()
    V = plan.model_config.vocab_size
    x, y = _batch(plan, seed=1)
    B, T = x.shape
    logits = model(x)
    loss, per_token = model(x, y), model(x, y, loss_reduction="none")
    want = F.cross_entropy(logits.reshape(-1, V), y.view(-1), ignore_index=-1, reduction="none").view(B, T)
    for what, got, ref in (("loss_reduction='none'", per_token, want), ("the mean loss", loss, want[y >= 0].mean())):
        if (diff := _differs(got, ref)) is not None:
            raise SubmissionError(
                f"{where}: {what} is not the cross-entropy of model(idx)'s logits (off by {diff:.3g}): compute the "
                "loss from the logits you return, targets -1 ignored (the eval scores the logits)"
            )
    probe = x.clone()
    probe[:, T // 2 :] = torch.randint(0, V, (B, T - T // 2), generator=torch.Generator().manual_seed(2))
    cases = (
        ("changing the tokens after position {t}", model(probe)[:, : T // 2], logits[:, : T // 2], T // 2 - 1),
        ("the prefix of the first {t} tokens alone", model(x[:, : T // 2]), logits[:, : T // 2], T // 2),
        ("one token alone", model(x[:, :1]), logits[:, :1], 1),
        ("row 1 alone (the other row removed)", model(x[1:]), logits[1:], 0),
    )
    for what, got, ref, t in cases:
        if (diff := _differs(got, ref)) is not None:
            raise SubmissionError(
                f"{where}: {what.format(t=t)} changes the logits (by {diff:.3g}): the model must be causal, row by "
                "row (position t sees tokens up to t of its own row only) and run on any length up to sequence_len"
            )


def _check_tensor(where: str, call: str, what: str, got, shape: tuple, fix: str) -> None:
    if not torch.is_tensor(got) or tuple(got.shape) != shape or got.dtype != torch.float32:
        desc = f"{tuple(got.shape)} {got.dtype}" if torch.is_tensor(got) else type(got).__name__
        raise SubmissionError(
            f"{where}: {call} returned {desc}; the {what} must be float32 of shape {shape}"
            + (f": {fix}" if fix else "")
        )
    if not torch.isfinite(got).all():
        raise SubmissionError(
            f"{where}: {call} has non-finite {what} at initialisation: check the forward's arithmetic"
        )


def check_trains(where: str, sub: Submission, model: nn.Module, plan: TrainPlan) -> None:
    """TRAIN_STEPS optimizer steps on one batch: finite losses, and every trainable parameter moves."""
    hooks = sub.hooks()
    optimizer = call_plugin(where, "build_optimizer", hooks.build_optimizer, model, plan, torch.float32)
    schedule = call_plugin(where, "build_schedule", hooks.build_schedule, plan)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    x, y = _batch(plan, seed=3)
    model.train()
    for step in range(TRAIN_STEPS):
        loss = call_plugin(where, "model(idx, targets) in training", model, x, y)
        if not torch.isfinite(loss.detach()).all():
            raise SubmissionError(f"{where}: the training loss is {loss.item()} at step {step}: keep the loss finite")
        call_plugin(where, "the backward", loss.backward)
        apply_schedule(optimizer, schedule, step, step / plan.num_iterations)
        call_plugin(where, "optimizer.step()", optimizer.step)
        model.zero_grad(set_to_none=True)
    params = dict(model.named_parameters())
    still = [name for name, p in before.items() if torch.equal(params[name].detach(), p)]
    if still:
        raise SubmissionError(
            f"{where}: {still[0]} did not change in {TRAIN_STEPS} training steps: it gets no gradient or no update; "
            "use it in the forward and put it in an optimizer group (submissions.param_groups), or make it a buffer"
        )


def check_reloads(where: str, sub: Submission, model: nn.Module, plan: TrainPlan) -> None:
    """The trained state through safetensors into a fresh build (another seed): the same logits, to the bit."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        try:
            save_file(state_for_saving(model), path)
        except Exception as e:  # noqa: BLE001 -- safetensors refuses what it cannot store, in several types
            raise SubmissionError(
                f"{where}: its state_dict cannot be saved with safetensors ({e}): keep tensors only"
            ) from e
        state = load_file(path)
    fresh = _loaded(sub, plan, state)
    x, _ = _batch(plan, seed=4)
    with torch.no_grad():
        want, got = model.eval()(x), fresh(x)
    if not torch.equal(got, want):
        diff = (got - want).abs().max().item()
        raise SubmissionError(
            f"{where}: cannot load its own checkpoint: a fresh build_model with the saved state_dict gives other "
            f"logits (by {diff:.3g}): keep every learned or random number in parameters or persistent buffers"
        )


def _loaded(sub: Submission, plan: TrainPlan, state: dict[str, torch.Tensor]) -> nn.Module:
    model = build(sub, plan, seed=1234)
    try:
        load_state_into(model, state)
    except ValueError as e:
        raise SubmissionError(f"submission {sub.name}: cannot load its own checkpoint: {e}") from e
    return model.eval()


@torch.no_grad()
def check_eval(where: str, fresh_model, plan: TrainPlan) -> None:
    """Deterministic in eval (two fresh copies agree), and unchanged by it (state, then batch order)."""
    V = plan.model_config.vocab_size
    batches = [_batch(plan, seed=10 + k) for k in range(EVAL_BATCHES)]
    model, other = fresh_model(), fresh_model()
    before = state_of(model)
    forward = [token_losses(model, x, y, V) for x, y in batches]
    reverse = [token_losses(model, x, y, V) for x, y in reversed(batches)][::-1]
    if problem := state_problem(model, before):
        raise SubmissionError(f"{where}: {problem}; keep the eval-time forward free of side effects")
    if not torch.equal(token_losses(other, *batches[0], V), forward[0]):
        raise SubmissionError(
            f"{where}: is not deterministic in eval mode: two copies with the same weights score the same batch "
            "differently: no dropout or sampling outside training (check self.training)"
        )
    for k, (a, b) in enumerate(zip(forward, reverse, strict=True)):
        if not torch.equal(a, b):
            raise SubmissionError(
                f"{where}: scoring the batches in reverse order changes batch {k}'s losses (by up to "
                f"{(a - b).abs().max().item():.3g}): the model changes as it is evaluated; it may not learn on "
                "what it is scored on"
            )
