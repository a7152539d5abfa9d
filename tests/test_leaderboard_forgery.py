"""Forged times: every way issue #14 made a faster time verify now fails, and a fuzz test over mutated events.

The checks are run on the golden bundle's parsed record and events (leaderboard/check_timing.py), the
unit that decides; tests/test_leaderboard_attacks.py takes a forgery through upload and the worker.
The property (Hypothesis): whatever is done to the step times, the stamps and the claimed fields, the
check either fails or the verified time is the true one (within the logging slack it states).
"""

import copy
import dataclasses
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leaderboard.check_timing import GAP_SLACK_FRACTION, GAP_SLACK_PER_STEP_S, GAP_SLACK_S, check_train_time
from leaderboard.checks import ServerFacts
from leaderboard.members import parse_events
from protocol.events import parse_event
from protocol.record import parse_record
from protocol.timing import CLOCK_SLACK_FRACTION, CLOCK_SLACK_S
from tests import leaderboard_fixtures as fixtures

FACTS = ServerFacts(
    code_hashes={},
    frozen_packages=(),
    tokenizer_dir=None,
    tokenizer_hash=None,
    data_dir=None,
    data_hash=None,
    eval_bundle=None,
    eval_tokens=4096,
)


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    if why := fixtures.available():
        pytest.skip(why)
    paths = fixtures.make_bundle(tmp_path_factory.mktemp("forgery"), run_id="honest", seed=3, n_steps=30)
    record = json.loads(paths["record.json"].read_text())
    events = [json.loads(e.line()) for e in parse_events(paths["events.jsonl"])]
    return record, events


def verdict(record: dict, events: list[dict]):
    """check_train_time on dict events (as the upload would parse them: a line that does not parse is None)."""
    lines = []
    for e in events:
        try:
            lines.append(parse_event(e))
        except ValueError:
            return None  # the upload refuses it (422): it never reaches the verifier
    return check_train_time(parse_record(record), lines, FACTS)


def fails(record: dict, events: list[dict], words: str = "") -> bool:
    got = verdict(record, events)
    return got is None or (got[0].outcome == "fail" and words in got[0].detail)


def steps_of(events):
    return [e for e in events if e["event"] == "step"]


def timed(events) -> float:
    return sum(e.get("dt_s", 0) for e in events if e.get("event") == "step")


def test_the_honest_events_pass_with_their_claimed_time(honest):
    record, events = honest
    result, seconds = verdict(record, events)
    assert result.outcome == "pass", result.detail
    assert seconds == pytest.approx(record["timing"]["train_time_s"], rel=1e-12)


def test_truncated_events_with_no_walls_and_steps_zero_fail(honest):
    """Issue #14.1: keep steps 0..11, delete every wall, set step 11's dt to X, timing.steps = 0, train_time_s = X."""
    record, events = copy.deepcopy(honest)
    kept = [e for e in events if e["event"] != "step" or e["step"] <= 11]
    for e in kept:
        e.pop("wall", None)
    steps_of(kept)[-1]["dt_s"] = 0.0011
    record["timing"].update(steps=0, train_time_s=0.0011)
    assert verdict(record, kept) is None  # a line without a wall stamp does not parse: the upload refuses it
    record2, events2 = copy.deepcopy(honest)  # the same with the walls left: the claims do not fit the events
    kept = [e for e in events2 if e["event"] != "step" or e["step"] <= 11]
    steps_of(kept)[-1]["dt_s"] = 0.0011
    record2["timing"].update(steps=0, train_time_s=0.0011)
    assert fails(record2, kept, "timing.steps = 0, but the events hold 12 steps")


def test_halved_step_times_with_the_sum_adjusted_and_save_every_1_fail(honest):
    """Issue #14.1: every dt_s halved, the claimed sum (and the end event) adjusted, config.save_every = 1."""
    record, events = copy.deepcopy(honest)
    for e in steps_of(events):
        e["dt_s"] /= 2
    total = timed(events)
    events[-1]["train_time_s"] = total
    record["timing"]["train_time_s"] = total
    record["timing"]["nanochat_time_s"] = 0.0
    record["config"]["save_every"] = 1
    assert fails(record, events, "step times were edited")
    assert fails(record, events, "the training process's clock is off")  # protocol.timing.clock_check too


def test_deleting_the_wall_stamps_fails(honest):
    record, events = copy.deepcopy(honest)
    for e in events:
        e.pop("wall")
    assert verdict(record, events) is None


def test_a_missing_step_a_repeated_step_and_a_moved_line_fail(honest):
    record, events = copy.deepcopy(honest)
    del events[15]
    assert fails(record, events, "have no step event")
    record, events = copy.deepcopy(honest)
    events.insert(16, dict(events[15]))
    assert fails(record, events, "more than one step event")
    record, events = copy.deepcopy(honest)
    events[14], events[15] = events[15], events[14]
    assert fails(record, events, "run backwards")


def test_claimed_counts_and_the_end_event_are_held_to_the_events(honest):
    for edit, words in (
        (lambda r, ev: r["timing"].update(steps=10**9), "timing.steps"),
        (lambda r, ev: r["timing"].update(num_iterations=12), "timing.num_iterations"),
        (lambda r, ev: r["plan"].update(num_iterations=12), "plan.num_iterations"),
        (lambda r, ev: ev.pop(), "does not end with the trainer's one `end` event"),
        (lambda r, ev: r["timing"].update(nanochat_time_s=0.5), "nanochat_time_s claimed"),
        (lambda r, ev: [e.pop("sha256", None) for e in ev], "no final checkpoint save with its sha256"),
        (lambda r, ev: ev[-1].update(train_time_s=1.0), "the end event says train_time_s"),
    ):
        record, events = copy.deepcopy(honest)
        edit(record, events)
        assert fails(record, events, words), words


def test_runner_stamps_are_required_and_hold_when_dt_and_walls_are_rewritten_together(honest):
    record, events = copy.deepcopy(honest)
    del events[5]["runner_t"]
    assert fails(record, events, "lack the runner's stamp")
    record, events = copy.deepcopy(honest)
    for e in steps_of(events):  # dt_s and the trainer's walls rewritten together; the runner's clock left as it was
        e["dt_s"] /= 2
    shift = 0.0
    for e in events:
        shift += e["dt_s"] if e["event"] == "step" else 0.0
        e["wall"] -= shift
    events[-1]["train_time_s"] = record["timing"]["train_time_s"] = timed(events)
    record["timing"]["nanochat_time_s"] = 0.0
    assert fails(record, events, "runner's clock")


def test_the_uploaded_weights_must_be_the_last_save(honest):
    record, events = honest
    got = check_train_time(parse_record(record), [parse_event(e) for e in events], FACTS, weights_sha256="0" * 64)
    assert got[0].outcome == "fail" and "not the file the run's last save wrote" in got[0].detail


# ------------------------------------------------------------------ the fuzz test

MUTATIONS = ("scale_dt", "drop_key", "drop_line", "duplicate_line", "claim", "set_dt")


@st.composite
def mutations(draw, n_events: int):
    out = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(MUTATIONS))
        i = draw(st.integers(0, n_events - 1))
        if kind in ("scale_dt", "set_dt"):
            value = draw(st.floats(0.0, 3.0, allow_nan=False))
            out.append((kind, draw(st.lists(st.integers(0, n_events - 1), min_size=1, max_size=n_events)), value))
        elif kind == "drop_key":
            out.append((kind, i, draw(st.sampled_from(["wall", "dt_s", "step", "runner_t", "train_time_s", "sha256"]))))
        elif kind == "claim":
            field = draw(st.sampled_from(["train_time_s", "nanochat_time_s", "steps", "num_iterations", "save_every"]))
            out.append((kind, field, draw(st.sampled_from([0, 1, 12, 10**9, "sum"]))))
        else:
            out.append((kind, i, None))
    adjust = draw(st.booleans())  # a forger keeps the claimed total and end event equal to the new sum
    return out, adjust


def apply(record: dict, events: list[dict], muts, adjust: bool):
    record, events = copy.deepcopy(record), copy.deepcopy(events)
    for kind, at, value in muts:
        if kind in ("scale_dt", "set_dt"):
            for i in set(at):
                e = events[min(i, len(events) - 1)]
                if "dt_s" in e:
                    e["dt_s"] = e["dt_s"] * value if kind == "scale_dt" else value
        elif kind == "drop_key":
            events[min(at, len(events) - 1)].pop(value, None)
        elif kind == "drop_line" and len(events) > 1:
            del events[min(at, len(events) - 1)]
        elif kind == "duplicate_line":
            i = min(at, len(events) - 1)
            events.insert(i, dict(events[i]))
        elif kind == "claim":
            v = timed(events) if value == "sum" else value
            if at == "save_every":
                record["config"]["save_every"] = 1 if value == "sum" else v
            else:
                record["timing"][at] = v
    if adjust:
        record["timing"]["train_time_s"] = timed(events)
        record["timing"]["nanochat_time_s"] = 0.0
        if events and events[-1].get("event") == "end":
            events[-1]["train_time_s"] = timed(events)
    return record, events


def allowed_slack(events: list[dict]) -> float:
    """The most a passing forgery can have shaved: the least of the slack each clock's check states."""
    steps = [e for e in events if e.get("event") == "step"]
    gaps = GAP_SLACK_S + sum(GAP_SLACK_PER_STEP_S + GAP_SLACK_FRACTION * e.get("dt_s", 0) for e in steps)
    runner = CLOCK_SLACK_S + CLOCK_SLACK_FRACTION * timed(events)
    return min(gaps, runner)


def check_property(honest, data) -> None:
    record, events = honest
    truth = record["timing"]["train_time_s"]
    muts, adjust = data.draw(mutations(len(events)))
    forged_record, forged_events = apply(record, events, muts, adjust)
    try:
        parse_record(forged_record)
    except ValueError:
        return  # the upload refuses it
    got = verdict(forged_record, forged_events)
    if got is None or got[0].outcome == "fail":
        return
    assert got[1] == pytest.approx(truth, abs=allowed_slack(events)), (muts, adjust, got[0].detail)


@settings(max_examples=60, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_change_to_a_time_fails_or_leaves_the_verified_time_true(honest, data):
    check_property(honest, data)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_change_to_a_time_fails_or_leaves_the_verified_time_true_at_length(honest, data):
    check_property(honest, data)


def as_budget_run(record: dict, events: list[dict], cap: int) -> tuple[dict, list[dict]]:
    """The honest run as a fixed-budget track's run would write it: num_iterations is the cap, not the steps."""
    record, events = copy.deepcopy(record), copy.deepcopy(events)
    record["timing"]["num_iterations"] = cap
    for part in ("plan", "config"):
        if isinstance(record.get(part), dict) and "num_iterations" in record[part]:
            record[part]["num_iterations"] = cap
    events[-1]["num_iterations"] = cap
    return record, events


def budget_verdict(record: dict, events: list[dict], budget_s: float):
    lines = [parse_event(e) for e in events]
    return check_train_time(parse_record(record), lines, dataclasses.replace(FACTS, budget_s=budget_s))[0]


def test_a_budget_run_that_stopped_at_the_first_boundary_past_its_budget_passes(honest):
    record, events = as_budget_run(*honest, cap=10_000)
    total, last = timed(events), steps_of(events)[-1]["dt_s"]
    result = budget_verdict(record, events, budget_s=total - last / 2)
    assert result.outcome == "pass", result.detail
    # The same files checked as a time-to-target run fail: there num_iterations must be the steps.
    assert budget_verdict(record, events, budget_s=0).outcome == "fail"


def test_a_budget_run_that_trained_on_past_its_budget_fails(honest):
    """An extra step after the budget was reached buys a better score: the steps before the last already
    reached the budget."""
    record, events = as_budget_run(*honest, cap=10_000)
    total, last = timed(events), steps_of(events)[-1]["dt_s"]
    result = budget_verdict(record, events, budget_s=(total - last) * 0.9)
    assert result.outcome == "fail" and "trained on after its budget" in result.detail


def test_a_budget_run_short_of_its_budget_passes_only_at_its_cap(honest):
    record, events = honest
    n = len(steps_of(events))
    short, _ = as_budget_run(record, events, cap=n + 5)
    result = budget_verdict(short, as_budget_run(record, events, cap=n + 5)[1], budget_s=timed(events) + 10)
    assert result.outcome == "fail" and "short of the" in result.detail
    at_cap, at_cap_events = as_budget_run(record, events, cap=n)
    assert budget_verdict(at_cap, at_cap_events, budget_s=timed(events) + 10).outcome == "pass"


def test_a_budget_runs_cap_below_its_steps_fails(honest):
    record, events = as_budget_run(*honest, cap=3)
    result = budget_verdict(record, events, budget_s=timed(events) - steps_of(events)[-1]["dt_s"] / 2)
    assert result.outcome == "fail" and "timing.num_iterations = 3" in result.detail
