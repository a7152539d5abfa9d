"""The named hook points where a plug-in meets the frozen trainer; every default is the baseline.

The trainer calls only these, so a submission never edits `baseline/train.py`:
- `build_model(plan, device, compute_dtype)` -> an initialised torch.nn.Module on `device`: the open
  division's own architecture (None, the default: the baseline GPT of `plan.model_config` with `kernels`);
- `build_optimizer(model, plan, compute_dtype)` -> a torch optimizer over every trainable parameter;
- `build_schedule(plan)` -> an object with `lr_multiplier(step, progress)`, `muon_momentum(step, progress)`
  and `muon_weight_decay(step, progress)`, progress in [0, 1] (see `baseline.schedule.Schedule`);
- `kernels`: replacement implementations of the model's named operations (`baseline.kernels`).
The written contract and its checks are in the submissions package. `import_plugin` executes a plug-in's
module file: the contract's loader and the open division's eval (eval/open_model.py) both use it, so every
process knows plug-in code by its module name (harness/guard.py refuses some calls made from it).
"""

import importlib.util
import re
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from baseline.checkpoint import build_model
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
    build_model: Callable[..., torch.nn.Module] | None = None  # the open division's model; None: the baseline's

    def model(self, plan, device, compute_dtype: torch.dtype) -> torch.nn.Module:
        """The model to train: the plug-in's own (open division), else the baseline GPT with the kernels."""
        if self.build_model is not None:
            return self.build_model(plan, device, compute_dtype)
        return build_model(plan.model_config, device, compute_dtype, self.kernels)


PLUGIN_MODULE_PREFIX = "speedrun_submission_"  # every plug-in module is imported under this prefix


def import_plugin(name: str, source: str | Path) -> types.ModuleType:
    """Execute the plug-in module file `source` as `speedrun_submission_<name>`; its exceptions propagate."""
    module_name = PLUGIN_MODULE_PREFIX + re.sub(r"\W", "_", name)
    spec = importlib.util.spec_from_file_location(module_name, source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module
