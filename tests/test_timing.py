"""protocol.timing: every step counts, nanochat's figure is kept apart, and the two clocks must agree."""

import pytest

from protocol.events import CheckpointEvent, CheckpointStartEvent, StartEvent, StepEvent, drop_from_step, read_events
from protocol.timing import CLOCK_SLACK_FRACTION, clock_check, nanochat_seconds, timed_seconds


def launch(dts, *, first=0, t0=0.0, overhead=0.002, clock_rate=1.0, save_at=None, save_s=0.0):
    """The events one launch of the trainer writes, stamped as the runner would see them.

    clock_rate < 1: the training process's clock runs slow (its dt_s shrink); the runner's does not.
    """
    events, t = [StartEvent(step=first, wall=t0, runner_t=t0)], t0
    for i, dt in enumerate(dts):
        step = first + i
        t += dt + overhead
        events.append(StepEvent(step=step, dt_s=dt * clock_rate, wall=t, runner_t=t))
        if save_at == step:
            events.append(CheckpointStartEvent(step=step + 1, wall=t, runner_t=t))
            t += save_s
            events.append(CheckpointEvent(step=step + 1, seconds=save_s, wall=t, runner_t=t))
    return events


def test_every_step_is_timed_and_nanochat_figure_is_steps_after_ten():
    events = launch([1.0 + s for s in range(15)])
    assert timed_seconds(events) == sum(1.0 + s for s in range(15))
    assert nanochat_seconds(events) == sum(1.0 + s for s in range(11, 15))


def test_a_resumed_step_counts_its_last_line():
    events = launch([1.0] * 13) + launch([100.0, 2.0, 3.0], first=12, t0=50.0)
    assert timed_seconds(events) == 12.0 + 100.0 + 2.0 + 3.0


def test_honest_clocks_agree_and_saves_are_not_training():
    check = clock_check(launch([0.5] * 40, save_at=19, save_s=30.0))
    assert check.ok and check.saves_s == pytest.approx(30.0) and check.claimed_s == pytest.approx(20.0)


@pytest.mark.parametrize("rate", [0.5, 0.9, 1 - 2 * CLOCK_SLACK_FRACTION - 0.01])
def test_a_slow_clock_in_the_training_process_is_caught(rate):
    check = clock_check(launch([1.0] * 100, clock_rate=rate))
    assert not check.ok and "clock is off" in check.detail


def test_work_hidden_in_a_save_that_is_not_one_is_still_counted_against_the_steps():
    """A checkpoint_start with no matching save end does not excuse the gap."""
    events = launch([1.0] * 30)
    events.insert(10, CheckpointStartEvent(step=10, wall=9.0, runner_t=9.0))
    later = [e for e in events if isinstance(e, StepEvent) and e.step >= 10]
    for e in later:
        e.runner_t += 20.0  # 20 s of work the steps do not claim
    assert not clock_check(events).ok


def test_unstamped_steps_fail_the_check():
    events = launch([1.0] * 5)
    events[3].runner_t = None
    assert not clock_check(events).ok


def test_each_launch_of_a_resumed_run_is_checked_on_its_own_clock():
    events = launch([1.0] * 10) + launch([1.0] * 10, first=8, t0=5.0)  # another runner, another origin
    assert clock_check(events).ok
    slowed = launch([1.0] * 10) + launch([1.0] * 10, first=8, t0=5.0, clock_rate=0.5)
    assert not clock_check(slowed).ok


def test_dropping_from_a_resume_step_keeps_the_earlier_launch(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("".join(e.line() for e in launch([1.0] * 10, save_at=5, save_s=1.0)))
    drop_from_step(path, 6)
    kept = read_events(path)
    assert [e.step for e in kept if isinstance(e, StepEvent)] == list(range(6))
    assert isinstance(kept[0], StartEvent) and isinstance(kept[-1], CheckpointEvent) and kept[-1].step == 6
