"""`speedrun track calibrate`: the target from real baseline runs, and the check that a shorter horizon misses it."""

import tomllib

import pytest

from harness.calibrate import MARGIN_STDS, calibrate, threshold_from
from protocol.tracks import load_track, save_calibration
from tests.test_harness import cache, write_track  # noqa: F401 -- the tokenizer cache fixture


def test_threshold_is_the_mean_plus_the_margin_rounded_outward():
    threshold, mean, std = threshold_from([2.0, 2.1, 2.2], higher_is_better=False)
    assert mean == pytest.approx(2.1) and std == pytest.approx(0.1)
    assert threshold == 2.6 and threshold == pytest.approx(mean + MARGIN_STDS * std)
    assert threshold_from([0.3, 0.2, 0.1], higher_is_better=True)[0] == pytest.approx(-0.3)
    assert threshold_from([2.0, 2.1, 2.2001], higher_is_better=False)[0] == 2.601  # outward: never below the margin
    with pytest.raises(ValueError, match="at least 2"):
        threshold_from([2.0], higher_is_better=False)


def test_saving_a_calibration_keeps_the_track_files_comments(tmp_path):
    track_file = tmp_path / "cpu-books.toml"
    track_file.write_text(load_track("cpu-books").path.read_text().replace("[target]", "# why the target\n[target]"))
    save_calibration(load_track(track_file), 2.5, {"metric": "val_bpb", "values": [2.4, 2.41], "mean": 2.405})
    text = track_file.read_text()
    assert "# why the target\n[target]" in text and "# Version 2" in text  # comments and their places kept
    written = tomllib.loads(text)
    assert written["target"]["threshold"] == 2.5 and written["provisional"] is False
    assert written["calibration"]["values"] == [2.4, 2.41] and load_track(track_file).target.threshold == 2.5


@pytest.mark.slow  # four real runs of the tiny track
def test_calibration_writes_the_target_and_the_shorter_horizons_runs(tmp_path):
    track_file = write_track(tmp_path, steps=10)
    result = calibrate(load_track(track_file), [1, 2], tmp_path / "runs", shorter_seeds=[1, 2])
    written = tomllib.loads(track_file.read_text())
    cal = written["calibration"]
    assert written["target"]["threshold"] == result["threshold"] and written["provisional"] is False
    assert len(cal["values"]) == 2 and cal["p_value"] is not None
    shorter = cal["shorter"]
    assert shorter["num_iterations"] == 9 and len(shorter["values"]) == 2
    # The shorter runs are real runs of a submission that only cuts the horizon: they trained less.
    assert shorter["mean"] > cal["mean"]
    assert all((tmp_path / "runs" / run_id / "record.json").is_file() for run_id in shorter["runs"])
