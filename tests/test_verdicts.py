"""Verdicts between sets of runs: Welch's test against scipy, and `speedrun run --json` for a research loop."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from scipy import stats as sps

from harness.verdicts import reference_set
from protocol.stats import RunValues, compare, verdict
from protocol.tracks import load_track
from tests.conftest import REPO
from tests.test_cli import _campaign
from tests.test_harness import cache, write_track  # noqa: F401 -- the tokenizer cache fixture

A = [2.401, 2.412, 2.395, 2.407, 2.399]
B = [2.371, 2.377, 2.364, 2.381, 2.372]


def test_compare_is_welchs_test_with_a_ci_and_an_effect_size():
    c = compare(A, B, lower_is_better=True)
    assert c["p_better"] == pytest.approx(sps.ttest_ind(B, A, equal_var=False, alternative="less").pvalue, rel=1e-9)
    assert c["p_two_sided"] == pytest.approx(sps.ttest_ind(B, A, equal_var=False).pvalue, rel=1e-9)
    lo, hi = c["ci95"]
    assert lo < c["diff"] < hi < 0 and c["hedges_g"] > 2 and c["verdict"] == "better"
    assert compare(B, A, lower_is_better=True)["verdict"] == "worse"
    assert compare(A, B, lower_is_better=False)["verdict"] == "worse"  # the same numbers, read the other way
    close = compare(A, [a + 0.001 for a in A[::-1]], lower_is_better=True)
    assert close["verdict"] == "inconclusive" and close["p_better"] > 0.01 and close["p_worse"] > 0.01
    few = compare(A, B[:1], lower_is_better=True)
    assert few["verdict"] == "inconclusive" and "at least 2" in few["reason"]


def test_the_times_decide_a_time_to_target_verdict_once_both_sets_meet_the_target():
    """The rule `speedrun compare` and the board's compare page share (protocol.stats.verdict)."""
    slow = RunValues("slow", values=B, times=[310.0, 312.0, 311.0, 309.0, 311.5], meets_target=True)
    fast = RunValues("fast", values=A, times=[290.0, 291.5, 289.0, 290.5, 292.0], meets_target=True)
    v = verdict(slow, fast, kind="time_to_target", higher_is_better=False)
    assert v["verdict"] == "better" and v["metric"]["verdict"] == "worse"  # faster, though its val bpb is worse
    assert verdict(fast, slow, kind="time_to_target", higher_is_better=False)["verdict"] == "worse"
    missed = RunValues("missed", fast.values, fast.times, meets_target=False)
    v = verdict(slow, missed, kind="time_to_target", higher_is_better=False)  # faster, but not to the target
    assert v["verdict"] == "does not qualify" and v["reason"].startswith("missed does not meet the target")
    assert verdict(missed, missed, kind="time_to_target", higher_is_better=False)["verdict"] == "does not qualify"
    v = verdict(missed, slow, kind="time_to_target", higher_is_better=False)  # the reference misses it: no verdict
    assert v["verdict"] == "inconclusive" and v["reason"].startswith("missed does not meet the target")
    calibrated = RunValues("baseline (calibration)", B, slow.times, meets_target=None)  # values only: not judged
    assert verdict(calibrated, fast, kind="time_to_target", higher_is_better=False)["verdict"] == "better"
    # On a budget track the metric decides, and the times are not compared.
    v = verdict(slow, fast, kind="budget", higher_is_better=False)
    assert v["verdict"] == "worse" and v["time"] is None


def test_the_default_reference_is_the_baseline_run_on_this_machine(tmp_path):
    """`run --json` compares with the newest baseline campaign of the track's version here (its seconds come from
    this machine), not with a calibration taken elsewhere; one seed, the candidate itself or another version
    of the track are not a reference."""
    track = dataclasses.replace(load_track("cpu-books"), version=1)  # the version tests/conftest's records carry
    assert reference_set(track, tmp_path, "x").label == "cpu-books baseline (calibration)"  # nothing here yet
    older = _campaign(tmp_path, "baseline", "20261101-000000", [2.13, 2.14], [226.0, 229.0])
    newer = _campaign(tmp_path, "baseline", "20261201-000000", [2.12, 2.13, 2.13], [224.0, 227.0, 221.0])
    _campaign(tmp_path, "baseline", "20261202-000000", [2.12], [225.0])  # one seed: no Welch test
    _campaign(tmp_path, "my_idea", "20261203-000000", [2.10, 2.11], [200.0, 201.0])
    assert reference_set(track, tmp_path, "my_idea").label == newer
    assert reference_set(track, tmp_path, newer).label == older  # a baseline campaign is not its own reference
    other_version = dataclasses.replace(track, version=2)
    assert reference_set(other_version, tmp_path, "x").label == "cpu-books baseline (calibration)"


BUDGET = """
kind = "budget"

[calibration]
values = [9.9, 9.8, 9.85]
train_time_s = [3.0, 3.1, 3.0]
"""


# Two whole runs through the CLI (~40 s): the default suite covers its parts more cheaply (the budget stop in
# tests/test_train.py, the JSON verdict in tests/test_cli.py, budget ranking in tests/test_leaderboard_budget.py).
@pytest.mark.slow
def test_run_json_prints_one_object_with_the_verdict_on_a_budget_track(tmp_path):
    """A budget track of 3 timed seconds: the steps follow the speed, the JSON carries runs, stats and verdict."""
    track = write_track(tmp_path, steps=10_000)
    text = track.read_text().replace("threshold = 10.0", "threshold = 10.0\nbudget_s = 3.0")
    track.write_text(text.replace('version = 1\n', 'version = 1' + BUDGET.split("[calibration]")[0]) + BUDGET.split(
        'kind = "budget"\n')[1])  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-m", "speedrun", "run", "baseline", "--track", str(track), "--seed-list", "1", "2",
         "--runs-dir", str(tmp_path / "runs"), "--json"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    [line] = out.stdout.strip().splitlines()  # only the JSON on stdout
    verdict = json.loads(line)
    assert verdict["kind"] == "budget" and [r["seed"] for r in verdict["runs"]] == [1, 2]
    for r in verdict["runs"]:
        assert r["status"] == "completed" and r["train_time_s"] >= 3.0 and r["value"] < 9.0 and r["steps"] > 1
    assert verdict["against"].endswith("baseline (calibration)") and verdict["verdict"] == "better"
    assert verdict["comparison"]["metric"]["p_better"] < 0.01 and verdict["summary"]["n"] == 2
