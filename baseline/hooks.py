"""The named hook points where a plug-in meets the frozen trainer; every default is the baseline.

The trainer calls only these, so a submission never edits `baseline/train.py`:
- `build_optimizer(model, plan, compute_dtype)` -> a torch optimizer over every trainable parameter;
- `build_schedule(plan)` -> an object with `lr_multiplier(step, progress)`, `muon_momentum(step, progress)`
  and `muon_weight_decay(step, progress)`, progress in [0, 1] (see `baseline.schedule.Schedule`);
- `kernels`: replacement implementations of the model's named operations (`baseline.kernels`).
The written contract and its checks are in the submissions package.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from baseline.kernels import Kernels
from baseline.optim import MuonAdamW, build_param_groups
from baseline.schedule import Schedule


def baseline_optimizer(model, plan, compute_dtype: torch.dtype) -> torch.optim.Optimizer:
    # --compile (default: on for CUDA) compiles the optimizer's step kernels along with the model.
    groups = build_param_groups(model, **plan.optimizer_kwargs())
    return MuonAdamW(groups, compute_dtype=compute_dtype, compile=plan.config.compile)


def baseline_schedule(plan) -> Schedule:
    return plan.schedule()


def apply_schedule(optimizer: torch.optim.Optimizer, schedule, step: int, progress: float) -> float:
    """Set every group's lr (and Muon momentum / weight decay) for `step`; returns the lr multiplier."""
    lrm = schedule.lr_multiplier(step, progress)
    momentum, weight_decay = schedule.muon_momentum(step, progress), schedule.muon_weight_decay(step, progress)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lrm
        if group.get("kind") == "muon":
            group["momentum"] = momentum
            group["weight_decay"] = weight_decay
    return lrm


@dataclass(frozen=True)
class Hooks:
    build_optimizer: Callable[..., torch.optim.Optimizer] = baseline_optimizer
    build_schedule: Callable[..., object] = baseline_schedule
    kernels: Kernels = field(default_factory=Kernels)
