"""The timing rule: which steps' seconds a result counts, computed from the trainer's step events.

    from protocol.timing import is_timed, timed_seconds
    timed_seconds(step_events)       # Σ dt_s over the timed steps (a resumed run's repeated step counts once)

Every place that needs the rule (the trainer's running total, the runner's telemetry window, the
verifier's recomputation, the benchmarks) calls these functions. A step event is a dict with at least
`step` (0-based index) and `dt_s` (its device-synchronized seconds, MAX over ranks).

The rule is nanochat's: steps 0..10 carry compile warm-up and are not timed; train_time_s is the sum
of dt over steps with index > 10.
"""

import math
from collections.abc import Iterable

NANOCHAT_UNTIMED_STEPS = 11  # nanochat sums dt only for step > 10: steps 0..10 carry compile warm-up
RULE = "sum of device-synchronized step times of steps > 10, MAX across ranks (nanochat's total_training_time)"


def is_timed(step: int) -> bool:
    return step >= NANOCHAT_UNTIMED_STEPS


def last_per_step(step_events: Iterable[dict]) -> list[dict]:
    """The step events in step order, one per step: a step logged twice (a resumed run) keeps its last line."""
    last = {}
    for e in step_events:
        last[e["step"]] = e
    return [last[s] for s in sorted(last)]


def timed_seconds(step_events: Iterable[dict]) -> float:
    """Σ dt_s over the timed steps."""
    return math.fsum(e["dt_s"] for e in last_per_step(step_events) if is_timed(e["step"]))
