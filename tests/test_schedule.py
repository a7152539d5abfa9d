"""The lr, Muon momentum and Muon weight-decay schedules equal base_train's own (golden schedules.json)."""

import pytest

from baseline.schedule import Schedule
from tests.conftest import load_json


def _schedules(golden):
    for case in load_json(golden / "optim" / "schedules.json"):
        cfg = case["config"]
        schedule = Schedule(
            num_iterations=cfg["num_iterations"],
            weight_decay=cfg["weight_decay"],
            warmup_steps=cfg["warmup_steps"],
            warmdown_ratio=cfg["warmdown_ratio"],
            final_lr_frac=cfg["final_lr_frac"],
        )
        yield schedule, case


@pytest.mark.parametrize("name", ["lr_multiplier", "muon_momentum", "muon_weight_decay"])
def test_schedule_matches_nanochat_at_every_step(golden, name):
    for schedule, case in _schedules(golden):
        assert schedule.warmdown_iters == case["warmdown_iters"]
        got = [getattr(schedule, name)(it) for it in case["it"]]
        assert got == pytest.approx(case[name], rel=1e-12, abs=1e-15), (case["config"], name)


def test_warmdown_length_rounds_half_to_even():
    # 0.5 · 5 = 2.5 rounds to 2 under Python's banker's rounding, as in nanochat.
    assert Schedule(num_iterations=5, weight_decay=0.1, warmdown_ratio=0.5).warmdown_iters == 2


def test_momentum_warmup_takes_precedence_over_warmdown():
    schedule = Schedule(num_iterations=100, weight_decay=0.1)  # warmdown starts at step 35 < 400
    assert schedule.muon_momentum(50) == pytest.approx(0.85 + 0.12 * 50 / 400)


def test_a_budget_schedule_runs_its_warmdown_on_progress():
    """A fixed-budget track: warmups in steps, the lr and momentum warmdowns and the wd cosine end at progress 1."""
    s = Schedule(num_iterations=10**6, weight_decay=0.2, warmup_steps=10, warmdown_ratio=0.5, final_lr_frac=0.05,
                 by_progress=True)  # fmt: skip
    assert s.lr_multiplier(4, 0.9) == 0.5  # still warming up by steps, whatever the progress
    assert s.lr_multiplier(50, 0.3) == 1.0 and s.lr_multiplier(50, 0.5) == 1.0
    assert s.lr_multiplier(50, 0.75) == pytest.approx(0.5 + 0.5 * 0.05)
    assert s.lr_multiplier(50, 1.0) == pytest.approx(0.05) and s.lr_multiplier(50, 1.3) == pytest.approx(0.05)
    assert s.muon_momentum(500, 0.4) == 0.97 and s.muon_momentum(500, 1.0) == pytest.approx(0.90)
    assert s.muon_weight_decay(7, 0.0) == 0.2 and s.muon_weight_decay(7, 1.0) == pytest.approx(0.0)
    # A step horizon ignores progress: nanochat's formulas in the step index, bit for bit.
    steps = Schedule(num_iterations=100, weight_decay=0.2)
    assert [steps.lr_multiplier(i, 0.123) for i in range(101)] == [steps.lr_multiplier(i) for i in range(101)]
