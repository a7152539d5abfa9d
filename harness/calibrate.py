"""`speedrun track calibrate TRACK`: set a track's target from real baseline runs.

The baseline is run with several seeds; the target is the baseline's mean metric moved by a
margin towards "worse", like modded-nanogpt keeping its record just under 3.28 val loss:

    threshold = mean + MARGIN_STDS · std     (lower is better; minus for higher is better)

With 5 seed-standard-deviations of margin the baseline itself meets the target at p < 0.01
with 3 seeds (t = 5·√3 ≈ 8.7 > t₀.₉₉,₂ ≈ 7.0), so a submission that is as good as the baseline
can claim a record with 3 seeds, and one that trains worse by more than the margin cannot.
The threshold is rounded outward to 3 significant decimals and written into the track file
together with the runs it came from. A budget track has no threshold to reach: its calibration keeps
the baseline's values (what `speedrun run --json` compares with) and the mean as a reference.
"""

import math
from pathlib import Path

from harness.runner import run
from protocol.record import read_record
from protocol.tracks import Track, save_calibration

MARGIN_STDS = 5.0


def threshold_from(values: list[float], higher_is_better: bool) -> tuple[float, float, float]:
    """(threshold, mean, std) for a list of baseline metric values (sample std, n ≥ 2)."""
    if len(values) < 2:
        raise ValueError("calibration needs at least 2 completed seeds: pass --seeds 3 or more")
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    if higher_is_better:
        return math.floor((mean - MARGIN_STDS * std) * 1000) / 1000, mean, std
    return math.ceil((mean + MARGIN_STDS * std) * 1000) / 1000, mean, std


def calibrate(track: Track, seeds: list[int], runs_dir: Path, data_dir: Path | None = None) -> dict:
    run_dirs = run(track, "baseline", seeds=seeds, runs_dir=runs_dir, data_dir=data_dir)
    records = [read_record(d) for d in run_dirs]
    done = [r for r in records if r.status == "completed" and r.result.value is not None]
    values = [r.result.value for r in done]
    threshold, mean, std = threshold_from(values, track.target.higher_is_better)
    if track.kind == "budget":  # nothing to reach: the baseline's mean is the reference a submission is compared with
        threshold = round(mean, 4)
    calibration = {
        "metric": track.target.metric,
        "runs": [r.run_id for r in done],
        "seeds": [r.seed for r in done],
        "values": values,
        "mean": mean,
        "std": std,
        "margin_stds": MARGIN_STDS,
        "train_time_s": [r.timing.train_time_s for r in done],
        "code_hash": done[0].provenance.code["baseline"] if done else None,
    }
    save_calibration(track, threshold, calibration)
    return {"threshold": threshold, **calibration}
