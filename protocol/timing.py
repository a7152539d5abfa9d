"""The timing rule: which seconds a result counts, and whether two clocks agree on them.

    from protocol.timing import timed_seconds, nanochat_seconds, clock_check
    timed_seconds(events)        # Σ dt_s over every step: the track's timed seconds
    nanochat_seconds(events)     # Σ dt_s over steps > 10: nanochat's figure, kept for comparison
    clock_check(events)          # the trainer's clock against the runner's stamps

Every place that needs the rule (the trainer's running total, the runner, the verifier, the
benchmarks) calls these functions over the step events of protocol/events.py.

Every training step is timed, from step 0: a step's dt_s runs from a device synchronize before its
first micro-step to one after its loss is read, MAX over ranks. Compile and autotune warm-up happen
in a separate throwaway process before the timed one starts (harness/warmup.py), so nothing that
trains the model is left outside the clock. nanochat's own figure, Σ dt over steps > 10 (it counts
steps 0..10 as compile warm-up), is recorded under its own name so gpt2-track results still compare
with nanochat's table.

The clocks: the trainer measures dt_s in the training process, where a plug-in's code also runs. The
runner, which never imports submission code, stamps each event line with its own monotonic clock as
it arrives. Between the `start` event and the last step the runner's clock must account for the
claimed seconds: Σ dt_s ≥ (runner span − the checkpoint saves it saw) × (1 − CLOCK_SLACK_FRACTION) −
CLOCK_SLACK_S. A patched or slowed clock in the training process shows as a shortfall.
"""

import math
from dataclasses import dataclass

from protocol.events import CheckpointEvent, CheckpointStartEvent, Event, StartEvent, StepEvent

NANOCHAT_UNTIMED_STEPS = 11  # nanochat sums dt only for step > 10: steps 0..10 carry its compile warm-up
RULE = "sum of device-synchronized step times over every step from 0, MAX across ranks"
# What the trainer does between two steps (write the event line, the guard's checks) is not in any
# dt_s: a few milliseconds a step, so 2% plus a second of slack is generous, and a clock that runs
# slow by 5% or more shows.
CLOCK_SLACK_FRACTION = 0.02
CLOCK_SLACK_S = 1.0


def last_per_step(events: list[Event]) -> list[StepEvent]:
    """The step events in step order, one per step: a step logged twice (a resumed run) keeps its last line."""
    last = {}
    for e in events:
        if isinstance(e, StepEvent):
            last[e.step] = e
    return [last[s] for s in sorted(last)]


def timed_seconds(events: list[Event]) -> float:
    """Σ dt_s over every step: the timed seconds."""
    return math.fsum(e.dt_s for e in last_per_step(events))


def nanochat_seconds(events: list[Event]) -> float:
    """Σ dt_s over steps > 10, nanochat's total_training_time (its steps 0..10 are compile warm-up)."""
    return math.fsum(e.dt_s for e in last_per_step(events) if e.step >= NANOCHAT_UNTIMED_STEPS)


@dataclass
class ClockCheck:
    ok: bool
    claimed_s: float  # Σ dt_s of the steps the runner saw
    runner_span_s: float | None  # the runner's seconds from each launch's start to its last step, summed
    saves_s: float  # the runner's seconds spent inside checkpoint saves within that span
    detail: str


def clock_check(events: list[Event]) -> ClockCheck:
    """Do the trainer's step seconds and the runner's stamps agree? (per launch: a resume starts a new span)

    Every step event must carry a runner stamp; a launch's span runs from its `start` event's stamp to
    the stamp of its last step event.
    """
    launches: list[list[Event]] = []
    for e in events:
        if isinstance(e, StartEvent) or not launches:
            launches.append([])
        launches[-1].append(e)
    claimed = span = saves = 0.0
    for launch in launches:
        start = launch[0] if isinstance(launch[0], StartEvent) else None
        steps = [e for e in launch if isinstance(e, StepEvent)]
        if not steps:
            continue
        if start is None or start.runner_t is None or any(e.runner_t is None for e in steps):
            return ClockCheck(False, timed_seconds(events), None, 0.0, "step events without the runner's stamps")
        claimed += math.fsum(e.dt_s for e in steps)
        span += steps[-1].runner_t - start.runner_t
        opened = None
        for e in launch:
            if isinstance(e, CheckpointStartEvent):
                opened = e.runner_t
            elif isinstance(e, CheckpointEvent) and opened is not None and e.runner_t is not None:
                if e.runner_t <= steps[-1].runner_t:
                    saves += e.runner_t - opened
                opened = None
    accounted = (span - saves) * (1 - CLOCK_SLACK_FRACTION) - CLOCK_SLACK_S
    if claimed < accounted:
        detail = (
            f"the steps claim {claimed:.3f}s but the runner's clock saw {span - saves:.3f}s of training: "
            "the training process's clock is off"
        )
        return ClockCheck(False, claimed, span, saves, detail)
    if claimed > span + CLOCK_SLACK_S:
        detail = f"the steps claim {claimed:.3f}s, more than the {span:.3f}s the runner saw"
        return ClockCheck(False, claimed, span, saves, detail)
    return ClockCheck(True, claimed, span, saves, f"{claimed:.3f}s claimed, {span - saves:.3f}s seen by the runner")
