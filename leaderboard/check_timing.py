"""The train_time check: the timed seconds recomputed from the step events alone, and every claim held to them.

    result, seconds = check_train_time(record, events, facts, weights_sha256)   # events: members.parse_events

The rule is protocol/timing.py's (every step timed; nanochat's steps > 10 kept beside it; the runner's
clock against the trainer's). No field the submitter writes can switch a part of this check off: the
record's `steps`, `num_iterations`, `save_every` or `train_time_s` are compared with the events, never
used to skip one. What must hold:
  - every step from 0 to the last has exactly one step event, and the file ends with the trainer's
    `end` event, whose step count and train_time_s are the events' own;
  - the record's timing.steps, timing.num_iterations (and plan/config num_iterations when given)
    equal the number of steps; its train_time_s and nanochat_time_s equal what the events sum to;
  - every line carries the runner's stamp (`runner_t`, taken by the parent process as the line
    arrived) and protocol.timing.clock_check agrees: the runner's clock accounts for the seconds;
  - both clocks, line by line: each step's dt_s agrees with the wall clock and with the runner's clock
    since the line before it (the trainer writes a step's line right after timing it, and whatever else
    it does between steps, an eval or a save, writes its own lines): a step cannot have taken longer
    than that gap, and the gaps together may exceed the dt_s only by the logging slack below. A
    process start (`start`, one per launch) is the one gap not held to a step's dt_s;
  - the last save's sha256 is the uploaded model.safetensors': the weights are the ones the run saved;
  - on a fixed-budget track the run stopped at the first step boundary past the budget: the steps before
    the last sum to less than the budget and all of them to at least it (a run that trained on past its
    budget would score better); num_iterations is then the cap, at least the number of steps. A run may
    stop short of the budget only at its cap.
The limit: a file in which every stamp was rewritten consistently cannot be told from a real one
without rerunning; what makes that forgery pointless is the recomputed metric of the weights and the
held-out score (checks.py).
"""

from leaderboard.checks import CheckResult, ServerFacts
from protocol.events import CheckpointEvent, EndEvent, Event, StartEvent, StepEvent
from protocol.record import RunRecord
from protocol.timing import RULE, clock_check, nanochat_seconds, timed_seconds

# Slack between a step's clock gap and its dt_s: the trainer logs and prints between steps (a few ms) and
# collects garbage once after step 1; 1 s in all plus 5 ms + 1% a step covers that, and a step whose dt_s
# was shortened by more shows as unexplained time.
GAP_SLACK_S, GAP_SLACK_PER_STEP_S, GAP_SLACK_FRACTION = 1.0, 0.005, 0.01
IMPOSSIBLE_SLACK_S = 0.05  # a dt_s longer than its gap by more than this was edited (or the clock was)


def _steps_problems(steps: list[StepEvent]) -> tuple[list[str], int]:
    """(problems, number of steps) from the step indices: 0..n-1, each once."""
    indices = sorted(e.step for e in steps)
    n = indices[-1] + 1 if indices else 0
    problems, previous = [], -1
    for i in indices:
        if i == previous:
            problems.append(f"step {i} has more than one step event")
            break
        if i != previous + 1:
            problems.append(f"steps {previous + 1}..{i - 1} have no step event (every step from 0 must be there)")
            break
        previous = i
    return problems, n


def _claims_problems(record: RunRecord, events: list[Event], n: int, facts: ServerFacts) -> list[str]:
    timing, problems = record.timing, []
    recomputed, nanochat = timed_seconds(events), nanochat_seconds(events)
    tol = max(facts.time_abs_tolerance_s, facts.time_rel_tolerance * recomputed)
    claims = {
        "timing.steps": timing.steps,
        "timing.num_iterations": timing.num_iterations,
        "plan.num_iterations": (record.plan or {}).get("num_iterations"),
    }
    config_iterations = (record.config or {}).get("num_iterations")
    if isinstance(config_iterations, int) and config_iterations > 0:
        claims["config.num_iterations"] = config_iterations
    for name, value in claims.items():
        if value is not None and (value < n if facts.budget_s else value != n):
            problems.append(f"{name} = {value}, but the events hold {n} steps")
    end = events[-1] if events and isinstance(events[-1], EndEvent) else None
    if end is None or sum(isinstance(e, EndEvent) for e in events) != 1:
        problems.append("events.jsonl does not end with the trainer's one `end` event")
    else:
        said = end.model_extra or {}
        cap = said.get("num_iterations")
        capped = cap == n if not facts.budget_s else isinstance(cap, int) and cap >= n
        if said.get("step") != n or not capped or said.get("status") != "completed":
            problems.append(
                f"the end event says {said.get('status')} after {said.get('step')} of {said.get('num_iterations')} "
                f"steps, not {n}"
            )
        end_time = said.get("train_time_s")
        if not isinstance(end_time, int | float) or abs(end_time - recomputed) > tol:
            problems.append(f"the end event says train_time_s {end_time}, the steps sum to {recomputed:.6f}")
    if abs(timing.train_time_s - recomputed) > tol:
        problems.append(f"train_time_s claimed {timing.train_time_s}, the step events sum to {recomputed:.6f}")
    if timing.nanochat_time_s and abs(timing.nanochat_time_s - nanochat) > tol:
        problems.append(f"nanochat_time_s claimed {timing.nanochat_time_s}, steps > 10 sum to {nanochat:.6f}")
    if facts.budget_s and n:
        problems += _budget_problems(events, n, cap_reached=n == timing.num_iterations, budget_s=facts.budget_s)
    return problems


def _budget_problems(events: list[Event], n: int, *, cap_reached: bool, budget_s: float) -> list[str]:
    """A fixed-budget run ends at the first step boundary where the timed seconds reach the budget."""
    total = timed_seconds(events)
    last = next(e for e in reversed(events) if isinstance(e, StepEvent) and e.step == n - 1)
    before_last = total - last.dt_s
    if before_last >= budget_s:
        return [
            f"the steps before the last already sum to {before_last:.3f}s, past the {budget_s:g}s budget: "
            "the run trained on after its budget"
        ]
    if total < budget_s and not cap_reached:
        return [f"the steps sum to {total:.3f}s, short of the {budget_s:g}s budget, and the run did not reach its cap"]
    return []


def clock_gaps(events: list[Event], stamp: str) -> dict:
    """How the step events' dt_s fit one clock (`wall` or `runner_t`): unexplained seconds, the slack allowed,
    steps longer than their gap, and where the stamps run backwards."""
    excess, allowed, impossible, backwards = 0.0, GAP_SLACK_S, [], None
    for prev, cur in zip(events, events[1:], strict=False):
        gap = getattr(cur, stamp) - getattr(prev, stamp)
        if gap < 0 and backwards is None:
            backwards = getattr(cur, "step", None)
        if not isinstance(cur, StepEvent):
            continue
        if cur.dt_s > gap + IMPOSSIBLE_SLACK_S:
            impossible.append(cur.step)
        if isinstance(prev, StartEvent):  # a process start: set-up precedes the step
            continue
        excess += max(0.0, gap - cur.dt_s)
        allowed += GAP_SLACK_PER_STEP_S + GAP_SLACK_FRACTION * cur.dt_s
    return {"unexplained_s": excess, "allowed_s": allowed, "impossible_steps": impossible, "backwards_at": backwards}


def _clock_problems(events: list[Event], stamp: str, name: str) -> tuple[list[str], dict]:
    gaps, problems = clock_gaps(events, stamp), []
    if gaps["backwards_at"] is not None:
        problems.append(f"the {name} stamps run backwards (near step {gaps['backwards_at']}): lines were moved")
    if gaps["unexplained_s"] > gaps["allowed_s"]:
        problems.append(
            f"the {name} shows {gaps['unexplained_s']:.3f}s more than the steps' dt_s (allowed "
            f"{gaps['allowed_s']:.3f}s): step times were edited"
        )
    if gaps["impossible_steps"]:
        problems.append(
            f"{len(gaps['impossible_steps'])} steps took longer (dt_s) than the {name} between their lines "
            f"(first: step {gaps['impossible_steps'][0]})"
        )
    gaps["impossible_steps"] = gaps["impossible_steps"][:5]
    return problems, gaps


def _save_problems(events: list[Event], weights_sha256: str | None) -> list[str]:
    saves = [e for e in events if isinstance(e, CheckpointEvent)]
    if not saves or saves[-1].sha256 is None:
        return ["the events have no final checkpoint save with its sha256: upload what `speedrun run` wrote"]
    if weights_sha256 is not None and saves[-1].sha256 != weights_sha256:
        return ["model.safetensors is not the file the run's last save wrote (its sha256 differs)"]
    return []


def check_train_time(
    record: RunRecord, events: list[Event], facts: ServerFacts, weights_sha256: str | None = None
) -> tuple[CheckResult, float]:
    steps = [e for e in events if isinstance(e, StepEvent)]
    recomputed = timed_seconds(events)
    problems, n = _steps_problems(steps)
    problems += _claims_problems(record, events, n, facts)
    starts = sum(isinstance(e, StartEvent) for e in events)
    if starts > record.resumed + 1:
        problems.append(f"{starts} process starts in the events, the record says it was resumed {record.resumed} times")
    evidence = {
        "claimed_s": record.timing.train_time_s,
        "recomputed_s": recomputed,
        "nanochat_s": nanochat_seconds(events),
        "rule": RULE,
        "steps_claimed": record.timing.steps,
        "steps_logged": len(steps),
    }
    clock_problems, evidence["wall"] = _clock_problems(events, "wall", "wall clock")
    problems += clock_problems
    unstamped = sum(e.runner_t is None for e in events)
    if unstamped:
        problems.append(
            f"{unstamped} of {len(events)} lines lack the runner's stamp (runner_t): upload what `speedrun run` wrote"
        )
    else:
        clock = clock_check(events)
        evidence["clock"] = {"ok": clock.ok, "runner_span_s": clock.runner_span_s, "saves_s": clock.saves_s}
        if not clock.ok:
            problems.append(f"the runner's clock: {clock.detail}")
        clock_problems, evidence["runner"] = _clock_problems(events, "runner_t", "runner's clock")
        problems += clock_problems
    problems += _save_problems(events, weights_sha256)
    if problems:
        return CheckResult("train_time", "fail", "; ".join(problems), evidence), recomputed
    return CheckResult("train_time", "pass", f"{recomputed:.3f}s timed, as claimed", evidence), recomputed
