"""The job queue the workers share: claims and leases over a job table (Verification, Reproduction).

    job = claim(session, Verification, worker_id="host:123", lease_s=600)      # None when nothing is claimable
    renew(engine, Verification, job_id=job.id, worker_id="host:123")          # False once the job is not ours

A job row has status, attempts, claimed_by, claimed_at (the lease) and not_before (a retry's wait).
Several workers (and runner machines) can share one PostgreSQL database: a job is claimed with SELECT …
FOR UPDATE SKIP LOCKED and a guarded UPDATE in the same transaction, so no two take the same job (on
SQLite, whose writers are serialised, the guarded UPDATE alone decides). A claim is a lease, renewed
while its work runs: a job whose worker died is claimed again after `lease_s`, never while it lives.
"""

from datetime import timedelta

from sqlalchemy import or_, update
from sqlmodel import Session, select

from leaderboard.models import utcnow


def claim(session: Session, model, *, worker_id: str, lease_s: float, where=()):
    """Take the oldest claimable pending job of `model` (filtered by `where`) for `worker_id`, or None."""
    now = utcnow()
    query = (
        select(model)
        .where(
            model.status == "pending",
            or_(model.claimed_at.is_(None), model.claimed_at < now - timedelta(seconds=lease_s)),
            or_(model.not_before.is_(None), model.not_before <= now),
            *where,
        )
        .order_by(model.id)
        .limit(1)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=model)
    job = session.exec(query).first()
    if job is None:
        session.rollback()
        return None
    taken = session.exec(
        update(model)
        .where(
            model.id == job.id,
            model.status == "pending",
            model.claimed_at == job.claimed_at if job.claimed_at is not None else model.claimed_at.is_(None),
        )
        .values(claimed_by=worker_id, claimed_at=now, attempts=model.attempts + 1)
    ).rowcount
    session.commit()
    if taken != 1:
        return None  # another worker won it between the select and the update (SQLite only)
    session.refresh(job)
    return job


def renew(engine, model, *, job_id: int, worker_id: str, **values) -> bool:
    """Extend a held lease (claimed_at = now, and any `values`); False when the job is no longer this worker's."""
    with Session(engine) as session:
        renewed = session.exec(
            update(model)
            .where(model.id == job_id, model.claimed_by == worker_id, model.status == "pending")
            .values(claimed_at=utcnow(), **values)
        ).rowcount
        session.commit()
    return renewed == 1


def holds(job, *, worker_id: str, lease_s: float) -> bool:
    """Whether `worker_id` holds `job`'s lease now (pending, claimed by it, not expired)."""
    if job.status != "pending" or job.claimed_by != worker_id or job.claimed_at is None:
        return False
    claimed = job.claimed_at if job.claimed_at.tzinfo else job.claimed_at.replace(tzinfo=utcnow().tzinfo)
    return claimed >= utcnow() - timedelta(seconds=lease_s)


def retry_later(job, *, error: str, max_attempts: int, retry_after_s: float) -> None:
    """An attempt that could not finish: the job waits `retry_after_s` and is claimable again, or after
    `max_attempts` ends "error" (for an admin)."""
    job.error = error[:2000]
    if job.attempts >= max_attempts:
        job.status, job.finished_at = "error", utcnow()
    else:
        job.claimed_by = job.claimed_at = None
        job.not_before = utcnow() + timedelta(seconds=retry_after_s)
