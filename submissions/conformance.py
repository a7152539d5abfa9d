"""Conformance checks a submission must pass before it trains: optimizer coverage, sane schedule, equivalent kernels,
and for an open-division submission its own model (submissions/open_conformance.py).

    from submissions.conformance import check_submission
    check_submission(load_submission("my_idea"))       # SubmissionError (one line) on the first failure

The runner calls it once before the first seed; `tests/test_submissions.py` calls it on every folder in
submissions/. Everything runs on a tiny model (2 layers, 128 wide) in fp32, in about a second on CPU plus
whatever the submission's kernels take to compile.
Kernel equivalence follows `contract.KernelSpec`: each replacement and its baseline reference run on the
same random inputs of the model's shapes (the attention windows the model uses, -1 targets for the loss,
logits sliced from a padded vocabulary as the model slices them), and the outputs and the gradients of
every tensor input must agree within the spec's tolerance. `device="cuda"` checks a GPU path the same way.
"""

import math
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch

from baseline.config import TrainConfig, plan_training
from baseline.gpt import ROTARY_BASE
from baseline.hooks import apply_schedule
from baseline.optim import muon_step
from submissions.contract import (
    ALLOWED_OVERRIDES,
    KERNEL_SPECS,
    OPEN_OVERRIDES,
    Submission,
    SubmissionError,
    call_plugin,
)
from submissions.open_conformance import check_open_model, check_open_training

# The model the checks build: 2 layers (one with a value embedding), 4 heads of 32, a short and a long window.
CHECK_CONFIG = TrainConfig(
    depth=2,
    aspect_ratio=64,
    head_dim=32,
    max_seq_len=32,
    window_pattern="SL",
    vocab_size=512,
    device_batch_size=2,
    total_batch_size=64,
    num_iterations=20,
    eval_every=-1,
)
# Overrides of these kinds reach the check's plan (the architecture dials: in the open division only, where the
# model is the submission's); sizes, horizon and batch stay tiny.
CHECKED_KINDS = ("optimizer", "schedule", "architecture")


def check_submission(sub: Submission, *, device: str = "cpu") -> None:
    """Run every check; raises SubmissionError naming the first problem and its fix."""
    check_kernels(sub, device=device)  # first: the model below runs them
    check_schedule(sub)
    if sub.division == "open":  # the model first: the optimizer check calls it
        check_open_model(sub, check_plan(sub))
    check_optimizer(sub, device=device)
    if sub.division == "open":
        check_open_training(sub, check_plan(sub))


def check_plan(sub: Submission):
    kinds = ALLOWED_OVERRIDES | OPEN_OVERRIDES
    kept = {k: v for k, v in sub.config_overrides.items() if kinds[k] in CHECKED_KINDS}
    try:
        return plan_training(replace(CHECK_CONFIG, **kept))
    except ValueError as e:
        raise SubmissionError(f"submission {sub.name}: CONFIG {kept} gives no valid plan: {e}") from e


def check_optimizer(sub: Submission, *, device: str = "cpu") -> None:
    """build_optimizer holds every trainable parameter once, each group has initial_lr, and one step trains."""
    where = f"submission {sub.name}"
    plan, hooks = check_plan(sub), sub.hooks()
    torch.manual_seed(0)
    model = call_plugin(where, "build_model", hooks.model, plan, device, torch.float32)
    optimizer = call_plugin(where, "build_optimizer", hooks.build_optimizer, model, plan, torch.float32)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise SubmissionError(
            f"{where}: build_optimizer returned {type(optimizer).__name__}: return a torch.optim.Optimizer"
        )
    names = {id(p): name for name, p in model.named_parameters()}
    held: dict[int, int] = {}
    for i, group in enumerate(optimizer.param_groups):
        if "initial_lr" not in group:
            raise SubmissionError(
                f"{where}: param group {i} lacks 'initial_lr': set group['initial_lr'] = group['lr'] "
                "(apply_schedule sets lr = initial_lr × lr_multiplier)"
            )
        for p in group["params"]:
            held[id(p)] = held.get(id(p), 0) + 1
    missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in held]
    if missing:
        raise SubmissionError(
            f"{where}: build_optimizer leaves out {len(missing)} trainable parameter(s) ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): put every parameter in exactly one param group "
            "(baseline.optim.build_param_groups makes the baseline's)"
        )
    twice = [names[i] for i, count in held.items() if count > 1 and i in names]
    if twice:
        raise SubmissionError(f"{where}: build_optimizer holds {twice[0]} more than once: put it in exactly one group")
    if any(i not in names for i in held):
        raise SubmissionError(f"{where}: build_optimizer holds tensors that are not the model's parameters: drop them")

    x = torch.randint(0, plan.model_config.vocab_size, (2, plan.config.max_seq_len), device=device)
    schedule = call_plugin(where, "build_schedule", hooks.build_schedule, plan)
    before = [p.detach().clone() for p in model.parameters()]
    loss = call_plugin(where, "the model's forward with its kernels", model, x, x.roll(-1, dims=1))
    call_plugin(where, "the model's backward with its kernels", loss.backward)
    call_plugin(where, "the schedule", apply_schedule, optimizer, schedule, 0, 0.0)
    call_plugin(where, "optimizer.step()", optimizer.step)
    params = list(model.parameters())
    if not all(torch.isfinite(p).all() for p in params):
        raise SubmissionError(f"{where}: one optimizer step made parameters non-finite: check the update's arithmetic")
    if all(torch.equal(a, p) for a, p in zip(before, params, strict=True)):
        raise SubmissionError(
            f"{where}: one optimizer step changed no parameter: step() must update the params in place"
        )


def check_schedule(sub: Submission) -> None:
    """The schedule gives a finite number for each of its three values at every (step, progress), lr multiplier ≥ 0."""
    where = f"submission {sub.name}"
    plan = check_plan(sub)
    schedule = call_plugin(where, "build_schedule", sub.hooks().build_schedule, plan)
    for step in range(plan.num_iterations + 1):
        progress = step / plan.num_iterations
        for value in ("lr_multiplier", "muon_momentum", "muon_weight_decay"):
            method = getattr(schedule, value, None)
            if method is None:
                raise SubmissionError(f"{where}: the schedule has no {value}(step, progress): see contract.Schedule")
            got = call_plugin(where, f"schedule.{value}({step}, {progress:.3g})", method, step, progress)
            if not isinstance(got, int | float) or not math.isfinite(got) or (value == "lr_multiplier" and got < 0):
                raise SubmissionError(
                    f"{where}: schedule.{value}({step}, {progress:.3g}) = {got!r} of {plan.num_iterations} steps: "
                    f"return a finite float{' ≥ 0' if value == 'lr_multiplier' else ''}"
                )


# ---------------------------------------------------------------------------------------- kernels


def check_kernels(sub: Submission, *, device: str = "cpu") -> None:
    for name, candidate in sub.kernels.items():
        check_kernel(name, candidate, device=device, where=f"submission {sub.name}")


def check_kernel(name: str, candidate: Callable, *, device: str = "cpu", where: str = "kernel") -> None:
    """Compare `candidate` with KERNEL_SPECS[name].reference on every case of that operation."""
    spec = KERNEL_SPECS[name]
    gen = torch.Generator().manual_seed(1234)
    if name == "orthogonalize":
        return _check_orthogonalize(candidate, spec, gen, device, where)
    for case, args, kwargs in CASES[name](gen):
        want, want_grads = _forward_backward(spec.reference, args, kwargs, device)
        try:
            got, got_grads = _forward_backward(candidate, args, kwargs, device)
        except Exception as e:  # noqa: BLE001
            raise SubmissionError(
                f"{where}: kernel {name} raised {type(e).__name__} on {case}: {(str(e).splitlines() or [''])[0]}; "
                "every kernel must run in fp32 on CPU (the checks run there): dispatch to a GPU path inside"
            ) from e
        _compare(where, name, spec, f"output, {case}", got, want)
        for i, (g, w) in enumerate(zip(got_grads, want_grads, strict=True)):
            _compare(where, name, spec, f"gradient of input {i}, {case}", g, w)


def _forward_backward(fn: Callable, args: list, kwargs: dict, device: str):
    """fn's output and the gradients of its inputs that require grad, under a fixed random upstream gradient.

    Each tensor is copied afresh onto `device` with its strides kept (a sliced input stays non-contiguous).
    """
    inputs = [_copy(a, device) if torch.is_tensor(a) else a for a in args]
    out = fn(*inputs, **kwargs)
    leaves = [a for a in inputs if torch.is_tensor(a) and a.requires_grad]
    if not torch.is_tensor(out) or not out.requires_grad:
        return out, [None] * len(leaves)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(99)).to(out.device, out.dtype)
    grads = torch.autograd.grad(out, leaves, upstream, allow_unused=True)
    return out.detach(), [g if g is None else g.detach() for g in grads]


def _copy(a: torch.Tensor, device: str) -> torch.Tensor:
    copy = torch.empty_strided(a.size(), a.stride(), dtype=a.dtype, device=device)
    return copy.copy_(a.detach()).requires_grad_(a.requires_grad)


def _compare(where: str, name: str, spec, what: str, got, want) -> None:
    fix = f"make it compute {spec.reference.__module__}.{spec.reference.__name__} (contract.KERNEL_SPECS)"
    if want is not None and got is None:
        raise SubmissionError(f"{where}: kernel {name} gives no {what}: keep it differentiable; {fix}")
    if not torch.is_tensor(got) or got.shape != want.shape or got.dtype != want.dtype:
        shape = tuple(got.shape) if torch.is_tensor(got) else type(got).__name__
        raise SubmissionError(
            f"{where}: kernel {name} is not equivalent: {what} is {shape} {getattr(got, 'dtype', '')}, "
            f"the baseline's is {tuple(want.shape)} {want.dtype}; {fix}"
        )
    got, want = got.float().cpu(), want.float().cpu()
    excess = (got - want).abs() - (spec.atol + spec.rtol * want.abs())
    if not torch.isfinite(got).equal(torch.isfinite(want)) or (excess.nan_to_num(0.0) > 0).any():
        diff = (got - want).abs().nan_to_num(math.inf).max().item()
        raise SubmissionError(
            f"{where}: kernel {name} is not equivalent to the baseline: {what} differs by up to {diff:.3g} "
            f"(tolerance {spec.atol:g} + {spec.rtol:g}·|baseline|); {fix}: a kernel may be faster, never different"
        )


def _randn(gen, *shape, scale=1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * scale


def _attention_cases(gen) -> Iterator:
    B, T, H, D = 2, 64, 4, 32
    q, k, v = (_randn(gen, B, T, H, D).requires_grad_() for _ in range(3))
    # A long window (covers the whole row), beyond the row, a short one as in SSSL, and only itself.
    for window in (T - 1, T + 15, 16, 0):
        yield f"attention window {window} of {T}", (q, k, v, window), {}


def _rms_norm_cases(gen) -> Iterator:
    yield "activations (2, 32, 128)", (_randn(gen, 2, 32, 128, scale=3.0).requires_grad_(),), {}
    yield "per-head q/k (2, 32, 4, 32)", (_randn(gen, 2, 32, 4, 32).requires_grad_(),), {}


def _rotary_cases(gen) -> Iterator:
    B, T, H, D = 2, 32, 4, 32
    inv_freq = 1.0 / ROTARY_BASE ** (torch.arange(0, D, 2, dtype=torch.float32) / D)
    freqs = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)[None, :, None, :]  # (1, T, 1, D/2)
    yield "q (2, 32, 4, 32)", (_randn(gen, B, T, H, D).requires_grad_(), freqs.cos(), freqs.sin()), {}


def _mlp_activation_cases(gen) -> Iterator:
    yield "hidden (2, 32, 512)", (_randn(gen, 2, 32, 512).requires_grad_(),), {}


def _cross_entropy_cases(gen) -> Iterator:
    B, T, V, padded = 2, 48, 1000, 1024
    # Logits as the model makes them: sliced from a padded vocabulary, large enough that the softcap bites.
    logits = _randn(gen, B, T, padded, scale=8.0)[..., :V].requires_grad_()
    targets = torch.randint(0, V, (B, T), generator=gen)
    targets[torch.rand(B, T, generator=gen) < 0.2] = -1  # ignored positions
    for reduction in ("mean", "none"):
        yield f"reduction {reduction!r}, 20% targets -1", (logits, targets, reduction), {}


CASES = {
    "attention": _attention_cases,
    "rms_norm": _rms_norm_cases,
    "rotary": _rotary_cases,
    "mlp_activation": _mlp_activation_cases,
    "softcap_cross_entropy": _cross_entropy_cases,
}


def _check_orthogonalize(candidate: Callable, spec, gen: torch.Generator, device: str, where: str) -> None:
    """One whole Muon step with each orthogonalize; the parameter updates must agree (relative Frobenius)."""
    for K, m, n in ((3, 64, 64), (2, 128, 32), (2, 32, 128)):  # square, tall, wide
        grads, params = _randn(gen, K, m, n), _randn(gen, K, m, n, scale=0.02)
        momentum = _randn(gen, K, m, n, scale=0.01)
        second = _randn(gen, *((K, m, 1) if m >= n else (K, 1, n))).abs() * 1e-3
        updates = []
        for fn in (spec.reference, candidate):
            p = params.clone().to(device)
            hp = [torch.tensor(v) for v in (0.95, 0.02, 0.1, 0.9)]  # momentum, lr, weight decay, beta2
            try:
                muon_step(
                    grads.clone().to(device), p, momentum.clone().to(device), second.clone().to(device), *hp,
                    ns_steps=5, ortho_dtype=None, orthogonalize=fn,
                )  # fmt: skip
            except Exception as e:  # noqa: BLE001
                raise SubmissionError(
                    f"{where}: kernel orthogonalize raised {type(e).__name__} on ({K}, {m}, {n}): {e}"
                ) from e
            updates.append((p.cpu() - params).flatten(1))
        want, got = updates
        error = ((got - want).norm(dim=1) / want.norm(dim=1)).nan_to_num(math.inf).max().item()
        if error > spec.rtol:
            raise SubmissionError(
                f"{where}: kernel orthogonalize is not equivalent to the baseline: the Muon update of a "
                f"({K}, {m}, {n}) stack differs by {error:.3g} relative (tolerance {spec.rtol:g}); make it compute "
                "polar_express, or pass it to MuonAdamW in build_optimizer as an optimizer change"
            )
