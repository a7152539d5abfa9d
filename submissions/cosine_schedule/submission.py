"""Cosine learning-rate decay after a warmup capped at 10% of the run: a schedule change.

    speedrun run cosine_schedule --track cpu-books --seeds 3

The baseline warms up for a fixed 40 steps, stays flat, then decays linearly over the last 65% of the
run. On a short horizon the fixed warmup is most of the run: on cpu-books (40 steps) the baseline's lr
ramps up for the whole run and never decays. Here the warmup is min(warmup_steps, 10% of the steps) and
the lr then follows a half cosine from 1 to final_lr_frac at the last step (Loshchilov & Hutter 2017).
Muon momentum and weight decay keep the baseline's schedules.
"""

import math
from dataclasses import dataclass

from baseline.schedule import Schedule

METADATA = {
    "authors": ["speedrun maintainers"],
    "description": "warmup capped at 10% of the run, then cosine lr decay to final_lr_frac; momentum and wd unchanged",
    "references": ["Loshchilov & Hutter 2017, SGDR: Stochastic Gradient Descent with Warm Restarts"],
}

WARMUP_FRACTION = 0.1  # of num_iterations, at most; never longer than the baseline's warmup_steps


@dataclass(frozen=True)
class CosineSchedule:
    baseline: Schedule  # Muon momentum and weight decay come from here
    warmup_steps: int

    def lr_multiplier(self, step: int, progress: float) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.baseline.by_progress:  # a fixed-budget track: the cosine runs on the fraction of the budget
            done = progress
        else:
            done = (step - self.warmup_steps) / max(1, self.baseline.num_iterations - self.warmup_steps)
        final = self.baseline.final_lr_frac
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))

    def muon_momentum(self, step: int, progress: float) -> float:
        return self.baseline.muon_momentum(step, progress)

    def muon_weight_decay(self, step: int, progress: float) -> float:
        return self.baseline.muon_weight_decay(step, progress)


def build_schedule(plan) -> CosineSchedule:
    baseline = plan.schedule()
    warmup = min(baseline.warmup_steps, max(1, round(WARMUP_FRACTION * baseline.num_iterations)))
    return CosineSchedule(baseline, warmup)
