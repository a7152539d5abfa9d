"""The training schedules of nanochat's base_train (fact sheet §4): lr multiplier, Muon momentum, Muon wd.

Each is a function of the step index `it` and of `progress` in [0, 1], the fraction of the run done
(it / num_iterations on a track with a step horizon; the timed seconds over the budget on a
fixed-budget track, where the number of steps is not known in advance). The trainer sets, before each
optimizer step, every group's lr = initial_lr · lr_multiplier(it, progress) and, for Muon groups,
momentum = muon_momentum(it, progress) and weight_decay = muon_weight_decay(it, progress). AdamW betas
and weight decay stay constant.

With a step horizon (by_progress False) these are nanochat's formulas in the step index, plain Python
doubles evaluated in nanochat's order so the values are bit-identical (the warmdown length uses
Python's round, half to even), and `progress` is not read. With a budget (by_progress True) the warmups
stay in steps and everything that depends on the horizon (the lr and momentum warmdowns, the weight
decay's cosine) runs on progress instead, so the warmdown ends exactly at the budget, as autoresearch's does.
"""

import math
from dataclasses import dataclass

MOMENTUM_WARMUP_STEPS = 400  # Muon momentum ramps 0.85 -> 0.97 over the first 400 steps


@dataclass(frozen=True)
class Schedule:
    num_iterations: int
    weight_decay: float  # Muon weight decay at step 0 (already scaled for batch size and horizon)
    warmup_steps: int = 40
    warmdown_ratio: float = 0.65
    final_lr_frac: float = 0.05
    by_progress: bool = False  # a fixed-budget track: the horizon is time, given as progress

    @property
    def warmdown_iters(self) -> int:
        return round(self.warmdown_ratio * self.num_iterations)

    def lr_multiplier(self, it: int, progress: float | None = None) -> float:
        """Linear warmup to 1, flat, then linear decay to final_lr_frac at the end of the horizon."""
        if it < self.warmup_steps:
            return (it + 1) / self.warmup_steps
        if self.by_progress:
            left = (1 - min(progress, 1.0)) / self.warmdown_ratio if self.warmdown_ratio > 0 else 1.0
            return 1.0 if left >= 1 else left * 1.0 + (1 - left) * self.final_lr_frac
        if it <= self.num_iterations - self.warmdown_iters:
            return 1.0
        progress = (self.num_iterations - it) / self.warmdown_iters
        return progress * 1.0 + (1 - progress) * self.final_lr_frac

    def muon_momentum(self, it: int, progress: float | None = None) -> float:
        """0.85 -> 0.97 over the first 400 steps (takes precedence), 0.97 -> 0.90 over the warmdown."""
        if it < MOMENTUM_WARMUP_STEPS:
            frac = it / MOMENTUM_WARMUP_STEPS
            return (1 - frac) * 0.85 + frac * 0.97
        if self.by_progress:
            into = (min(progress, 1.0) - (1 - self.warmdown_ratio)) / self.warmdown_ratio if self.warmdown_ratio else 0
            return 0.97 if into <= 0 else 0.97 * (1 - into) + 0.90 * into
        warmdown_start = self.num_iterations - self.warmdown_iters
        if it >= warmdown_start:
            progress = (it - warmdown_start) / self.warmdown_iters
            return 0.97 * (1 - progress) + 0.90 * progress
        return 0.97

    def muon_weight_decay(self, it: int, progress: float | None = None) -> float:
        """Cosine from weight_decay at the start to 0 at the end of the horizon."""
        done = min(progress, 1.0) if self.by_progress else it / self.num_iterations
        return self.weight_decay * 0.5 * (1 + math.cos(math.pi * done))
