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

The target must also tell training from less training: `--shorter-seeds N` runs the baseline with its
horizon cut by SHORTER_FRACTION (a submission whose only CONFIG is that num_iterations, written into the
runs directory) and records whether those runs meet the new threshold. With a good target they do not
(p ≥ 0.01); the track file keeps both sides' values and p-values, so the check can be read and redone.
"""

import math
from pathlib import Path

from harness.runner import run
from protocol import stats
from protocol.record import read_record
from protocol.tracks import Track, save_calibration

MARGIN_STDS = 5.0
SHORTER_FRACTION = 0.1  # the horizon cut the target must detect


def threshold_from(values: list[float], higher_is_better: bool) -> tuple[float, float, float]:
    """(threshold, mean, std) for a list of baseline metric values (sample std, n ≥ 2)."""
    if len(values) < 2:
        raise ValueError("calibration needs at least 2 completed seeds: pass --seeds 3 or more")
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    # Rounded outward to 3 decimals; round(…, 6) first so float noise (2.6000000000000005) does not add a step.
    if higher_is_better:
        return math.floor(round((mean - MARGIN_STDS * std) * 1000, 6)) / 1000, mean, std
    return math.ceil(round((mean + MARGIN_STDS * std) * 1000, 6)) / 1000, mean, std


def _completed(run_dirs: list[Path]):
    records = [read_record(d) for d in run_dirs]
    return [r for r in records if r.status == "completed" and r.result.value is not None]


def _p_value(values: list[float], track: Track, threshold: float) -> float | None:
    rows = [{"value": v} for v in values]
    return stats.summarize(rows, metric="value", target=threshold, higher_is_better=track.target.higher_is_better)[
        "p_value"
    ]


def shorter_submission(track: Track, runs_dir: Path) -> tuple[Path, int]:
    """A submission folder under runs_dir that is the baseline with its horizon cut by SHORTER_FRACTION."""
    steps = round(track.recipe["num_iterations"] * (1 - SHORTER_FRACTION))
    folder = Path(runs_dir) / f"baseline_{steps}_steps"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "submission.py").write_text(
        f'"""The {track.name} baseline {SHORTER_FRACTION:.0%} shorter: its target must not be met by it."""\n\n'
        f'METADATA = {{"authors": ["speedrun calibration"], "description": "the baseline, {steps} steps"}}\n'
        f'CONFIG = {{"num_iterations": {steps}}}\n'
    )
    return folder, steps


def calibrate(
    track: Track, seeds: list[int], runs_dir: Path, data_dir: Path | None = None, shorter_seeds: list[int] = ()
) -> dict:
    done = _completed(run(track, "baseline", seeds=seeds, runs_dir=runs_dir, data_dir=data_dir))
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
        "p_value": _p_value(values, track, threshold),
    }
    if shorter_seeds and track.kind == "time_to_target":
        folder, steps = shorter_submission(track, runs_dir)
        shorter = _completed(run(track, str(folder), seeds=list(shorter_seeds), runs_dir=runs_dir, data_dir=data_dir))
        short_values = [r.result.value for r in shorter]
        calibration["shorter"] = {
            "num_iterations": steps,
            "runs": [r.run_id for r in shorter],
            "values": short_values,
            "mean": sum(short_values) / len(short_values) if short_values else None,
            "p_value": _p_value(short_values, track, threshold),
        }
    save_calibration(track, threshold, calibration)
    return {"threshold": threshold, **calibration}
