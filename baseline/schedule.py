"""The training schedules of nanochat's base_train (fact sheet §4): lr multiplier, Muon momentum, Muon wd.

All three are plain Python-double functions of the step index `it` (0 … num_iterations), evaluated
in nanochat's order so the values are bit-identical; the warmdown length uses Python's round
(half to even). The trainer sets, before each optimizer step, every group's lr = initial_lr ·
lr_multiplier(it) and, for Muon groups, momentum = muon_momentum(it) and weight_decay =
muon_weight_decay(it). AdamW betas and weight decay stay constant.
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

    @property
    def warmdown_iters(self) -> int:
        return round(self.warmdown_ratio * self.num_iterations)

    def lr_multiplier(self, it: int) -> float:
        """Linear warmup to 1, flat, then linear decay to final_lr_frac at it = num_iterations."""
        if it < self.warmup_steps:
            return (it + 1) / self.warmup_steps
        if it <= self.num_iterations - self.warmdown_iters:
            return 1.0
        progress = (self.num_iterations - it) / self.warmdown_iters
        return progress * 1.0 + (1 - progress) * self.final_lr_frac

    def muon_momentum(self, it: int) -> float:
        """0.85 -> 0.97 over the first 400 steps (takes precedence), 0.97 -> 0.90 over the warmdown."""
        warmdown_start = self.num_iterations - self.warmdown_iters
        if it < MOMENTUM_WARMUP_STEPS:
            frac = it / MOMENTUM_WARMUP_STEPS
            return (1 - frac) * 0.85 + frac * 0.97
        if it >= warmdown_start:
            progress = (it - warmdown_start) / self.warmdown_iters
            return 0.97 * (1 - progress) + 0.90 * progress
        return 0.97

    def muon_weight_decay(self, it: int) -> float:
        """Cosine from weight_decay at step 0 to 0 at num_iterations."""
        return self.weight_decay * 0.5 * (1 + math.cos(math.pi * it / self.num_iterations))
