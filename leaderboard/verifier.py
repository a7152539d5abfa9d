"""The verifier: claims pending runs, runs every check, records the verdict and the standings.

    speedrun verify --worker            # leaderboard.verifier.verify_worker(once=False): poll forever
    speedrun verify --worker --once     # verify what is pending now, then exit

Several workers can share one PostgreSQL database: a job is claimed with SELECT … FOR UPDATE SKIP
LOCKED and a guarded UPDATE in the same transaction, so no two workers take the same job (on SQLite,
whose writers are serialised, the guarded UPDATE alone decides). A claim is a lease: a job whose
worker died is claimed again after Settings.claim_lease_s. A job the server could not check (its
data or tokenizer is missing: a check's outcome is "error") stays pending and is retried after
Settings.retry_after_s; any failed check rejects the run with every reason.
"""

import logging
import os
import socket
import time
import traceback
from datetime import timedelta
from pathlib import Path

from sqlalchemy import or_, update
from sqlmodel import Session, select

from leaderboard import checks
from leaderboard.db import prepare_database
from leaderboard.models import Check, Run, TrackRow, Verification, utcnow
from leaderboard.ranking import update_standing
from leaderboard.resources import server_facts
from leaderboard.settings import Settings, database_url, get_settings
from leaderboard.uploads import read_jsonl
from protocol.events import read_events
from protocol.record import parse_record

log = logging.getLogger("leaderboard.verifier")


def claim(session: Session, *, worker_id: str, lease_s: float) -> Verification | None:
    """Take the oldest claimable pending job for `worker_id`, or None when there is none."""
    now = utcnow()
    query = (
        select(Verification)
        .where(
            Verification.status == "pending",
            or_(Verification.claimed_at.is_(None), Verification.claimed_at < now - timedelta(seconds=lease_s)),
            or_(Verification.not_before.is_(None), Verification.not_before <= now),
        )
        .order_by(Verification.id)
        .limit(1)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    job = session.exec(query).first()
    if job is None:
        session.rollback()
        return None
    taken = session.exec(
        update(Verification)
        .where(
            Verification.id == job.id,
            Verification.status == "pending",
            Verification.claimed_at == job.claimed_at
            if job.claimed_at is not None
            else Verification.claimed_at.is_(None),
        )
        .values(claimed_by=worker_id, claimed_at=now, attempts=Verification.attempts + 1)
    ).rowcount
    session.commit()
    if taken != 1:
        return None  # another worker won it between the select and the update (SQLite only)
    session.refresh(job)
    return job


def run_checks(run: Run, track: TrackRow, bundle_dir: Path, facts: checks.ServerFacts) -> tuple[list, dict]:
    """Every check of one run, in order; (results, recomputed values)."""
    record = parse_record(run.record, where=f"run {run.run_id}'s record")
    events, telemetry = read_events(bundle_dir / "events.jsonl"), read_jsonl(bundle_dir / "telemetry.jsonl")
    results = [
        checks.check_record(record, track),
        checks.check_code(record, facts),
        checks.check_data(record, facts),
        checks.check_tokenizer(record, facts),
        checks.check_hardware(record, telemetry, track),
    ]
    timing, train_time_s = checks.check_train_time(record, events, facts)
    results.append(timing)
    recomputed = {"train_time_s": train_time_s}
    weights, model_config = checks.check_weights(bundle_dir)
    results.append(weights)
    if model_config is None:
        results.append(checks.CheckResult("metric", "skip", "not recomputed: the weights could not be read safely"))
        return results, recomputed
    try:
        metric_results, values = checks.check_metric(record, bundle_dir, track, facts)
        results += metric_results
        recomputed |= values
    except ValueError as e:  # the bundle's fault: corrupt tensors, a vocab that does not fit the tokenizer
        results.append(checks.CheckResult("metric", "fail", f"the model could not be evaluated: {e}"))
    except Exception as e:  # noqa: BLE001 -- the server's fault (OOM, missing files): retry later
        results.append(
            checks.CheckResult(
                "metric", "error", f"{type(e).__name__}: {e}", {"traceback": traceback.format_exc(limit=5)}
            )
        )
    return results, recomputed


def verify(session: Session, *, job: Verification, settings: Settings) -> Verification:
    """Run the checks of a claimed job and write the verdict, its checks and the standing."""
    t0 = time.perf_counter()
    run = session.get(Run, job.run_pk)
    track = session.get(TrackRow, run.track_id)
    bundle_dir = Path(settings.storage_dir) / "bundles" / run.bundle_sha256
    results, recomputed = run_checks(run, track, bundle_dir, server_facts(track, settings))
    for old in session.exec(select(Check).where(Check.verification_id == job.id)).all():
        session.delete(old)
    for r in results:
        session.add(Check(verification_id=job.id, name=r.name, outcome=r.outcome, detail=r.detail, evidence=r.evidence))
    failed = [f"{r.name}: {r.detail}" for r in results if r.outcome == "fail"]
    errors = [f"{r.name}: {r.detail}" for r in results if r.outcome == "error"]
    job.recomputed_train_time_s = recomputed.get("train_time_s")
    job.recomputed_val_bpb = recomputed.get("val_bpb")
    job.recomputed_core = recomputed.get("core")
    job.reasons = failed
    job.duration_s = time.perf_counter() - t0
    if failed:
        job.status, job.error, job.finished_at = "rejected", None, utcnow()
    elif errors:  # the server could not check: leave it pending, retry later
        job.error = "; ".join(errors)
        job.claimed_by = job.claimed_at = None
        job.not_before = utcnow() + timedelta(seconds=settings.retry_after_s)
    else:
        job.status, job.error, job.finished_at = "verified", None, utcnow()
    session.add(job)
    session.commit()
    update_standing(session, track=track, submission_id=run.submission_id)
    session.refresh(job)
    log.info("run %s: %s%s", run.run_id, job.status, f" ({'; '.join(failed or errors)})" if failed or errors else "")
    return job


def verify_worker(
    once: bool = False, *, settings: Settings | None = None, poll_s: float = 5.0, worker_id: str | None = None
) -> int:
    """`speedrun verify --worker [--once]`: verify pending runs (forever, or until none is left); returns how many."""
    settings = settings or get_settings()
    engine = prepare_database(settings)
    worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
    done = 0
    while True:
        with Session(engine) as session:
            job = claim(session, worker_id=worker_id, lease_s=settings.claim_lease_s)
            if job is not None:
                verify(session, job=job, settings=settings)
                done += 1
                continue
        if once:
            return done
        time.sleep(poll_s)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(f"verified {verify_worker(once=True)} runs against {database_url(get_settings())}")
