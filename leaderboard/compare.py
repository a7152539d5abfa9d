"""What the compare page shows: sets of runs of one track side by side, judged by protocol.stats.verdict.

    /compare?runs=RUN_A,RUN_B,...                  the runs named: one curve each; a bar per submission among them
    /compare?track=NAME&submissions=ID1,ID2,...    what the board counts of each submission: one mean curve each

A set is one submission's runs: in the first form those of the named runs it holds, in the second its counted runs
on the track. The bars and the verdicts use only counted runs, by the board's rule (ranking.counted: verified, the
track's current version, not held for review, one per seed) and with the verifier's recomputed values; the curves
are the runs' stored summaries (the claimed step events, made at upload: never events.jsonl).

A submission's curve is the mean of its counted runs' curves: one line per submission keeps eight of them legible,
seeds of one recipe nearly coincide, and their spread is what the bar's error bar shows. One submission alone is
drawn run by run instead, counted or not (what a board row links to: the curves of its runs, pending ones too, which
its author wants to see before the verifier is done). A bar is mean ± std of the counted
runs' timed seconds (on a budget track, of the metric); every set after the first gets the verdict against the
first, the rule `speedrun compare` uses. Bounded: at most MAX_COMPARED runs or submissions, CURVE_RUNS curves each.
Bad input is a ValueError with one line a person can act on (the page turns it into a 422).
"""

from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import defer
from sqlmodel import Session, col, select

from leaderboard import crud, ranking
from leaderboard.charts import Bar, Series
from leaderboard.models import Run, Submission, Submitter, TrackRow, Verification
from protocol.stats import RunValues, format_verdict, summarize, verdict
from protocol.tracks import beats

MAX_COMPARED = 8  # runs or submissions on one page
CURVE_RUNS = 8  # a submission's curves come from its first counted runs, at most this many
USAGE = "/compare?runs=RUN_ID,RUN_ID or /compare?track=NAME&submissions=ID,ID"


@dataclass
class RunGroup:
    """One submission's runs on the page, and what its bar and verdict read of them."""

    label: str
    submission_id: int
    runs: list[tuple[Run, Verification]]  # the runs named, or all of the submission's on the track
    counted: list[tuple[Run, Verification]]
    summary: dict | None  # protocol.stats.summarize over the counted runs (None: none counted)
    values: RunValues

    @property
    def counted_ids(self) -> set[str]:
        return {r.run_id for r, _ in self.counted}


@dataclass
class Comparison:
    track: TrackRow
    groups: list[RunGroup]
    loss: list[Series]  # smoothed training loss per step
    val: list[Series]  # val bpb per step
    bars: list[Bar]
    verdicts: list[dict]  # protocol.stats.verdict of each group after the first against the first, and its "text"
    per_run: bool  # a curve per run (the runs named, or one submission's), else a mean curve per submission


def parse_ids(values: list[str]) -> list[str]:
    """Query values (`runs=a,b&runs=c`, a form's repeated checkboxes) as one list in order, without repeats; it stops
    one past MAX_COMPARED (that many are too many already), so a long query costs one pass."""
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            if part.strip() and part.strip() not in out:
                out.append(part.strip())
                if len(out) > MAX_COMPARED:
                    return out
    return out


def mean_curve(curves: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """The pointwise mean of curves over the steps they all cover, on the first curve's steps (each curve is
    interpolated between its stored points: summary.thin may have kept different steps of runs of other lengths)."""
    curves = [c for c in curves if c]
    if not curves:
        return []
    start, end = max(c[0][0] for c in curves), min(c[-1][0] for c in curves)
    grid = [x for x, _ in curves[0] if start <= x <= end]
    ys = np.mean([np.interp(grid, [x for x, _ in c], [y for _, y in c]) for c in curves], axis=0)
    return list(zip(grid, ys.tolist(), strict=True))


def _curves(run: Run) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    summary = run.summary or {}
    return [(s, smooth) for s, _, smooth in summary.get("loss") or []], [(s, b) for s, b in summary.get("val") or []]


def _rows():
    """Runs with their verification, without the columns a compare page never reads (the summary loads when drawn)."""
    return (
        select(Run, Verification)
        .join(Verification, Verification.run_pk == Run.id)
        .options(defer(Run.record), defer(Run.files), defer(Run.detail), defer(Run.summary))
        .order_by(col(Run.id))
    )


def _group(session: Session, track: TrackRow, rows: list, missed: int = 0) -> RunGroup:
    submission = session.get(Submission, rows[0][0].submission_id)
    who = session.get(Submitter, submission.submitter_id)
    label = f"{submission.name} #{submission.id} ({who.name})"  # a name may recur: another author, another code
    counted = ranking.counted(rows, track)
    summary = None
    if counted:
        summary = summarize(
            ranking.stat_rows(counted, track),
            metric=track.metric,
            target=track.threshold,
            higher_is_better=track.higher_is_better,
        )
    value = ranking.metric_of(track)
    values = [value(v) for _, v in counted]
    times = [
        v.recomputed_train_time_s
        for _, v in counted
        if v.recomputed_train_time_s is not None and beats(value(v), track.threshold, track.higher_is_better)
    ]
    meets = bool(summary and summary["meets_record"]) and not missed  # every registered seed counts, as on the board
    return RunGroup(label, submission.id, rows, counted, summary, RunValues(label, values, times, meets))


def _of_runs(session: Session, run_ids: list[str]) -> tuple[TrackRow, list[RunGroup]]:
    found = {r.run_id: (r, v) for r, v in session.exec(_rows().where(col(Run.run_id).in_(run_ids))).all()}
    missing = [i for i in run_ids if i not in found]
    if missing:
        raise ValueError(f"no run {missing[0][:200]!r}")
    rows = [found[i] for i in run_ids]
    tracks = {r.track_id for r, _ in rows}
    if len(tracks) > 1:
        names = sorted(session.get(TrackRow, t).name for t in tracks)
        raise ValueError(f"the runs are of tracks {', '.join(names)}: compare runs of one track")
    by_submission: dict[int, list] = {}
    for r, v in rows:
        by_submission.setdefault(r.submission_id, []).append((r, v))
    track = session.get(TrackRow, tracks.pop())
    return track, [_group(session, track, group) for group in by_submission.values()]


def _of_submissions(session: Session, track_name: str | None, ids: list[str]) -> tuple[TrackRow, list[RunGroup]]:
    if not track_name:
        raise ValueError(f"name the track of the submissions: {USAGE}")
    track = crud.get_track(session, name=track_name) if len(track_name) <= 100 else None
    if track is None:
        raise ValueError(f"no track {track_name[:100]!r}")
    groups = []
    for raw in ids:
        submission_id = int(raw) if raw.isdigit() and len(raw) < 10 else None
        submission = session.get(Submission, submission_id) if submission_id is not None else None
        if submission is None:
            raise ValueError(f"no submission {raw[:50]!r}: submissions are named by their number, as in their link")
        rows = session.exec(_rows().where(Run.track_id == track.id, Run.submission_id == submission.id)).all()
        if not rows:
            raise ValueError(f"submission {submission.id} ({submission.name}) has no runs on {track.name}")
        _, missed = ranking.misses(
            session, track=track, submission=submission, runs={r.run_id: v.status for r, v in rows}
        )
        groups.append(_group(session, track, rows, missed))
    return track, groups


def comparison(
    session: Session, *, run_ids: list[str], submission_ids: list[str], track_name: str | None
) -> Comparison:
    if bool(run_ids) == bool(submission_ids):
        raise ValueError(f"name either runs or submissions to compare: {USAGE}")
    named = run_ids or submission_ids
    if len(named) > MAX_COMPARED:
        raise ValueError(f"too many {'runs' if run_ids else 'submissions'} named: compare at most {MAX_COMPARED}")
    track, groups = _of_runs(session, run_ids) if run_ids else _of_submissions(session, track_name, submission_ids)
    budget = ranking.is_budget(track)
    loss, val, per_run = [], [], bool(run_ids) or len(groups) == 1
    if per_run:  # the runs named, or one submission's runs on the track, counted or not
        for run, _ in [rv for g in groups for rv in g.runs][:CURVE_RUNS]:
            run_loss, run_val = _curves(run)
            loss.append(Series(run.run_id, run_loss))
            val.append(Series(run.run_id, run_val))
    else:
        for g in groups:
            curves = [_curves(r) for r, _ in g.counted[:CURVE_RUNS]]
            loss.append(Series(g.label, mean_curve([c[0] for c in curves])))
            val.append(Series(g.label, mean_curve([c[1] for c in curves])))
    bars = []
    for g in groups:
        if g.summary is not None:
            mean, std = ("metric_mean", "metric_std") if budget else ("time_mean_s", "time_std_s")
            bars.append(Bar(g.label, g.summary[mean], g.summary[std]))
    kind = "budget" if budget else "time_to_target"
    verdicts = []
    for g in groups[1:]:
        v = verdict(groups[0].values, g.values, kind=kind, higher_is_better=track.higher_is_better)
        verdicts.append(v | {"text": format_verdict(v, track.metric)})
    return Comparison(track, groups, loss, val, bars, verdicts, per_run=per_run)
