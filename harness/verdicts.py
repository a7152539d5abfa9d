"""Sets of runs to judge: what `speedrun stats`, `speedrun compare` and `speedrun run --json` read.

    speedrun stats CAMPAIGN                        # every run the campaign registered, misses included
    speedrun compare baseline-campaign my-campaign # is B better than A? Welch t-test, effect size, verdict
    speedrun run my_idea --track cpu-5min --seeds 5 --json    # one JSON object a research loop can read

A set of runs is named by a campaign (its id under runs/campaigns/, or its file), a run (id or
directory), or a submission name (its newest campaign). The verdict between two sets is
protocol.stats.verdict, the rule the board's compare page uses too: on a time-to-target track it is
about the timed seconds (both sets must meet the target first: the record rule, no misses); on a
budget track it is about the metric. What `run --json` compares with by default is the track's baseline
as run on this machine: the newest baseline campaign of the track's version under the runs directory (2 seeds
or more), else the calibration in the track file. Seconds, and on a budget track the metric too, depend on
the machine and its load: a calibration taken elsewhere, or beside other work, is a weak reference for them.
"""

from dataclasses import dataclass
from pathlib import Path

from protocol import stats
from protocol.record import CAMPAIGNS_DIR, RECORD_FILE, RunRecord, find_campaign, find_run, read_campaign, read_record
from protocol.tracks import Track


@dataclass
class RunSet(stats.RunValues):
    """A set of runs and its summary; what the verdict reads of it is the stats.RunValues part."""

    records: list[RunRecord]  # empty for a track's calibrated baseline, which has values only
    summary: dict


def run_set(name: str, runs_dir: Path, track_name: str | None = None) -> RunSet:
    """The runs `name` stands for (see the module docstring), summarized."""
    campaign = find_campaign(name, runs_dir)
    if campaign is None and not any((d / RECORD_FILE).is_file() for d in (Path(name), Path(runs_dir) / name)):
        campaign = _newest_campaign_of(name, runs_dir, track_name)
    if campaign is not None:
        c = read_campaign(campaign)
        records = [read_record(find_run(run_id, runs_dir)) for run_id in c.run_ids]
        return _summarized(c.campaign_id, records)
    try:
        return _summarized(name, [read_record(find_run(name, runs_dir))])
    except FileNotFoundError:
        on = f" on track {track_name}" if track_name else ""
        raise ValueError(
            f"no campaign, run or submission{on} named {name!r} under {runs_dir}: pass a campaign id (`speedrun run` "
            "prints it), a run id, or the name of a submission you ran"
        ) from None


def baseline_set(track: Track) -> RunSet:
    """The track's baseline as its calibration recorded it (values and times of its seeds)."""
    cal = track.calibration
    if not cal.get("values"):
        raise ValueError(f"track {track.name} has no calibrated baseline to compare with: pass --against RUNS")
    values, times = list(cal["values"]), list(cal.get("train_time_s") or [])
    summary = stats.summarize(
        [{"value": v} for v in values], metric="value", target=track.target.threshold,
        higher_is_better=track.target.higher_is_better,
    )  # fmt: skip
    return RunSet(f"{track.name} baseline (calibration)", values, times, None, records=[], summary=summary)


def reference_set(track: Track, runs_dir: Path, candidate: str) -> RunSet | None:
    """What `speedrun run --json` compares the campaign `candidate` with by default (see the module docstring)."""
    newest = _newest_campaign(runs_dir, lambda c: (
        c.submission.name == "baseline" and c.track.name == track.name and c.track.version == track.version
        and c.campaign_id != candidate and len(c.run_ids) >= 2))  # fmt: skip
    if newest is not None:
        return run_set(str(newest), runs_dir)
    return baseline_set(track) if track.calibration.get("values") else None


def _newest_campaign_of(submission: str, runs_dir: Path, track_name: str | None) -> Path | None:
    return _newest_campaign(
        runs_dir, lambda c: c.submission.name == submission and (track_name is None or c.track.name == track_name)
    )


def _newest_campaign(runs_dir: Path, keep) -> Path | None:
    """The newest campaign file under runs_dir whose Campaign `keep` accepts, or None."""
    found = [(c.created, path) for path in sorted((Path(runs_dir) / CAMPAIGNS_DIR).glob("*.json"))
             if keep(c := read_campaign(path))]  # fmt: skip
    return max(found)[1] if found else None


def _summarized(label: str, records: list[RunRecord]) -> RunSet:
    if not records:
        raise ValueError(f"{label} holds no runs")
    track = records[0].track
    if any(r.track.name != track.name or r.track.version != track.version for r in records):
        raise ValueError(f"{label} mixes tracks: a set of runs is of one track and version")
    table = stats.runs_table(records)
    summary = stats.summarize(
        table, metric=track.metric, target=track.threshold, higher_is_better=track.higher_is_better
    )
    counted = {e["run_id"] for e in summary["excluded"]}
    kept = [r for r in records if r.run_id not in counted]
    values = [r.result.value for r in kept]
    times = [r.timing.train_time_s for r in kept if r.timing and r.result.target_met]
    return RunSet(label, values, times, summary["meets_record"], records=records, summary=summary)
