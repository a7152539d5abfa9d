"""Standings, ranking and the record progression: the benchmark's rule for what counts, in one place.

Only verified runs count, and of those only runs of the track's current version (older ones are
superseded: shown, never ranked), runs no admin review flag holds back, and one run per seed (the
first uploaded; the same weights are one run already, by the upload's unique weights hash). For each
(track, submission) a Standing holds the counted runs' timed seconds (recomputed from their step
events) and metric (recomputed with the frozen eval), and the one-sided t-test of
protocol.stats.summarize against the track's target. Every registered run counts (routers/
registrations.py): one that never arrived by its deadline, or arrived failed, killed, diverged or
rejected, is a miss, and a submission with a miss does not rank. A submission ranks when its counted
runs meet the target with p < RECORD_P_VALUE (0.01); ranked submissions are ordered by mean timed seconds.
On a track that opts into reproduction (protocol.tracks.Reproduce, leaderboard/reproduction.py) a
submission with any run whose re-run disputed its claim does not rank, and on a track the server re-runs
itself (`by = "server"`) it ranks only once min(runs_per_submission, counted runs) of its counted runs
are reproduced: a record there is a result the server has seen happen.
A new RecordEntry is written when a ranked submission's mean time beats the track's current record
(the holder's own later seeds restate its entry rather than add one).

The divisions a track ranks (protocol.tracks.Track.divisions; a submission's is fixed by its code, Submission.
division) are separate boards: each is ranked, and holds records, among its own submissions only (an open
model is not compared with the closed record, nor the reverse).

A fixed-budget track (kind "budget": lowest val bpb in a training budget, every run stopped at it, which
check_timing.py verifies) ranks by mean metric instead. Its target is the calibrated baseline's mean, so a
submission ranks when its runs beat the baseline with p < 0.01 (the same one-sided t-test), and it takes
the record only when its runs also beat the current holder's by a one-sided Welch t-test with
p < RECORD_P_VALUE (protocol.stats.compare): a lower mean alone is not a new best.

Board reads are cached for Settings.cache_ttl_s (leaderboard/pagecache.py; a write in this process clears
the cache at once; the worker is another process, so a verification shows on the board within the TTL).
"""

import math

from sqlalchemy import update
from sqlmodel import Session, col, select

from leaderboard.models import (
    RecordEntry,
    RecordPublic,
    Registration,
    Reproduction,
    Run,
    Standing,
    StandingPublic,
    Submission,
    Submitter,
    TrackRow,
    Verification,
    utcnow,
)
from leaderboard.pagecache import READS
from protocol.stats import RECORD_P_VALUE, compare, summarize
from protocol.tracks import track_from_dict


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None


def counted(rows: list[tuple[Run, Verification]], track: TrackRow) -> list[tuple[Run, Verification]]:
    """The verified runs a standing counts: current track version, not held for review, one per seed."""
    out, seeds = [], set()
    for r, v in sorted(rows, key=lambda rv: rv[0].id):
        if v.status != "verified" or (r.track_version is not None and r.track_version != track.version):
            continue
        if v.flag and not v.flag_cleared_by:
            continue
        if r.seed in seeds:  # the same seed twice is one run: the first uploaded counts
            continue
        seeds.add(r.seed)
        out.append((r, v))
    return out


def is_budget(track: TrackRow) -> bool:
    return bool(track.spec) and track_from_dict(track.spec).kind == "budget"


def metric_of(track: TrackRow):
    return {"val_bpb": lambda v: v.recomputed_val_bpb, "core": lambda v: v.recomputed_core}[track.metric]


def stat_rows(verified: list[tuple[Run, Verification]], track: TrackRow) -> list[dict]:
    """Counted runs as protocol.stats.summarize reads them: the recomputed metric and timed seconds."""
    value = metric_of(track)
    return [
        {"run_id": r.run_id, "status": "completed", track.metric: value(v), "train_time_s": v.recomputed_train_time_s}
        for r, v in verified
    ]


def _runs(session: Session, track: TrackRow, submission_id: int) -> list[tuple[Run, Verification]]:
    return session.exec(
        select(Run, Verification)
        .join(Verification, Verification.run_pk == Run.id)
        .where(Run.track_id == track.id, Run.submission_id == submission_id)
    ).all()


def misses(session: Session, *, track: TrackRow, submission: Submission, runs: dict[str, str]) -> tuple[int, int]:
    """(registered, missed) for a submission on a track: `runs` maps its run ids to their verification status."""
    regs = session.exec(
        select(Registration).where(
            Registration.submitter_id == submission.submitter_id,
            Registration.track_id == track.id,
            Registration.track_version == track.version,
            Registration.submission_name == submission.name,
        )
    ).all()
    now, missed = utcnow(), 0
    for reg in regs:
        status = runs.get(reg.run_id)
        deadline = reg.deadline if reg.deadline.tzinfo else reg.deadline.replace(tzinfo=now.tzinfo)
        if status in ("missed", "rejected") or (status is None and deadline < now):
            missed += 1
    return len(regs), missed


def update_standing(session: Session, *, track: TrackRow, submission_id: int) -> Standing:
    """Recompute one (track, submission) standing from its runs and write a record if it beats the current one."""
    rows = _runs(session, track, submission_id)
    verified = counted(rows, track)
    reproduced, disputed, needed = _reproductions(session, track=track, rows=rows, verified=verified)
    submission = session.get(Submission, submission_id)
    n_registered, n_missed = misses(
        session, track=track, submission=submission, runs={r.run_id: v.status for r, v in rows}
    )
    records = stat_rows(verified, track)
    standing = session.exec(
        select(Standing).where(Standing.track_id == track.id, Standing.submission_id == submission_id)
    ).first() or Standing(track_id=track.id, submission_id=submission_id)
    fields = {
        "n_verified": len(verified),
        "n_pending": sum(v.status == "pending" for _, v in rows),
        "n_rejected": sum(v.status in ("rejected", "error") for _, v in rows),
        "n_registered": n_registered,
        "n_missed": n_missed,
        "n_reproduced": reproduced,
        "n_disputed": disputed,
        "n_reproduce_needed": needed,
        "val_bpb_mean": _mean(v.recomputed_val_bpb for _, v in verified),
        "core_mean": _mean(v.recomputed_core for _, v in verified),
        "energy_kwh_mean": _mean(r.energy_kwh for r, _ in verified),
        "cost_mean": _mean(r.cost_usd for r, _ in verified),
        "mfu_mean": _mean(r.mfu for r, _ in verified),
        "last_run_at": max((r.uploaded_at for r, _ in verified), default=None),
        "updated_at": utcnow(),
    }
    if records:
        s = summarize(records, metric=track.metric, target=track.threshold, higher_is_better=track.higher_is_better)
        fields |= {
            "time_mean_s": s["time_mean_s"],
            "time_std_s": s["time_std_s"],
            "metric_mean": s["metric_mean"],
            "metric_std": s["metric_std"],
            "p_value": s["p_value"],
            "p_value_reason": s["p_value_reason"],
            "qualifies": bool(s["meets_record"])
            and s["time_mean_s"] is not None
            and n_missed == 0
            and disputed == 0
            and reproduced >= needed,
        }
    else:
        fields |= dict.fromkeys(("time_mean_s", "time_std_s", "metric_mean", "metric_std", "p_value"), None)
        fields |= {"p_value_reason": "no verified runs", "qualifies": False}
    standing.sqlmodel_update(fields)
    session.add(standing)
    session.flush()
    if standing.qualifies:
        _maybe_new_record(session, track=track, standing=standing)
    session.commit()
    READS.clear()
    return standing


def _reproductions(session: Session, *, track: TrackRow, rows, verified) -> tuple[int, int, int]:
    """(counted runs reproduced, runs disputed, runs that must be reproduced to rank) on this track."""
    rule = track_from_dict(track.spec).reproduce if track.spec else None
    if rule is None:
        return 0, 0, 0
    status = dict(
        session.exec(
            select(Reproduction.run_pk, Reproduction.status).where(
                col(Reproduction.run_pk).in_([r.id for r, _ in rows])
            )
        ).all()
    )
    reproduced = sum(status.get(r.id) == "reproduced" for r, _ in verified)
    disputed = sum(status.get(r.id) == "disputed" for r, _ in rows)
    needed = min(rule.runs_per_submission, len(verified)) if rule.by == "server" else 0
    return reproduced, disputed, needed


def _maybe_new_record(session: Session, *, track: TrackRow, standing: Standing) -> None:
    division = session.get(Submission, standing.submission_id).division
    current = session.exec(
        select(RecordEntry)
        .join(Submission, Submission.id == RecordEntry.submission_id)
        .where(RecordEntry.track_id == track.id, Submission.division == division)
        .order_by(col(RecordEntry.id).desc())
    ).first()
    if current is not None and current.submission_id == standing.submission_id:
        # The holder's own new seeds moved its mean: the same record, restated (not a new one).
        current.sqlmodel_update(
            {
                "time_mean_s": standing.time_mean_s,
                "time_std_s": standing.time_std_s,
                "n": standing.n_verified,
                "metric_mean": standing.metric_mean,
                "p_value": standing.p_value,
            }
        )
        session.add(current)
        return
    if current is not None and not _beats(session, track, standing, current):
        return
    session.add(
        RecordEntry(
            track_id=track.id,
            submission_id=standing.submission_id,
            time_mean_s=standing.time_mean_s,
            time_std_s=standing.time_std_s,
            n=standing.n_verified,
            metric_mean=standing.metric_mean,
            p_value=standing.p_value,
            previous_time_s=None if current is None else current.time_mean_s,
        )
    )


def _beats(session: Session, track: TrackRow, standing: Standing, current: RecordEntry) -> bool:
    """Does the standing beat the record holder: a lower mean time, or on a budget track a better metric by
    a one-sided Welch t-test at p < RECORD_P_VALUE over the two submissions' counted runs."""
    if not is_budget(track):
        return standing.time_mean_s < current.time_mean_s
    value = metric_of(track)
    holder = [value(v) for _, v in counted(_runs(session, track, current.submission_id), track)]
    challenger = [value(v) for _, v in counted(_runs(session, track, standing.submission_id), track)]
    return compare(holder, challenger, lower_is_better=not track.higher_is_better)["verdict"] == "better"


def refresh_track(session: Session, *, track: TrackRow) -> None:
    """Recompute every standing of a track (its version changed: the old version's runs no longer count) and
    forget its runs' stored answers (they now say superseded: crud.detail_json rebuilds them on read)."""
    session.exec(update(Run).where(Run.track_id == track.id).values(detail=None))
    session.commit()
    for submission_id in set(session.exec(select(Run.submission_id).where(Run.track_id == track.id)).all()):
        update_standing(session, track=track, submission_id=submission_id)


def expire_registrations(session: Session, *, since, until) -> int:
    """Recompute the standings of submissions whose registered runs' deadlines passed in (since, until]: a run
    that never arrived becomes a miss. Returns how many standings were recomputed."""
    regs = session.exec(select(Registration).where(Registration.deadline > since, Registration.deadline <= until)).all()
    done = set()
    for reg in regs:
        track = session.get(TrackRow, reg.track_id)
        for sub in session.exec(
            select(Submission).where(
                Submission.submitter_id == reg.submitter_id, Submission.name == reg.submission_name
            )
        ).all():
            if (track.id, sub.id) not in done:
                done.add((track.id, sub.id))
                update_standing(session, track=track, submission_id=sub.id)
    return len(done)


def why_unranked(s: Standing) -> str | None:
    if s.qualifies:
        return None
    if s.n_disputed:
        return f"{s.n_disputed} run(s) disputed by their re-run in the server's sandbox: held for review"
    if s.n_missed:
        return f"{s.n_missed} of {s.n_registered} registered runs are misses: every seed counts"
    if s.n_verified == 0:
        return f"no verified runs yet ({s.n_pending} pending, {s.n_rejected} rejected)"
    if s.p_value is None:
        return s.p_value_reason or "no p-value"
    if s.p_value < RECORD_P_VALUE and s.n_reproduced < s.n_reproduce_needed:
        return f"waiting for reproduction: {s.n_reproduced} of {s.n_reproduce_needed} chosen runs re-run and matched"
    return f"p = {s.p_value:.3g}, not < {RECORD_P_VALUE}: the runs do not beat the target significantly"


def divisions(track: TrackRow) -> tuple[str, ...]:
    """The divisions the track ranks, closed first."""
    return track_from_dict(track.spec).divisions if track.spec else ("closed",)


def leaderboard(session: Session, *, track: TrackRow, division: str = "closed") -> list[StandingPublic]:
    """One division's board: ranked standings first (by mean timed seconds; on a budget track by mean metric),
    then the unranked ones with why."""
    rows = session.exec(
        select(Standing, Submission.name, Submitter.name)
        .join(Submission, Submission.id == Standing.submission_id)
        .join(Submitter, Submitter.id == Submission.submitter_id)
        .where(Standing.track_id == track.id, Submission.division == division)
    ).all()
    sign = -1 if track.higher_is_better else 1
    order = (
        (lambda r: (sign * r[0].metric_mean, r[0].submission_id))
        if is_budget(track)
        else (lambda r: (r[0].time_mean_s, r[0].submission_id))
    )
    ranked = sorted((r for r in rows if r[0].qualifies), key=order)
    unranked = sorted((r for r in rows if not r[0].qualifies), key=lambda r: (-r[0].n_verified, r[0].submission_id))
    out = []
    for i, (s, name, who) in enumerate(ranked + unranked):
        out.append(
            StandingPublic.model_validate(
                s,
                update={
                    "rank": i + 1 if s.qualifies else None,
                    "submission": name,
                    "submitter": who,
                    "division": division,
                    "why_unranked": why_unranked(s),
                },
            )
        )
    return out


def record_history(session: Session, *, track: TrackRow, division: str = "closed") -> list[RecordPublic]:
    """One division's records on the track, oldest first."""
    rows = session.exec(
        select(RecordEntry, Submission.name, Submitter.name)
        .join(Submission, Submission.id == RecordEntry.submission_id)
        .join(Submitter, Submitter.id == Submission.submitter_id)
        .where(RecordEntry.track_id == track.id, Submission.division == division)
        .order_by(col(RecordEntry.id))
    ).all()
    return [
        RecordPublic.model_validate(e, update={"submission": name, "submitter": who, "division": division})
        for e, name, who in rows
    ]
