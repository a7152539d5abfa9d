"""Sets of runs and verdicts between them: what `speedrun stats`, `speedrun compare` and `speedrun run --json` say.

    speedrun stats CAMPAIGN                        # every run the campaign registered, misses included
    speedrun compare baseline-campaign my-campaign # is B better than A? Welch t-test, effect size, verdict
    speedrun run my_idea --track cpu-5min --seeds 5 --json    # one JSON object a research loop can read

A set of runs is named by a campaign (its id under runs/campaigns/, or its file), a run (id or
directory), or a submission name (its newest campaign). On a time-to-target track the verdict is
about the timed seconds (both sets must meet the target first: the record rule, no misses); on a
budget track it is about the metric. The track's own baseline, as calibrated in its file, is the
default thing to compare with.
"""

from dataclasses import dataclass
from pathlib import Path

from protocol import stats
from protocol.record import CAMPAIGNS_DIR, RECORD_FILE, RunRecord, find_campaign, find_run, read_campaign, read_record
from protocol.tracks import Track


@dataclass
class RunSet:
    label: str
    records: list[RunRecord]  # empty for a track's calibrated baseline, which has values only
    values: list[float]  # the metric of every counted run
    times: list[float]  # the timed seconds of every counted run that met the target
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
    return RunSet(f"{track.name} baseline (calibration)", [], values, times, summary)


def _newest_campaign_of(submission: str, runs_dir: Path, track_name: str | None) -> Path | None:
    found = []
    for path in sorted((Path(runs_dir) / CAMPAIGNS_DIR).glob("*.json")):
        c = read_campaign(path)
        if c.submission.name == submission and (track_name is None or c.track.name == track_name):
            found.append((c.created, path))
    if not found:
        return None
    return max(found)[1]


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
    return RunSet(label, records, values, times, summary)


def verdict(a: RunSet, b: RunSet, *, kind: str, higher_is_better: bool) -> dict:
    """Is B better than A? The metric's comparison always; on a time-to-target track the times decide."""
    metric = stats.compare(a.values, b.values, lower_is_better=not higher_is_better)
    out = {"a": a.label, "b": b.label, "metric": metric, "time": None, "verdict": metric["verdict"], "reason": None}
    if kind == "time_to_target":
        out["time"] = stats.compare(a.times, b.times, lower_is_better=True)
        unmet = [s.label for s in (a, b) if s.records and not s.summary["meets_record"]]
        if unmet:
            out["verdict"], out["reason"] = "inconclusive", f"{unmet[0]} does not meet the target (p < 0.01, no misses)"
        else:
            out["verdict"] = out["time"]["verdict"]
    return out


def format_verdict(v: dict, metric_name: str) -> str:
    lines = [f"{v['b']} against {v['a']}:"]
    lines.append(stats.format_comparison(v["metric"], metric_name))
    if v["time"] is not None:
        lines.append(stats.format_comparison(v["time"], "timed seconds", " s"))
    lines.append(f"  verdict: {v['verdict']}" + (f" ({v['reason']})" if v["reason"] else ""))
    return "\n".join(lines)
