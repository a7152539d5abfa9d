"""Standings, ranking and the record progression: the benchmark's rule for what counts, in one place.

Only verified runs count. For each (track, submission) a Standing holds the verified runs' timed seconds
(recomputed from their step events) and metric (recomputed with the frozen eval), and the one-sided
t-test of protocol.stats.summarize against the track's target. A submission ranks when its verified runs
meet the target with p < RECORD_P_VALUE (0.01); ranked submissions are ordered by mean timed seconds.
A new RecordEntry is written when a ranked submission's mean time beats the track's current record
(the holder's own later seeds restate its entry rather than add one).

Board reads are cached for Settings.cache_ttl_s (a write in this process clears the cache at once; the
worker is another process, so a verification shows on the board within the TTL).
"""

import math
import threading
import time
from collections.abc import Callable

from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from leaderboard.models import (
    RecordEntry,
    RecordPublic,
    Run,
    Standing,
    StandingPublic,
    Submission,
    Submitter,
    TrackRow,
    Verification,
    utcnow,
)
from protocol.stats import RECORD_P_VALUE, summarize


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None


def update_standing(session: Session, *, track: TrackRow, submission_id: int) -> Standing:
    """Recompute one (track, submission) standing from its runs and write a record if it beats the current one."""
    rows = session.exec(
        select(Run, Verification)
        .join(Verification, Verification.run_pk == Run.id)
        .where(Run.track_id == track.id, Run.submission_id == submission_id)
    ).all()
    verified = [(r, v) for r, v in rows if v.status == "verified"]
    metric_of = {"val_bpb": lambda v: v.recomputed_val_bpb, "core": lambda v: v.recomputed_core}[track.metric]
    records = [
        {
            "run_id": r.run_id,
            "status": "completed",
            track.metric: metric_of(v),
            "train_time_s": v.recomputed_train_time_s,
        }
        for r, v in verified
    ]
    standing = session.exec(
        select(Standing).where(Standing.track_id == track.id, Standing.submission_id == submission_id)
    ).first() or Standing(track_id=track.id, submission_id=submission_id)
    fields = {
        "n_verified": len(verified),
        "n_pending": sum(v.status == "pending" for _, v in rows),
        "n_rejected": sum(v.status == "rejected" for _, v in rows),
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
            "qualifies": bool(s["meets_record"]) and s["time_mean_s"] is not None,
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


def _maybe_new_record(session: Session, *, track: TrackRow, standing: Standing) -> None:
    current = session.exec(
        select(RecordEntry).where(RecordEntry.track_id == track.id).order_by(col(RecordEntry.id).desc())
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
    if current is not None and standing.time_mean_s >= current.time_mean_s:
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


def why_unranked(s: Standing) -> str | None:
    if s.qualifies:
        return None
    if s.n_verified == 0:
        return f"no verified runs yet ({s.n_pending} pending, {s.n_rejected} rejected)"
    if s.p_value is None:
        return s.p_value_reason or "no p-value"
    return f"p = {s.p_value:.3g}, not < {RECORD_P_VALUE}: the runs do not beat the target significantly"


def leaderboard(session: Session, *, track: TrackRow) -> list[StandingPublic]:
    """Ranked standings first (by mean timed seconds), then the unranked ones with why."""
    rows = session.exec(
        select(Standing, Submission.name, Submitter.name)
        .join(Submission, Submission.id == Standing.submission_id)
        .join(Submitter, Submitter.id == Submission.submitter_id)
        .where(Standing.track_id == track.id)
    ).all()
    ranked = sorted((r for r in rows if r[0].qualifies), key=lambda r: (r[0].time_mean_s, r[0].submission_id))
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
                    "why_unranked": why_unranked(s),
                },
            )
        )
    return out


def record_history(session: Session, *, track: TrackRow) -> list[RecordPublic]:
    rows = session.exec(
        select(RecordEntry, Submission.name, Submitter.name)
        .join(Submission, Submission.id == RecordEntry.submission_id)
        .join(Submitter, Submitter.id == Submission.submitter_id)
        .where(RecordEntry.track_id == track.id)
        .order_by(col(RecordEntry.id))
    ).all()
    return [RecordPublic.model_validate(e, update={"submission": name, "submitter": who}) for e, name, who in rows]


class ReadCache:
    """A tiny TTL cache for board reads, cleared on any write in this process.

    Single flight: once a value has expired, one caller recomputes it while the others keep getting
    the stale value for that moment, so an expiry under load costs one rebuild, not one per client.
    """

    def __init__(self):
        self._data: dict = {}  # key -> (expires at, value)
        self._refreshing: set = set()
        self._lock = threading.Lock()

    def get(self, key, ttl_s: float, compute: Callable):
        if ttl_s <= 0:
            return compute()
        with self._lock:
            hit = self._data.get(key)
            if hit is not None and (hit[0] > time.monotonic() or key in self._refreshing):
                return hit[1]
            self._refreshing.add(key)
        try:
            value = compute()
            with self._lock:
                self._data[key] = (time.monotonic() + ttl_s, value)
            return value
        finally:
            with self._lock:
                self._refreshing.discard(key)

    async def get_async(self, key, ttl_s: float, compute: Callable):
        """As get(), for an async endpoint: a hit costs no thread hop; a miss computes on the thread pool."""
        hit = self._data.get(key) if ttl_s > 0 else None
        if hit is not None and (hit[0] > time.monotonic() or key in self._refreshing):
            return hit[1]
        return await run_in_threadpool(self.get, key, ttl_s, compute)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


READS = ReadCache()
